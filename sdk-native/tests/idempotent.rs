//! The idempotent consumer helper against a real hub: a consumer process
//! commits its handling of an event and dies (abort, no ACK) before it can
//! acknowledge it. The hub delivers the event again to the next consumer,
//! whose handler does not run a second time: every event's effect is in
//! the application's database exactly once.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use futures_util::StreamExt;
use promhub::idempotent::{DedupeOptions, Handled, SqliteDedupe};
use promhub::{Client, ClientConfig, PublishOptions, SubscribeOptions};
use rusqlite::Connection;
use support::{TestHub, guard, next};

const HUB_URL_ENV: &str = "PROMHUB_TEST_CONSUMER_HUB";
const DB_ENV: &str = "PROMHUB_TEST_CONSUMER_DB";
const CRASH_AFTER_ENV: &str = "PROMHUB_TEST_CONSUMER_CRASH_AFTER";
const EVENTS: u32 = 20;
const CRASH_AFTER: u32 = 7;

fn options() -> DedupeOptions {
    DedupeOptions::new("billing")
}

fn create_invoices(db: &Path) {
    let connection = Connection::open(db).expect("open the app db");
    connection
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS invoices (order_no INTEGER NOT NULL, event_id TEXT NOT NULL)",
        )
        .expect("create invoices");
}

fn invoices(db: &Path) -> BTreeMap<u32, u32> {
    let connection = Connection::open(db).expect("open the app db");
    let mut statement = connection
        .prepare("SELECT order_no, COUNT(*) FROM invoices GROUP BY order_no")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The consumer process: handles events through the dedupe store and
/// aborts right after the commit for order `CRASH_AFTER`, before its ACK.
#[test]
#[ignore = "the crashing consumer process of the test below; it starts it"]
fn crashing_consumer_entry() {
    let (Ok(url), Ok(db), Ok(crash_after)) = (
        std::env::var(HUB_URL_ENV),
        std::env::var(DB_ENV),
        std::env::var(CRASH_AFTER_ENV),
    ) else {
        return;
    };
    let crash_after: u32 = crash_after.parse().expect("crash order");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let client = Client::connect(url.as_str(), ClientConfig::new())
            .await
            .expect("connect");
        let dedupe = SqliteDedupe::open(&db, options()).expect("dedupe");
        let mut orders = client
            .subscribe::<u32>(
                "orders.created",
                Some("billing"),
                SubscribeOptions::new().from_earliest(),
            )
            .await
            .expect("subscribe");
        while let Some(delivery) = orders.next().await {
            let (payload, event, acker) = delivery.into_parts();
            let order = payload.expect("a number");
            dedupe
                .process((&event).into(), |tx| {
                    tx.execute(
                        "INSERT INTO invoices (order_no, event_id) VALUES (?1, ?2)",
                        (order, &event.id),
                    )
                })
                .expect("process");
            if order == crash_after {
                println!("crashing after the commit of order {order}");
                // The handler's writes and the id are committed; the ACK
                // is never sent.
                std::process::abort();
            }
            acker.ack().await.expect("ack");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_processed_once_across_a_crash_between_commit_and_ack() {
    let hub = TestHub::start().await;
    let app = tempfile::tempdir().expect("tempdir");
    let db = app.path().join("shop.db");
    create_invoices(&db);

    let publisher = guard(
        "connect",
        Client::connect(hub.url.as_str(), ClientConfig::new()),
    )
    .await
    .expect("connect");
    for order in 1..=EVENTS {
        guard(
            "publish",
            publisher.publish("orders.created", &order, PublishOptions::new()),
        )
        .await
        .expect("publish");
    }

    // The first consumer, in its own process, dies after committing order 7.
    let exe = std::env::current_exe().expect("test binary");
    let crashed = tokio::task::spawn_blocking({
        let url = hub.url.clone();
        let db = db.clone();
        move || {
            Command::new(exe)
                .args([
                    "crashing_consumer_entry",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(HUB_URL_ENV, url)
                .env(DB_ENV, db)
                .env(CRASH_AFTER_ENV, CRASH_AFTER.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .expect("run the consumer process")
        }
    });
    let status = guard("the consumer process", crashed).await.expect("join");
    assert!(
        !status.success(),
        "the consumer should have aborted: {status}"
    );
    let after_crash = invoices(&db);
    assert_eq!(
        after_crash.get(&CRASH_AFTER),
        Some(&1),
        "order {CRASH_AFTER} was committed before the crash: {after_crash:?}"
    );

    // The next consumer gets the unacknowledged event(s) again and the rest.
    let consumer = guard(
        "connect",
        Client::connect(hub.url.as_str(), ClientConfig::new()),
    )
    .await
    .expect("connect");
    let dedupe = SqliteDedupe::open(&db, options()).expect("dedupe");
    let mut orders = guard(
        "subscribe",
        consumer.subscribe::<u32>(
            "orders.created",
            Some("billing"),
            SubscribeOptions::new().from_earliest(),
        ),
    )
    .await
    .expect("subscribe");
    let mut skipped = Vec::new();
    let mut handled = 0;
    // Orders after the crash are new; the crashed one (and any earlier one
    // whose ACK the crash cut off) comes again and is skipped.
    while handled < EVENTS - CRASH_AFTER {
        let delivery = next("delivery", &mut orders).await;
        let order = *delivery.payload().expect("a number");
        let outcome = guard(
            "handle",
            dedupe.handle(delivery, |tx, event, order: &u32| {
                tx.execute(
                    "INSERT INTO invoices (order_no, event_id) VALUES (?1, ?2)",
                    (*order, &event.id),
                )
            }),
        )
        .await
        .expect("handle");
        match outcome {
            Handled::Processed(_) => handled += 1,
            Handled::AlreadyProcessed => skipped.push(order),
        }
    }
    assert!(
        skipped.contains(&CRASH_AFTER),
        "the committed but unacknowledged order {CRASH_AFTER} comes again: {skipped:?}"
    );
    assert!(
        skipped.iter().all(|order| *order <= CRASH_AFTER),
        "only orders committed before the crash are skipped: {skipped:?}"
    );
    let every_order = invoices(&db);
    let expected: BTreeMap<u32, u32> = (1..=EVENTS).map(|order| (order, 1)).collect();
    assert_eq!(every_order, expected, "each order invoiced exactly once");
    // The group moved past everything: a ping is a sync point for ACKs.
    guard("ping", consumer.ping()).await.expect("ping");
    hub.stop().await;
}
