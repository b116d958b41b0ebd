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

/// Finding 5: de-duplication is per topic (semantics.md §3), so a token
/// that may only publish to `evil.x` cannot make the victim's publish to
/// `orders.created` a duplicate by choosing its `opts.id` first.
#[tokio::test]
async fn a_publisher_cannot_suppress_another_topics_event_by_choosing_its_id() {
    use common::jwt::{SECRET, claims_at, hs};
    use common::process::HubProcess;
    use jsonwebtoken::Algorithm;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |sub: &str, scope: &str| {
        hs(
            Algorithm::HS256,
            &claims_at(now, json!({"sub": sub, "scope": scope})),
        )
    };
    async fn client(hub: &HubProcess, token: &str) -> common::Client {
        let mut client = common::Client::connect(&hub.url).await;
        client
            .send_json(json!({"op": "AUTH", "token": token}))
            .await;
        let ok = client.recv_json().await;
        assert_eq!(ok["op"], "OK", "{ok}");
        client
    }

    let dir = common::data_dir();
    let hub = HubProcess::spawn(
        dir.path(),
        &[],
        &["--listen", "127.0.0.1:0", "--jwt-secret", SECRET],
    )
    .await;
    let mut subscriber = client(&hub, &token("audit", "subscribe:orders.*")).await;
    let suback = subscriber
        .subscribe("orders.created", None, json!(null))
        .await;
    assert_eq!(suback["op"], "SUBACK", "{suback}");

    let mut evil = client(&hub, &token("mallory", "publish:evil.x")).await;
    let refused = evil
        .publish("orders.created", json!({"x": 0}), json!({"id": "order-42"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let planted = evil
        .publish("evil.x", json!({"x": 1}), json!({"id": "order-42"}))
        .await;
    assert_eq!(planted["op"], "PUBACK", "{planted}");

    let mut victim = client(&hub, &token("shop", "publish:orders.created")).await;
    let ack = victim
        .publish(
            "orders.created",
            json!({"order": 42}),
            json!({"id": "order-42"}),
        )
        .await;
    assert_eq!(ack["op"], "PUBACK", "{ack}");
    assert!(ack.get("duplicate").is_none(), "suppressed: {ack}");
    assert_ne!(ack["seq"], planted["seq"]);

    let event = subscriber.recv_event().await;
    assert_eq!(event["event"]["id"], "order-42");
    assert_eq!(event["event"]["topic"], "orders.created");
    assert_eq!(event["event"]["payload"], json!({"order": 42}));
    assert_eq!(event["event"]["seq"], ack["seq"]);

    // A real duplicate, on the same topic, still is one.
    let again = victim
        .publish(
            "orders.created",
            json!({"order": 42, "again": true}),
            json!({"id": "order-42"}),
        )
        .await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["seq"], ack["seq"]);
    subscriber.assert_alive_and_quiet().await;
}
