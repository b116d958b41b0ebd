//! The hub dies (SIGKILL, no close frames, no final flush) and comes back on
//! the same port with the same data: clients reconnect by themselves with
//! jittered, capped backoff, resubscribe, and a consumer group loses nothing
//! and repeats nothing it acknowledged.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use promhub::{
    Client, ClientConfig, ConnectionEvent, Delivery, Error, PublishOptions, SubscribeOptions,
};
use support::{HubProcess, guard, next, wait_event};

#[test]
#[ignore = "the hub child process of the tests in this file; they start it"]
fn hub_process_entry() {
    support::hub_process_main();
}

const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(400);

fn config() -> ClientConfig {
    ClientConfig::new()
        .seed(7)
        .reconnect_delay(MIN_DELAY, MAX_DELAY)
        // Publishes made while the hub is down wait for it.
        .request_timeout(Duration::from_secs(120))
}

async fn publish(client: &Client, n: u32) {
    guard(
        "publish",
        client.publish(
            "orders.new",
            &n,
            PublishOptions::new().id(format!("order-{n}")),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("publish {n}: {e}"));
}

fn value(delivery: &Delivery<u32>) -> u32 {
    *delivery.payload().expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_comes_back_and_the_group_resumes_exactly_after_its_acks() {
    let data = tempfile::tempdir().expect("tempdir");
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let hub = HubProcess::start(any_port, data.path());
    let addr = hub.addr;
    let url = hub.url.clone();

    let worker = guard("connect", Client::connect(url.as_str(), config()))
        .await
        .expect("worker connects");
    let publisher = guard("connect", Client::connect(url.as_str(), config()))
        .await
        .expect("publisher connects");
    let mut events = worker.events();
    let mut sub = guard(
        "subscribe",
        worker.subscribe::<u32>(
            "orders.*",
            Some("billing"),
            SubscribeOptions::new().from_earliest(),
        ),
    )
    .await
    .expect("subscribe");
    // An ephemeral subscription on the same connection: restored as well.
    let mut live = guard(
        "subscribe",
        worker.subscribe::<u32>("orders.*", None, SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");

    // 1. Thirty events; the worker acknowledges 1..=20 and holds 21..=30.
    for n in 1..=30 {
        publish(&publisher, n).await;
    }
    let mut held = Vec::new();
    for n in 1..=30 {
        let delivery = next("first delivery", &mut sub).await;
        assert_eq!((value(&delivery), delivery.attempt()), (n, 1));
        if n <= 20 {
            guard("ack", delivery.ack()).await.expect("ack");
        } else {
            held.push(delivery);
        }
    }
    // The hub answers a PING once the earlier ACKs are durable.
    guard("ping", worker.ping()).await.expect("ping");

    // 2. Kill the hub. Publishes made now wait in the outbound queue.
    hub.kill();
    let (code, _) = wait_event("disconnect", &mut events, |event| match event {
        ConnectionEvent::Disconnected { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_ne!(code, Some(1000), "a killed hub sends no close frame");
    let queued = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for n in 31..=40 {
                publish(&publisher, n).await;
            }
        })
    };
    // Let the worker fail a few attempts against the closed port.
    let mut delays = Vec::new();
    while delays.len() < 5 {
        let ((attempt, delay), _) = wait_event("reconnecting", &mut events, |event| match event {
            ConnectionEvent::Reconnecting { attempt, delay } => Some((*attempt, *delay)),
            _ => None,
        })
        .await;
        delays.push((attempt, delay));
    }

    // 3. The hub comes back on the same port with the same data.
    let hub = HubProcess::start(addr, data.path());
    assert_eq!(hub.addr, addr);
    wait_event("reconnect", &mut events, |event| {
        matches!(event, ConnectionEvent::Connected { .. }).then_some(())
    })
    .await;
    guard("queued publishes", queued)
        .await
        .expect("queued publishes were acknowledged after the restart");

    // 4. From the group's cursor: 21..=40, each once, in order; nothing
    //    that was acknowledged before the kill.
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let delivery = next("delivery after the restart", &mut sub).await;
        let n = value(&delivery);
        assert!(n > 20, "event {n} was acknowledged before the kill");
        if n == 21 {
            // The delivery held from before the kill belongs to a dead
            // connection: answering it now must not touch the new delivery.
            let stale = held.remove(0);
            assert_eq!(value(&stale), 21);
            let err = guard("stale nack", stale.nack("too late", None))
                .await
                .expect_err("a stale delivery cannot be NACKed");
            assert!(matches!(err, Error::Disconnected), "{err:?}");
        }
        seen.push(n);
        guard("ack", delivery.ack()).await.expect("ack");
    }
    assert_eq!(seen, (21..=40).collect::<Vec<_>>());
    // Dropping the other stale deliveries sends nothing either: the next
    // delivery is a new event, not one of them again.
    drop(held);
    guard("ping", worker.ping()).await.expect("ping");
    publish(&publisher, 41).await;
    let delivery = next("delivery of 41", &mut sub).await;
    assert_eq!((value(&delivery), delivery.attempt()), (41, 1));
    guard("ack", delivery.ack()).await.expect("ack");
    // The ephemeral subscription was restored too: 41 reaches it (after
    // whatever it buffered before the kill and since the restart).
    loop {
        if value(&next("live 41", &mut live).await) == 41 {
            break;
        }
    }

    // Backoff: attempts count up from 1, every delay lies in the jittered
    // range of its attempt and under the cap, and they are not all the same.
    let attempts: Vec<u32> = delays.iter().map(|(attempt, _)| *attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4, 5]);
    let min = MIN_DELAY.as_millis() as u64;
    let max = MAX_DELAY.as_millis() as u64;
    for &(attempt, delay) in &delays {
        let cap = (min << (attempt - 1)).min(max);
        let delay = delay.as_millis() as u64;
        assert!(
            (min / 2..=cap).contains(&delay),
            "attempt {attempt}: {delay} ms outside [{}, {cap}]",
            min / 2
        );
    }
    let distinct: HashSet<Duration> = delays.iter().map(|(_, delay)| *delay).collect();
    assert!(distinct.len() > 1, "no jitter: {delays:?}");

    worker.close().await;
    publisher.close().await;
    drop(hub);
}
