//! A PUBLISH whose `opts.id` was stored before is stored once and answered
//! `duplicate: true` with the original seq (semantics.md §3).

mod common;

use common::TestHub;
use serde_json::json;

#[tokio::test]
async fn a_duplicate_opts_id_is_stored_once() {
    let mut hub = TestHub::start().await;
    let mut publisher = hub.client().await;
    let first = publisher
        .publish("outbox.order", json!({"n": 1}), json!({"id": "order-42"}))
        .await;
    assert_eq!(first["op"], "PUBACK");
    assert_eq!(first["id"], "order-42");
    assert!(first.get("duplicate").is_none());

    // Same id again, even with another payload, from another connection.
    let mut other = hub.client().await;
    let again = other
        .publish("outbox.order", json!({"n": 2}), json!({"id": "order-42"}))
        .await;
    assert_eq!(again["op"], "PUBACK");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], "order-42");
    assert_eq!(again["seq"], first["seq"]);

    // Both in one burst without waiting: still one copy.
    for n in 0..3 {
        publisher
            .send_json(
                json!({"op": "PUBLISH", "topic": "outbox.order", "payload": n,
                "opts": {"id": "burst-1"}, "rid": format!("b{n}")}),
            )
            .await;
    }
    let mut seqs = Vec::new();
    let mut duplicates = 0;
    for _ in 0..3 {
        let ack = publisher.recv_json().await;
        assert_eq!(ack["op"], "PUBACK");
        seqs.push(ack["seq"].as_u64().unwrap());
        duplicates += usize::from(ack["duplicate"] == true);
    }
    assert!(seqs.windows(2).all(|w| w[0] == w[1]), "{seqs:?}");
    assert_eq!(duplicates, 2);

    let last = publisher
        .publish("outbox.order", json!({"n": 3}), json!(null))
        .await;

    // A replay of the whole log sees each event once.
    let mut reader = hub.client().await;
    reader
        .subscribe("outbox.*", Some("audit"), json!({"from": "earliest"}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let event = reader.recv_event().await;
        reader.ack(&event).await;
        ids.push(event["event"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids, ["order-42", "burst-1", last["id"].as_str().unwrap()]);
    reader.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}
