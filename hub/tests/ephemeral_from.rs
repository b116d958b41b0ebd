//! Live subscriptions `from` a seq (semantics.md §4): the stored matching
//! events from that seq, then live ones, with no gap and no duplicate
//! between the two; `SUBACK.from_seq` tells where delivery is complete, so
//! a client resuming past retention learns that it missed events.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Client, TestHub};
use promhub_hub::retention::{RetentionConfig, TopicRetention};
use serde_json::{Value, json};

/// Publishes `n` events on `topic`; their seqs.
async fn publish_n(client: &mut Client, topic: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let ack = client.publish(topic, json!({ "n": i }), json!(null)).await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        seqs.push(ack["seq"].as_u64().expect("seq"));
    }
    seqs
}

/// Receives EVENTs until `want` distinct seqs arrived; every seq received,
/// in order (a duplicate would show up twice).
async fn receive(client: &mut Client, want: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.iter().collect::<BTreeSet<_>>().len() < want {
        let event = client.recv_event().await;
        assert!(event["ctx"].get("snapshot").is_none(), "{event}");
        got.push(event["event"]["seq"].as_u64().expect("seq"));
    }
    got
}

#[tokio::test]
async fn from_a_seq_delivers_the_stored_events_then_live_ones_with_no_gap_or_duplicate() {
    let mut hub = TestHub::start_with(|config| {
        // Small live bound: the catch-up is paged and flow-controlled.
        config.ephemeral_buffer_bytes = 64 * 1024;
    })
    .await;
    let mut publisher = hub.client().await;
    let mut a = Vec::new();
    for _ in 0..200 {
        a.extend(publish_n(&mut publisher, "a.x", 1).await);
        publish_n(&mut publisher, "b.y", 1).await;
    }
    let from = a[50];
    let mut reader = hub.client().await;
    let suback = reader.subscribe("a.*", None, json!({ "from": from })).await;
    assert_eq!(suback["op"], "SUBACK", "{suback}");
    assert_eq!(suback["from_seq"], from, "nothing was lost: {suback}");
    // Live events published while the reader catches up.
    let live = tokio::spawn(async move {
        let seqs = publish_n(&mut publisher, "a.y", 100).await;
        (publisher, seqs)
    });
    let (publisher, live_seqs) = live.await.unwrap();
    let expected: Vec<u64> = a[50..].iter().chain(&live_seqs).copied().collect();
    let got = receive(&mut reader, expected.len()).await;
    assert_eq!(
        got, expected,
        "the stored events, then the live ones, once each"
    );
    reader.assert_alive_and_quiet().await;
    drop(publisher);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn from_earliest_and_from_a_future_seq() {
    let mut hub = TestHub::start().await;
    let mut publisher = hub.client().await;
    let stored = publish_n(&mut publisher, "c.x", 5).await;
    let mut all = hub.client().await;
    let suback = all
        .subscribe("c.x", None, json!({ "from": "earliest" }))
        .await;
    assert_eq!(suback["from_seq"], 1, "{suback}");
    assert_eq!(receive(&mut all, 5).await, stored);

    // A seq the hub has not reached: nothing before it is delivered.
    let future = stored[4] + 3;
    let mut later = hub.client().await;
    let suback = later
        .subscribe("c.x", None, json!({ "from": future }))
        .await;
    assert_eq!(suback["from_seq"], future, "{suback}");
    let next = publish_n(&mut publisher, "c.x", 5).await;
    assert_eq!(receive(&mut later, 3).await, next[2..]);
    assert_eq!(receive(&mut all, 5).await, next);
    later.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn resuming_past_what_retention_removed_is_told_by_from_seq() {
    let mut hub = TestHub::start_with(|config| {
        config.retention = RetentionConfig {
            topics: vec![TopicRetention {
                pattern: "r.x".to_owned(),
                max_age_secs: None,
                max_events: Some(3),
            }],
            interval_ms: 50,
            ..RetentionConfig::default()
        };
    })
    .await;
    let mut publisher = hub.client().await;
    let kept_elsewhere = publish_n(&mut publisher, "r.other", 1).await;
    let seqs = publish_n(&mut publisher, "r.x", 10).await;
    // Wait for retention to keep only the newest 3 of r.x.
    let mut first = 0;
    for _ in 0..200 {
        let mut probe = hub.client().await;
        let suback = probe
            .subscribe("r.x", None, json!({ "from": seqs[0] }))
            .await;
        first = suback["from_seq"].as_u64().unwrap();
        if first == seqs[7] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        first, seqs[7],
        "delivery is complete from the first kept event"
    );

    let mut resumed = hub.client().await;
    let suback: Value = resumed
        .subscribe("r.*", None, json!({ "from": kept_elsewhere[0] }))
        .await;
    assert_eq!(suback["from_seq"], seqs[7], "{suback}");
    // What retention kept is delivered all the same, before the gap's end.
    let expected: Vec<u64> = kept_elsewhere.iter().chain(&seqs[7..]).copied().collect();
    assert_eq!(receive(&mut resumed, expected.len()).await, expected);
    resumed.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn snapshot_and_from_cannot_be_combined() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    let refused = client
        .subscribe("a.*", None, json!({ "snapshot": true, "from": 1 }))
        .await;
    assert_eq!(refused["op"], "ERR", "{refused}");
    assert_eq!(refused["code"], "bad_request", "{refused}");
    hub.stop().await.unwrap();
}
