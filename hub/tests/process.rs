//! The real `promhub` binary as a subprocess: the `listening on` line, flags
//! from the environment, SIGKILL after PUBACKs (nothing acknowledged is
//! lost, groups resume after their last ACK) and SIGTERM (close 1001).

mod common;

use std::time::Duration;

use common::Client;
use common::process::{HubProcess, refused_start};
use serde_json::json;
use tokio::process::Command;

#[tokio::test]
async fn kill_9_after_pubacks_loses_nothing_and_groups_resume_after_their_last_ack() {
    let dir = common::data_dir();
    let args = ["--listen", "127.0.0.1:0"];
    let hub = HubProcess::spawn(dir.path(), &[], &args).await;
    assert!(hub.url.ends_with("/ws"), "default path: {}", hub.url);

    let mut worker = hub.client().await;
    let suback = worker
        .subscribe("orders.*", Some("fulfil"), json!({"from": "earliest"}))
        .await;
    assert_eq!(suback["op"], "SUBACK");

    // A burst of publishes in flight at once, then a few one by one.
    let mut publisher = hub.client().await;
    let burst = 300;
    let acked = publish_burst(
        &mut publisher,
        "orders.new",
        burst,
        |i| json!({"key": format!("o{i}")}),
    )
    .await;

    // The worker handles the first 10 events (ACKs), and holds 5 more.
    let mut handled = Vec::new();
    for _ in 0..15 {
        let event = worker.recv_event().await;
        handled.push(event);
    }
    for event in &handled[..10] {
        worker.ack(event).await;
    }
    // PONG once the ACKs are durable.
    worker.ping().await;
    let last_acked_seq = handled[9]["event"]["seq"].as_u64().unwrap();

    hub.kill9().await;

    let hub = HubProcess::spawn(dir.path(), &[], &args).await;
    let mut worker = hub.client().await;
    let suback = worker
        .subscribe("orders.*", Some("fulfil"), json!(null))
        .await;
    assert_eq!(suback["from_seq"], last_acked_seq + 1);
    let resumed = worker.recv_event().await;
    assert_eq!(resumed["event"]["id"], handled[10]["event"]["id"]);
    assert_eq!(resumed["event"]["seq"], last_acked_seq + 1);

    // Every acknowledged publish is in the store, in order.
    assert_eq!(stored_ids(&hub, "orders.*", burst).await, acked);
    hub.kill9().await;
}

/// `--sync normal` (no fsync per commit) still survives a crash of the hub
/// itself: every acknowledged publish is in the WAL, in the OS's page cache.
#[tokio::test]
async fn sync_normal_keeps_every_acknowledged_publish_across_a_kill_9() {
    let dir = common::data_dir();
    let envs = [("PROMHUB_SYNC", "normal"), ("PROMHUB_WORKER_THREADS", "1")];
    let args = ["--listen", "127.0.0.1:0"];
    let hub = HubProcess::spawn(dir.path(), &envs, &args).await;
    let mut publisher = hub.client().await;
    let burst = 500;
    let acked = publish_burst(&mut publisher, "metrics.cpu", burst, |_| json!(null)).await;
    hub.kill9().await;

    let hub = HubProcess::spawn(dir.path(), &envs, &args).await;
    assert_eq!(stored_ids(&hub, "metrics.*", burst).await, acked);
    hub.kill9().await;
}

#[tokio::test]
async fn sigterm_closes_connections_with_1001_and_exits_cleanly() {
    let dir = common::data_dir();
    // Flags from the environment: PROMHUB_LISTEN instead of --listen.
    let mut hub = HubProcess::spawn(dir.path(), &[("PROMHUB_LISTEN", "127.0.0.1:0")], &[]).await;
    let mut client = hub.client().await;
    let ack = client.publish("t", json!(1), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK");
    let status = Command::new("kill")
        .args(["-TERM", &hub.pid().to_string()])
        .status()
        .await
        .expect("kill -TERM");
    assert!(status.success());
    let closed = client.expect_close(0).await;
    assert_eq!(closed.code, 1001, "{closed:?}");
    drop(client);
    let exit = tokio::time::timeout(Duration::from_secs(30), hub.child.wait())
        .await
        .expect("hub did not exit")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn dev_scopes_flag_sets_the_development_policy() {
    let dir = common::data_dir();
    let hub = HubProcess::spawn(
        dir.path(),
        &[],
        &[
            "--listen",
            "127.0.0.1:0",
            "--dev-scopes",
            "publish:a.* subscribe:**",
        ],
    )
    .await;
    let mut client = hub.client().await;
    assert_eq!(
        client.publish("a.b", json!(1), json!(null)).await["op"],
        "PUBACK"
    );
    assert_eq!(
        client.publish("b.c", json!(1), json!(null)).await["code"],
        "forbidden"
    );
    hub.kill9().await;
}

#[tokio::test]
async fn invalid_configuration_exits_with_an_error() {
    let dir = common::data_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_promhub"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dev-scopes",
            "nonsense",
        ])
        .env("PROMHUB_DATA", dir.path())
        .output()
        .await
        .expect("run promhub");
    assert!(!output.status.success());
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout when not listening"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dev_scopes"), "{stderr}");

    let stderr = refused_start(dir.path(), &["--worker-threads", "0"]).await;
    assert!(stderr.contains("worker_threads"), "{stderr}");
}

#[tokio::test]
async fn a_toml_config_file_is_read_and_flags_win_over_it() {
    let dir = common::data_dir();
    let config = dir.path().join("promhub.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nws_path = \"/stream\"\nheartbeat_ms = 1234\n[groups]\nmax_deliver = 2\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let hub = HubProcess::spawn(dir.path(), &[], &["--config", config_arg]).await;
    assert!(hub.url.ends_with("/stream"), "{}", hub.url);
    let mut client = Client::connect(&hub.url).await;
    assert_eq!(client.auth().await["heartbeat_ms"], 1234);
    hub.kill9().await;

    let hub = HubProcess::spawn(
        dir.path(),
        &[("PROMHUB_HEARTBEAT_MS", "999")],
        &["--config", config_arg, "--ws-path", "/flag"],
    )
    .await;
    assert!(hub.url.ends_with("/flag"), "{}", hub.url);
    let mut client = Client::connect(&hub.url).await;
    assert_eq!(client.auth().await["heartbeat_ms"], 999);
    hub.kill9().await;
}

/// Sends `count` PUBLISHes on `topic` at once (rid `p<i>`, payload `{"i": i}`,
/// `extra_opts(i)` as `opts` when not null); returns the acknowledged ids in
/// publish order.
async fn publish_burst(
    publisher: &mut Client,
    topic: &str,
    count: usize,
    extra_opts: impl Fn(usize) -> serde_json::Value,
) -> Vec<String> {
    for i in 0..count {
        let mut frame =
            json!({"op": "PUBLISH", "topic": topic, "payload": {"i": i}, "rid": format!("p{i}")});
        let opts = extra_opts(i);
        if !opts.is_null() {
            frame["opts"] = opts;
        }
        publisher.send_json(frame).await;
    }
    let mut acked = vec![String::new(); count];
    for _ in 0..count {
        let ack = publisher.recv_json().await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        let index: usize = ack["rid"].as_str().unwrap()[1..].parse().unwrap();
        acked[index] = ack["id"].as_str().unwrap().to_owned();
    }
    acked
}

/// The ids of the first `count` stored events matching `pattern`, in log
/// order, read by a fresh group from the earliest.
async fn stored_ids(hub: &HubProcess, pattern: &str, count: usize) -> Vec<String> {
    let mut auditor = hub.client().await;
    auditor
        .subscribe(
            pattern,
            Some("audit"),
            json!({"from": "earliest", "max_inflight": 1000}),
        )
        .await;
    let mut stored = Vec::new();
    for _ in 0..count {
        let event = auditor.recv_event().await;
        stored.push(event["event"]["id"].as_str().unwrap().to_owned());
    }
    stored
}
