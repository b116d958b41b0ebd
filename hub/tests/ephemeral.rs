//! Ephemeral (group-less) subscriptions: live delivery, snapshot, and the
//! bounded buffer that closes a slow consumer with 4009.

mod common;

use common::TestHub;
use serde_json::json;

#[tokio::test]
async fn live_subscribers_get_events_published_after_suback() {
    let mut hub = TestHub::start().await;
    let mut publisher = hub.client().await;
    let before = publisher
        .publish("news.sport", json!("old"), json!(null))
        .await;
    let mut reader = hub.client().await;
    let suback = reader.subscribe("news.*", None, json!(null)).await;
    assert_eq!(suback["op"], "SUBACK");
    assert!(suback.get("group").is_none());
    assert_eq!(suback["from_seq"], before["seq"].as_u64().unwrap() + 1);
    let mut exact = hub.client().await;
    exact.subscribe("news.sport", None, json!(null)).await;

    let ack = publisher
        .publish("news.sport", json!("new"), json!(null))
        .await;
    publisher
        .publish("weather.today", json!("rain"), json!(null))
        .await;
    for client in [&mut reader, &mut exact] {
        let event = client.recv_event().await;
        assert_eq!(event["event"]["id"], ack["id"]);
        assert_eq!(event["event"]["payload"], "new");
        assert_eq!(event["ctx"]["attempt"], 1);
        assert!(event.get("group").is_none());
        // ACKs on ephemeral subscriptions are optional and ignored; and
        // weather.today (committed before the PING barrier) matches neither.
        client.ack(&event).await;
        client.assert_alive_and_quiet().await;
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn unsubscribe_stops_live_delivery() {
    let mut hub = TestHub::start().await;
    let mut reader = hub.client().await;
    reader.subscribe("a.b", None, json!(null)).await;
    reader
        .send_json(json!({"op": "UNSUBSCRIBE", "topic": "a.b", "rid": "u"}))
        .await;
    let unsuback = reader.recv_json().await;
    assert_eq!(unsuback["op"], "UNSUBACK");
    assert_eq!(unsuback["rid"], "u");
    let mut publisher = hub.client().await;
    publisher.publish("a.b", json!(1), json!(null)).await;
    reader.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn snapshot_sends_the_latest_event_of_every_key_first() {
    let mut hub = TestHub::start().await;
    let mut publisher = hub.client().await;
    publisher
        .publish("proc.state", json!({"v": 1}), json!({"key": "p1"}))
        .await;
    let p1_latest = publisher
        .publish("proc.state", json!({"v": 2}), json!({"key": "p1"}))
        .await;
    let p2_latest = publisher
        .publish("proc.state", json!({"v": 1}), json!({"key": "p2"}))
        .await;
    publisher
        .publish("other.state", json!({"v": 9}), json!({"key": "p3"}))
        .await;
    publisher
        .publish("proc.state", json!("no key"), json!(null))
        .await;

    let mut reader = hub.client().await;
    let suback = reader
        .subscribe("proc.*", None, json!({"snapshot": true}))
        .await;
    assert_eq!(suback["op"], "SUBACK");
    let mut snapshot = Vec::new();
    for _ in 0..2 {
        let event = reader.recv_event().await;
        assert_eq!(event["ctx"]["snapshot"], true);
        snapshot.push(event["event"]["id"].clone());
    }
    assert_eq!(
        snapshot,
        vec![p1_latest["id"].clone(), p2_latest["id"].clone()]
    );
    // Then live, without the snapshot mark.
    let live = publisher
        .publish("proc.state", json!({"v": 3}), json!({"key": "p1"}))
        .await;
    let event = reader.recv_event().await;
    assert_eq!(event["event"]["id"], live["id"]);
    assert!(event["ctx"].get("snapshot").is_none());
    reader.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_closed_with_4009() {
    let mut hub = TestHub::start_with(|c| {
        c.ephemeral_buffer_frames = 16;
        c.ephemeral_buffer_bytes = 256 * 1024;
    })
    .await;
    let mut slow = hub.client().await;
    slow.subscribe("flood", None, json!(null)).await;
    let mut fast = hub.client().await;
    fast.subscribe("flood", None, json!(null)).await;

    // 40 MB: far more than the socket buffers plus the 256 KiB allowance.
    let mut publisher = hub.client().await;
    let payload = "x".repeat(200 * 1024);
    let total = 200;
    for _ in 0..total {
        let ack = publisher
            .publish("flood", json!(payload), json!(null))
            .await;
        assert_eq!(ack["op"], "PUBACK");
        // The fast subscriber keeps up.
        let event = fast.recv_event().await;
        assert_eq!(event["event"]["topic"], "flood");
    }
    // The slow one gets what fitted in the buffers, then the close.
    let closed = slow.expect_close(total).await;
    assert_eq!(closed.code, 4009, "{closed:?}");
    assert!(
        promhub_hub::limits::COUNTERS
            .snapshot()
            .slow_consumer_closes
            > 0
    );
    fast.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}
