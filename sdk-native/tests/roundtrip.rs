//! Publish and subscribe against a real hub: typed payloads, groups and
//! ephemeral subscriptions, acknowledgements, and every way a call fails.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use promhub::{
    Client, ClientConfig, ConnectionEvent, ConnectionState, Delivery, Error, PublishOptions,
    QueuePolicy, SubscribeOptions,
};
use serde::{Deserialize, Serialize};
use support::{TestHub, guard, next, wait_event};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    value: f64,
    tags: Vec<String>,
}

fn reading(i: u32) -> Reading {
    Reading {
        sensor: format!("s-{i}"),
        value: f64::from(i) / 4.0,
        tags: vec!["a".into(), i.to_string()],
    }
}

async fn connect(hub: &TestHub) -> Client {
    guard(
        "connect",
        Client::connect(hub.url.as_str(), ClientConfig::new()),
    )
    .await
    .expect("connect")
}

#[tokio::test]
async fn typed_round_trip_through_a_group() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let mut sub = guard(
        "subscribe",
        client.subscribe::<Reading>("sensors.**", Some("workers"), SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    assert_eq!(sub.group().map(|g| g.as_str()), Some("workers"));

    let opts = PublishOptions::new()
        .key("s-1")
        .header("origin", "test")
        .tags(["t1"]);
    let ack = guard(
        "publish",
        client.publish("sensors.room1.temp", &reading(1), opts),
    )
    .await
    .expect("publish");
    assert!(!ack.duplicate);
    assert!(ack.seq >= 1);

    let delivery = next("delivery", &mut sub).await;
    assert_eq!(delivery.payload().expect("a Reading"), &reading(1));
    assert_eq!(delivery.id(), ack.id);
    assert_eq!(delivery.seq(), ack.seq);
    assert_eq!(delivery.topic().as_str(), "sensors.room1.temp");
    assert_eq!(delivery.key(), Some("s-1"));
    assert_eq!(
        delivery
            .headers()
            .and_then(|h| h.get("origin"))
            .map(String::as_str),
        Some("test")
    );
    assert_eq!(delivery.attempt(), 1);
    assert!(!delivery.is_snapshot());
    assert!(delivery.ack_deadline().is_some());
    guard("ack", delivery.ack()).await.expect("ack");

    // A second publisher (another connection) reaches the same group.
    let other = connect(&hub).await;
    let ack2 = guard(
        "publish",
        other.publish("sensors.room2.temp", &reading(2), PublishOptions::new()),
    )
    .await
    .expect("publish");
    let delivery = next("second delivery", &mut sub).await;
    assert_eq!(delivery.seq(), ack2.seq);
    assert_eq!(delivery.payload().expect("a Reading"), &reading(2));
    guard("ack", delivery.ack()).await.expect("ack");
    other.close().await;
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_publish_with_an_id_is_stored_once() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let opts = PublishOptions::new().id("order-17");
    let first = guard("publish", client.publish("orders.new", &1, opts.clone()))
        .await
        .expect("publish");
    let again = guard("publish", client.publish("orders.new", &1, opts))
        .await
        .expect("publish");
    assert_eq!(first.id, "order-17");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn many_publishes_in_flight_are_all_acknowledged_in_order() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let acks: Vec<_> = guard(
        "256 publishes",
        futures_util::future::join_all((0..256u32).map(|i| {
            let client = &client;
            async move {
                client
                    .publish("load.test", &reading(i), PublishOptions::new())
                    .await
            }
        })),
    )
    .await
    .into_iter()
    .collect::<Result<_, _>>()
    .expect("every publish acknowledged");
    let seqs: Vec<u64> = acks.iter().map(|ack| ack.seq).collect();
    // Sent in call order on one connection, stored in that order.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn ephemeral_subscription_gets_live_events_and_snapshot_gets_latest_by_key() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    for (key, value) in [("a", 1), ("b", 2), ("a", 3)] {
        guard(
            "publish",
            client.publish("stock.level", &value, PublishOptions::new().key(key)),
        )
        .await
        .expect("publish");
    }

    // Snapshot: the latest event of every key first.
    let mut snapshot = guard(
        "subscribe",
        client.subscribe::<i32>("stock.*", None, SubscribeOptions::new().snapshot(true)),
    )
    .await
    .expect("subscribe");
    let mut latest = Vec::new();
    for _ in 0..2 {
        let delivery = next("snapshot delivery", &mut snapshot).await;
        assert!(delivery.is_snapshot());
        latest.push((
            delivery.key().unwrap().to_owned(),
            *delivery.payload().unwrap(),
        ));
    }
    latest.sort();
    assert_eq!(latest, vec![("a".to_owned(), 3), ("b".to_owned(), 2)]);

    // One subscription per pattern and group: the same pattern twice is
    // refused.
    let err = guard(
        "subscribe",
        client.subscribe::<i32>("stock.*", None, SubscribeOptions::new()),
    )
    .await
    .expect_err("stock.* twice");
    assert!(matches!(err, Error::AlreadySubscribed), "{err:?}");

    // Ephemeral without snapshot: only what is published from now on.
    let mut live = guard(
        "subscribe",
        client.subscribe::<i32>("stock.**", None, SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    assert!(live.group().is_none());
    let ack = guard(
        "publish",
        client.publish("stock.level", &4, PublishOptions::new().key("c")),
    )
    .await
    .expect("publish");
    for sub in [&mut live, &mut snapshot] {
        let delivery = next("live delivery", sub).await;
        assert_eq!(delivery.seq(), ack.seq);
        assert_eq!(delivery.payload().ok(), Some(&4));
        assert!(!delivery.is_snapshot());
        // Answers do nothing for ephemeral subscriptions, and do not fail.
        guard("ack", delivery.ack()).await.expect("ephemeral ack");
    }
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn forbidden_publish_and_subscribe_are_errors() {
    let hub = TestHub::start_with(|config| {
        config.dev_scopes = Some("publish:allowed.** subscribe:allowed.**".to_owned());
    })
    .await;
    let client = connect(&hub).await;
    let err = guard(
        "publish",
        client.publish("secret.plans", &reading(1), PublishOptions::new()),
    )
    .await
    .expect_err("publishing to secret.plans is forbidden");
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    assert_eq!(err.code(), Some(promhub::ErrorCode::Forbidden));

    let err = guard(
        "subscribe",
        client.subscribe::<Reading>("secret.**", Some("g"), SubscribeOptions::new()),
    )
    .await
    .expect_err("subscribing to secret.** is forbidden");
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");

    // The connection lives on and allowed topics work.
    guard(
        "publish",
        client.publish("allowed.x", &reading(1), PublishOptions::new()),
    )
    .await
    .expect("allowed publish");
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_sent() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    for topic in ["", "a..b", "a.*", "a.**"] {
        let err = client
            .publish(topic, &1, PublishOptions::new())
            .await
            .expect_err("invalid topic");
        assert!(matches!(err, Error::InvalidTopic(_)), "{topic:?}: {err:?}");
    }
    let err = client
        .subscribe::<i32>("a.b**", None, SubscribeOptions::new())
        .await
        .expect_err("invalid pattern");
    assert!(matches!(err, Error::InvalidTopic(_)), "{err:?}");
    let err = client
        .subscribe::<i32>("a.**", Some("has space"), SubscribeOptions::new())
        .await
        .expect_err("invalid group");
    assert!(matches!(err, Error::InvalidGroup(_)), "{err:?}");
    // A value serde_json cannot represent as JSON (a map with non-string keys).
    let bad_payload: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let err = client
        .publish("a.b", &bad_payload, PublishOptions::new())
        .await
        .expect_err("unserializable");
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");

    let err = Client::connect("http://127.0.0.1:1/ws", ClientConfig::new())
        .await
        .expect_err("not a ws URL");
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    // Nothing listens on the port of a dropped listener.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = guard(
        "connect to nothing",
        Client::connect(format!("ws://127.0.0.1:{port}/ws"), ClientConfig::new()),
    )
    .await
    .expect_err("nothing listens");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_payload_of_the_wrong_shape_is_reported_and_can_be_terminated() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let mut sub = guard(
        "subscribe",
        client.subscribe::<Reading>("mixed.**", Some("g"), SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    let bad = guard(
        "publish",
        client.publish(
            "mixed.x",
            &serde_json::json!({"sensor": 5}),
            PublishOptions::new(),
        ),
    )
    .await
    .expect("publish");
    let good = guard(
        "publish",
        client.publish("mixed.x", &reading(7), PublishOptions::new()),
    )
    .await
    .expect("publish");

    let delivery = next("bad delivery", &mut sub).await;
    assert_eq!(delivery.seq(), bad.seq);
    let err = delivery.payload().expect_err("not a Reading");
    assert_eq!(err.event_id, bad.id);
    assert_eq!(delivery.raw_payload().get(), r#"{"sensor":5}"#);
    let reason = err.to_string();
    guard("term", delivery.term(reason)).await.expect("term");

    let delivery = next("good delivery", &mut sub).await;
    assert_eq!(delivery.seq(), good.seq);
    guard("ack", delivery.ack()).await.expect("ack");
    // Terminated means dead-lettered: after a sync point and one more event,
    // the bad one has not come back.
    guard("ping", client.ping()).await.expect("ping");
    let last = guard(
        "publish",
        client.publish("mixed.x", &reading(8), PublishOptions::new()),
    )
    .await
    .expect("publish");
    let delivery = next("last delivery", &mut sub).await;
    assert_eq!(delivery.seq(), last.seq, "the terminated event came back");
    guard("ack", delivery.ack()).await.expect("ack");
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn dropped_and_nacked_deliveries_come_back() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let mut sub = guard(
        "subscribe",
        client.subscribe::<u32>("jobs.*", Some("w"), SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    let ack = guard(
        "publish",
        client.publish("jobs.a", &1u32, PublishOptions::new()),
    )
    .await
    .expect("publish");

    // Dropped without an answer: NACKed, delivered again at once.
    let first: Delivery<u32> = next("first delivery", &mut sub).await;
    assert_eq!((first.seq(), first.attempt()), (ack.seq, 1));
    drop(first);
    let second = next("redelivery after drop", &mut sub).await;
    assert_eq!((second.seq(), second.attempt()), (ack.seq, 2));

    // NACK with a delay: delivered again once it passed.
    guard(
        "nack",
        second.nack("not yet", Some(Duration::from_millis(50))),
    )
    .await
    .expect("nack");
    let third = next("redelivery after nack", &mut sub).await;
    assert_eq!((third.seq(), third.attempt()), (ack.seq, 3));
    guard("working", third.working()).await.expect("working");
    guard("ack", third.ack()).await.expect("ack");
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_slow_ephemeral_reader_is_told_and_memory_stays_bounded() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let mut events = client.events();
    let mut sub = guard(
        "subscribe",
        client.subscribe::<u32>("ticks.*", None, SubscribeOptions::new().buffer(2)),
    )
    .await
    .expect("subscribe");
    for i in 0..10u32 {
        guard(
            "publish",
            client.publish("ticks.a", &i, PublishOptions::new()),
        )
        .await
        .expect("publish");
    }
    // Nobody reads: two are buffered, eight are dropped and reported.
    let (dropped, _) = wait_event("slow consumer", &mut events, |event| match event {
        ConnectionEvent::SlowConsumer { dropped, topic, .. } if *dropped == 8 => {
            assert_eq!(topic, "ticks.*");
            Some(*dropped)
        }
        _ => None,
    })
    .await;
    assert_eq!(dropped, 8);
    let values: Vec<u32> = vec![
        *next("buffered", &mut sub).await.payload().unwrap(),
        *next("buffered", &mut sub).await.payload().unwrap(),
    ];
    assert_eq!(values, vec![0, 1]);
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn unsubscribe_and_resubscribe_the_same_pattern() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let sub = guard(
        "subscribe",
        client.subscribe::<u32>("u.*", Some("g"), SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    let err = guard(
        "subscribe twice",
        client.subscribe::<u32>("u.*", Some("g"), SubscribeOptions::new()),
    )
    .await
    .expect_err("same pattern and group twice");
    assert!(matches!(err, Error::AlreadySubscribed), "{err:?}");
    guard("unsubscribe", sub.unsubscribe())
        .await
        .expect("unsubscribe");
    // Dropping unsubscribes as well.
    let sub = guard(
        "subscribe again",
        client.subscribe::<u32>("u.*", Some("g"), SubscribeOptions::new()),
    )
    .await
    .expect("subscribe again after unsubscribe");
    drop(sub);
    let mut sub = guard(
        "subscribe after drop",
        client.subscribe::<u32>("u.*", Some("g"), SubscribeOptions::new()),
    )
    .await
    .expect("subscribe again after drop");
    let ack = guard(
        "publish",
        client.publish("u.x", &9u32, PublishOptions::new()),
    )
    .await
    .expect("publish");
    let delivery = next("delivery", &mut sub).await;
    assert_eq!(delivery.seq(), ack.seq);
    guard("ack", delivery.ack()).await.expect("ack");
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn closing_fails_what_follows_and_ends_streams() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let clone = client.clone();
    let mut events = client.events();
    let mut sub = guard(
        "subscribe",
        client.subscribe::<u32>("c.*", None, SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    client.close().await;
    assert_eq!(clone.state(), ConnectionState::Closed);
    let err = clone
        .publish("c.x", &1u32, PublishOptions::new())
        .await
        .expect_err("closed");
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert!(guard("stream end", sub.next()).await.is_none());
    let (_, _) = wait_event("closed event", &mut events, |event| {
        matches!(event, ConnectionEvent::Closed { .. }).then_some(())
    })
    .await;
    assert!(guard("events end", events.next()).await.is_none());
    hub.stop().await;
}

#[tokio::test]
async fn fail_fast_policy_refuses_publishes_while_disconnected() {
    // Nothing listens: the client stays disconnected.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = Client::connect_lazy(
        format!("ws://127.0.0.1:{port}/ws"),
        ClientConfig::new().outbound_queue(8, QueuePolicy::FailFast),
    )
    .expect("lazy client");
    let err = client
        .publish("a.b", &1, PublishOptions::new())
        .await
        .expect_err("not connected");
    assert!(matches!(err, Error::NotConnected), "{err:?}");
    client.close().await;
}

#[tokio::test]
async fn a_lazy_client_queues_publishes_until_the_hub_is_there() {
    let hub = TestHub::start().await;
    let client = Client::connect_lazy(hub.url.as_str(), ClientConfig::new()).expect("client");
    // Issued before the connection exists; sent right after OK.
    let acks = guard(
        "queued publishes",
        futures_util::future::join_all((0..5u32).map(|i| {
            let client = &client;
            async move { client.publish("q.x", &i, PublishOptions::new()).await }
        })),
    )
    .await;
    let seqs: BTreeSet<u64> = acks
        .into_iter()
        .map(|ack| ack.expect("acknowledged").seq)
        .collect();
    assert_eq!(seqs.len(), 5);
    assert_eq!(client.state(), ConnectionState::Connected);
    client.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_publish_over_the_frame_limit_is_too_large() {
    let hub = TestHub::start().await;
    let client = connect(&hub).await;
    let huge = "x".repeat(1024 * 1024 + 1);
    let err = guard(
        "publish",
        client.publish("big.payload", &huge, PublishOptions::new()),
    )
    .await
    .expect_err("a frame over 1 MiB is refused");
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    // The connection lives on.
    guard(
        "publish",
        client.publish("big.payload", &"small", PublishOptions::new()),
    )
    .await
    .expect("a small publish after the refusal");
    client.close().await;
    hub.stop().await;
}
