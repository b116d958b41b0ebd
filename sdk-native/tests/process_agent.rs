//! The process-agent example against a real hub and real processes: a
//! process it sees is published as `alive` under `host:name:pid`; once it
//! is gone, exactly one `exited` event follows.

mod support;

#[allow(dead_code)]
#[path = "../examples/process-agent.rs"]
mod agent;

use std::process::{Command, Stdio};

use promhub::{Client, ClientConfig, SubscribeOptions};
use serde_json::Value;
use support::{TestHub, guard, next};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_process_is_published_alive_then_exactly_once_exited() {
    let hub = TestHub::start().await;
    let watcher = guard(
        "connect",
        Client::connect(hub.url.as_str(), ClientConfig::new()),
    )
    .await
    .expect("connect");
    let mut states = guard(
        "subscribe",
        watcher.subscribe::<Value>(
            "process.state",
            None,
            SubscribeOptions::new().buffer(100_000),
        ),
    )
    .await
    .expect("subscribe");

    let mut child = Command::new("sleep")
        .arg("300")
        .stdin(Stdio::null())
        .spawn()
        .expect("start `sleep`");
    let pid = u64::from(child.id());
    let agent = tokio::spawn(agent::run(agent::Args {
        url: hub.url.clone(),
        token: None,
        topic: "process.state".to_owned(),
        interval_ms: 300,
        ticks: None,
    }));

    // Alive, with the documented fields.
    let alive = loop {
        let delivery = next("alive event of the child", &mut states).await;
        let state = delivery.payload().expect("JSON").clone();
        if state["pid"] == pid {
            break (state, delivery.key().map(str::to_owned));
        }
    };
    let (state, key) = alive;
    assert_eq!(state["status"], "alive");
    assert_eq!(state["name"], "sleep");
    let host = state["host"].as_str().expect("host").to_owned();
    assert_eq!(key, Some(format!("{host}:sleep:{pid}")));
    assert!(state["memory_bytes"].as_u64().is_some_and(|m| m > 0));
    assert!(state["cpu_percent"].as_f64().is_some_and(|c| c >= 0.0));
    assert!(
        state["started_at"]
            .as_u64()
            .is_some_and(|t| t > 1_500_000_000_000)
    );
    assert!(state["last_seen"].as_u64() >= state["started_at"].as_u64());

    child.kill().expect("kill the child");
    child.wait().expect("reap the child");

    // One `exited`, and none after it: readings are published one after
    // the other, so once events of two readings later than the one that
    // reported the exit arrive, every event of the reading in between has
    // arrived too.
    let mut exited = 0;
    let mut exited_seen_at = None;
    let mut later_readings = std::collections::BTreeSet::new();
    while later_readings.len() < 3 {
        let delivery = next("events after the exit", &mut states).await;
        let state = delivery.payload().expect("JSON");
        if state["pid"] == pid {
            assert_eq!(state["status"], "exited", "{state}");
            exited += 1;
            exited_seen_at = state["last_seen"].as_u64();
        } else if let (Some(after), Some(at)) = (exited_seen_at, state["last_seen"].as_u64()) {
            // Readings newer than the last one that saw the child: the one
            // that reported the exit, then the ones after it.
            if state["status"] == "alive" && at > after {
                later_readings.insert(at);
            }
        }
    }
    assert_eq!(exited, 1);
    agent.abort();
    watcher.close().await;
    hub.stop().await;
}
