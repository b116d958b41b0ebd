//! Several hub URLs: the client tries them in its own random order, moves to
//! another hub when its hub goes away, and resumes its subscriptions there.
//! Real hubs on 127.0.0.1 (each with its own store here: the point is the
//! client's failover, not the cluster).

mod support;

use std::time::Duration;

use promhub::{Client, ClientConfig, ConnectionEvent, Error, PublishOptions, SubscribeOptions};
use support::{TestHub, guard, next, wait_event};

fn config(seed: u64) -> ClientConfig {
    ClientConfig::new()
        .seed(seed)
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
}

/// A 127.0.0.1 URL nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("ws://{addr}/ws")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fails_over_to_the_other_hub_and_its_subscription_follows() {
    let a = TestHub::start().await;
    let b = TestHub::start().await;
    let urls = [a.url.clone(), b.url.clone()];

    let subscriber = Client::connect_lazy(urls.clone(), config(3)).unwrap();
    let mut events = subscriber.events();
    let (first, _) = wait_event("first connection", &mut events, |event| match event {
        ConnectionEvent::Connected { url, .. } => Some(url.clone()),
        _ => None,
    })
    .await;
    assert!(urls.contains(&first), "{first}");
    let mut orders = guard(
        "subscribe",
        subscriber.subscribe::<u32>("orders.*", None, SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");

    // Its hub goes away; the other one is still there.
    let (gone, stays) = if first == a.url { (a, b) } else { (b, a) };
    gone.stop().await;
    let (second, _) = wait_event("failover", &mut events, |event| match event {
        ConnectionEvent::Connected { url, .. } => Some(url.clone()),
        _ => None,
    })
    .await;
    assert_eq!(second, stays.url);

    // The subscription was resumed on the hub it failed over to: a publish
    // there reaches it.
    let publisher = guard("publisher", Client::connect(stays.url.as_str(), config(4)))
        .await
        .expect("publisher");
    guard(
        "publish",
        publisher.publish("orders.created", &7u32, PublishOptions::new()),
    )
    .await
    .expect("publish");
    let delivery = next("delivery after failover", &mut orders).await;
    assert_eq!(*delivery.payload().expect("payload"), 7);
    subscriber.close().await;
    publisher.close().await;
    stays.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tries_every_hub_before_it_fails() {
    let hub = TestHub::start().await;
    // The live hub is reached whichever order the client draws.
    for seed in 0..4 {
        let client = guard(
            "connect past a dead hub",
            Client::connect([dead_url().await, hub.url.clone()], config(seed)),
        )
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        client.close().await;
    }
    let all_dead = [dead_url().await, dead_url().await];
    match guard("connect to dead hubs", Client::connect(all_dead, config(1))).await {
        Err(Error::Connect(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected Error::Connect, got {other:?}"),
    }
    match Client::connect(Vec::<String>::new(), config(1)).await {
        Err(Error::InvalidUrl { reason, .. }) => assert_eq!(reason, "no hub URL given"),
        other => panic!("expected Error::InvalidUrl, got {other:?}"),
    }
    hub.stop().await;
}
