//! The hub drains a MongoDB outbox collection that another application
//! (any language) fills with plain documents in its own transactions.
//! Runs on FerretDB (`PROMHUB_SKIP_MONGO=1` skips it visibly).

mod common;

use std::time::Duration;

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document, doc};
use promhub_hub::OutboxDrainConfig;
use promhub_hub::store::mongo::test_server::FerretDb;
use serde_json::{Value, json};

use common::TestHub;

/// An outbox document as an application in any language writes it.
const ADMIN_TOKEN: &str = "outbox-drain-test-admin-token";

fn outbox_document(id: impl Into<mongodb::bson::Bson>, topic: &str, key: &str, n: i32) -> Document {
    let now = DateTime::now();
    doc! {
        "_id": id.into(),
        "topic": topic,
        "payload": { "order": key, "n": n },
        "key": key,
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
    }
}

/// A record's `attempts`, whichever integer type the server stored.
fn attempts(record: &Document) -> i64 {
    record
        .get_i64("attempts")
        .or_else(|_| record.get_i32("attempts").map(i64::from))
        .expect("attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_drains_a_mongodb_outbox_into_its_log() {
    let Some(server) = FerretDb::shared_or_skip("the_hub_drains_a_mongodb_outbox_into_its_log")
    else {
        return;
    };
    let collection_name = format!("outbox_{}", std::process::id());
    let mongo = mongodb::Client::with_uri_str(server.uri("shop"))
        .await
        .expect("connect");
    let outbox = mongo
        .database("shop")
        .collection::<Document>(&collection_name);
    let mut hub = TestHub::start_with(|config| {
        let mut drain = OutboxDrainConfig::new(format!("{}/{collection_name}", server.uri("shop")));
        // This application may only publish orders.
        drain.publish_scopes = Some("publish:orders.**".to_owned());
        config.outbox = vec![drain];
        config.admin_token = Some(promhub_hub::auth::Secret::new(ADMIN_TOKEN));
    })
    .await;
    let mut subscriber = hub.client().await;
    let suback = subscriber.subscribe("**", None, Value::Null).await;
    assert_eq!(suback["op"], "SUBACK", "{suback}");
    // An event the hub already has: the outbox record with its id is a
    // duplicate, absorbed by the hub's de-duplication.
    let mut publisher = hub.client().await;
    let puback = publisher
        .publish(
            "orders.created",
            json!({"order": "o-0"}),
            json!({"id": "already-published"}),
        )
        .await;
    assert_eq!(puback["op"], "PUBACK", "{puback}");
    assert_eq!(
        subscriber.recv_event().await["event"]["id"],
        "already-published"
    );

    let oid = ObjectId::new();
    outbox
        .insert_many([
            outbox_document("order-1", "orders.created", "o-1", 1),
            outbox_document(oid, "orders.created", "o-2", 2),
            outbox_document("already-published", "orders.created", "o-0", 0),
            outbox_document("bad-topic", "orders..created", "o-3", 3),
            outbox_document("not-allowed", "billing.charged", "o-4", 4),
        ])
        .await
        .expect("the application inserts outbox documents");

    // Different keys: published concurrently, in either order.
    let mut events = [
        subscriber.recv_event().await["event"].clone(),
        subscriber.recv_event().await["event"].clone(),
    ];
    events.sort_by_key(|e| e["id"] != "order-1");
    let (first, second) = (&events[0], &events[1]);
    assert_eq!(first["id"], "order-1");
    assert_eq!(first["key"], "o-1");
    assert_eq!(first["payload"], json!({"order": "o-1", "n": 1}));
    assert_eq!(
        second["id"],
        oid.to_hex().as_str(),
        "an ObjectId is published as its hex"
    );

    // Everything settles: three sent; the bad topic and the topic outside
    // publish_scopes dead with the reason at their first attempt (a
    // permanent refusal is not retried).
    let mut settled = false;
    for _ in 0..600 {
        let sent = outbox
            .count_documents(doc! { "status": "sent" })
            .await
            .unwrap();
        let dead = outbox
            .count_documents(doc! { "status": "dead" })
            .await
            .unwrap();
        if sent == 3 && dead == 2 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled, "the outbox did not settle");
    let dead = outbox
        .find_one(doc! { "_id": "bad-topic" })
        .await
        .unwrap()
        .expect("dead record is kept");
    assert!(
        dead.get_str("last_err")
            .unwrap_or_default()
            .contains("bad topic"),
        "{dead}"
    );
    assert_eq!(attempts(&dead), 1, "{dead}");
    let refused = outbox
        .find_one(doc! { "_id": "not-allowed" })
        .await
        .unwrap()
        .expect("dead record is kept");
    assert!(
        refused
            .get_str("last_err")
            .unwrap_or_default()
            .contains("not allowed by this outbox's publish_scopes"),
        "{refused}"
    );
    assert_eq!(attempts(&refused), 1, "{refused}");

    // /metrics shows the drained outbox: nothing waiting, two dead (the
    // gauges are refreshed every second).
    let source = format!("shop.{collection_name}");
    let mut exported = None;
    for _ in 0..100 {
        let response = common::http::get(
            &common::http::authority(&hub.url),
            "/metrics",
            Some(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
        let dead_line = format!("promhub_outbox_dead{{source=\"{source}\"}} 2");
        let backlog_line = format!("promhub_outbox_backlog{{source=\"{source}\"}} 0");
        if response.body.contains(&dead_line) && response.body.contains(&backlog_line) {
            exported = Some(response.body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exported.is_some(),
        "the outbox's gauges never reached /metrics"
    );

    // Nothing else reached the subscriber: not the duplicate, not the
    // refused ones.
    let sentinel = publisher
        .publish("orders.sentinel", json!(1), Value::Null)
        .await;
    assert_eq!(subscriber.recv_event().await["event"]["id"], sentinel["id"]);
    hub.stop().await.expect("hub stops cleanly");
}

/// Two hubs configured with the same collection: one drains it (the
/// holder of its drain lease), the other takes over when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hub_at_a_time_drains_a_collection_and_another_takes_over() {
    const TEST: &str = "one_hub_at_a_time_drains_a_collection_and_another_takes_over";
    let Some(server) = FerretDb::shared_or_skip(TEST) else {
        return;
    };
    let collection_name = format!("outbox_leased_{}", std::process::id());
    let mongo = mongodb::Client::with_uri_str(server.uri("shop"))
        .await
        .expect("connect");
    let outbox = mongo
        .database("shop")
        .collection::<Document>(&collection_name);
    let drain = {
        let mut drain = OutboxDrainConfig::new(format!("{}/{collection_name}", server.uri("shop")));
        // A waiting hub retries every second.
        drain.lease_secs = 3;
        drain
    };
    // Each hub with its own log: where an event lands tells which drained it.
    let mut first = TestHub::start_with(|config| config.outbox = vec![drain.clone()]).await;
    let mut on_first = first.client().await;
    assert_eq!(
        on_first.subscribe("**", None, Value::Null).await["op"],
        "SUBACK"
    );
    // The first hub drains: its record reaches its log.
    outbox
        .insert_one(outbox_document("r-0", "orders.created", "o-0", 0))
        .await
        .unwrap();
    assert_eq!(on_first.recv_event().await["event"]["id"], "r-0");
    let second = TestHub::start_with(|config| config.outbox = vec![drain.clone()]).await;
    let mut on_second = second.client().await;
    assert_eq!(
        on_second.subscribe("**", None, Value::Null).await["op"],
        "SUBACK"
    );

    let ids: Vec<String> = (1..=10).map(|n| format!("r-{n}")).collect();
    for (n, id) in (1..).zip(&ids) {
        outbox
            .insert_one(outbox_document(
                id.as_str(),
                "orders.created",
                &format!("o-{n}"),
                n,
            ))
            .await
            .unwrap();
    }
    let mut drained = Vec::new();
    for _ in &ids {
        drained.push(
            on_first.recv_event().await["event"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    drained.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(drained, expected, "the lease holder drains everything");
    // The second hub drained none of them: the next event its subscriber
    // sees is its own sentinel.
    let mut publisher = second.client().await;
    let sentinel = publisher
        .publish("orders.sentinel", json!(1), Value::Null)
        .await;
    assert_eq!(on_second.recv_event().await["event"]["id"], sentinel["id"]);

    // The first hub stops and releases the lease: the second takes over.
    first.stop().await.expect("hub stops cleanly");
    outbox
        .insert_one(outbox_document("r-after", "orders.created", "o-after", 11))
        .await
        .unwrap();
    assert_eq!(on_second.recv_event().await["event"]["id"], "r-after");
    // Marked sent once committed (just after the event went out).
    let mut sent = 0;
    for _ in 0..200 {
        sent = outbox
            .count_documents(doc! { "status": "sent" })
            .await
            .unwrap();
        if sent == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sent, 12, "every record sent once");
}

#[tokio::test]
async fn an_unreachable_outbox_fails_the_start_with_its_uri() {
    let config = promhub_hub::HubConfig {
        outbox: vec![OutboxDrainConfig::new("mongodb://db/shop")],
        ..promhub_hub::HubConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = promhub_hub::run(listener, config, std::future::ready(()))
        .await
        .expect_err("no collection named");
    assert!(err.to_string().contains("DB/COLLECTION"), "{err}");
}
