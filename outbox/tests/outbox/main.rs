//! The transactional outbox and its drainer, on the embedded store (real
//! SQLite files) and on MongoDB (FerretDB: everything but transactions,
//! which the native SDK's `outbox` test checks on a real replica set when
//! `PROMHUB_TEST_MONGODB_URL` is set), publishing to in-memory sinks.
//!
//! `cargo test -p promhub-outbox --test outbox`

mod common;
mod explain;
mod lease;
mod scenarios;

use std::collections::HashMap;
use std::sync::Arc;

use promhub_outbox::sqlite::SqliteOutbox;
use promhub_outbox::{NewRecord, OutboxStore, now_ms};

use common::{ferret_outbox, sqlite_outbox};

/// One test per scenario and store.
macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let (store, _dir) = super::sqlite_outbox();
                    super::scenarios::$scenario(store).await;
                }
            )*
        }
        mod ferretdb_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    if let Some(store) = super::ferret_outbox(stringify!($scenario)).await {
                        super::scenarios::$scenario(store).await;
                    }
                }
            )*
        }
    };
}

on_every_store!(
    claim_takes_due_and_expired_records_and_fences_by_token,
    a_stale_drainers_mark_sent_is_rejected_and_counted,
    failures_back_off_then_dead_then_replay,
    a_permanently_refused_record_is_dead_at_once,
    a_record_whose_leases_keep_expiring_ends_dead,
    sent_records_are_purged_after_retention,
    a_key_is_claimed_one_record_at_a_time,
    a_slow_publish_keeps_its_lease_renewed,
    released_records_are_due_again_without_the_attempt,
);

/// The full ordering run (embedded store).
const ORDER_RECORDS: usize = 10_000;
const ORDER_KEYS: usize = 100;
/// FerretDB writes (and syncs) every updated document on its own, so a
/// 100-record claim takes seconds on a 10,000-record collection; its run is
/// smaller, the rule under test the same.
const FERRET_ORDER_RECORDS: usize = 300;
const FERRET_ORDER_KEYS: usize = 10;

fn keyed_record(n: usize, keys: usize) -> (String, NewRecord) {
    let key = format!("customer-{}", n % keys);
    let record = NewRecord::new("orders.updated", &serde_json::json!({ "n": n }))
        .expect("record")
        .key(key.clone());
    (key, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_three_drainers_keep_per_key_order() {
    let (store, dir) = sqlite_outbox();
    let path = dir.path().join("app.db");
    let mut ids_by_key: HashMap<String, Vec<String>> = HashMap::new();
    // The application writes them in its own transaction.
    let mut conn = rusqlite::Connection::open(&path).expect("open");
    promhub_outbox::sqlite::with_transaction(&mut conn, |tx| {
        for n in 0..ORDER_RECORDS {
            let (key, record) = keyed_record(n, ORDER_KEYS);
            ids_by_key
                .entry(key)
                .or_default()
                .push(SqliteOutbox::enqueue_in(tx, record)?);
        }
        Ok::<_, promhub_outbox::OutboxError>(())
    })
    .expect("enqueue");
    // Each drainer with its own connection, as in separate processes.
    let stores = vec![
        Arc::new(store),
        Arc::new(SqliteOutbox::open(&path).expect("open")),
        Arc::new(SqliteOutbox::open(&path).expect("open")),
    ];
    scenarios::three_drainers_keep_per_key_order(stores, ids_by_key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferretdb_three_drainers_keep_per_key_order() {
    common::init_logs();
    let Some(store) = ferret_outbox("ferretdb_three_drainers_keep_per_key_order").await else {
        return;
    };
    let store = Arc::new(store);
    // One writer per key (concurrently across keys), each in creation order.
    let writers = (0..FERRET_ORDER_KEYS).map(|k| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut key = String::new();
            for n in (k..FERRET_ORDER_RECORDS).step_by(FERRET_ORDER_KEYS) {
                let (record_key, record) = keyed_record(n, FERRET_ORDER_KEYS);
                key = record_key;
                ids.push(store.enqueue(record, now_ms()).await.expect("enqueue"));
            }
            (key, ids)
        })
    });
    let mut ids_by_key = HashMap::new();
    for writer in futures_util::future::join_all(writers).await {
        let (key, ids) = writer.expect("writer");
        ids_by_key.insert(key, ids);
    }
    let stores = vec![Arc::clone(&store), Arc::clone(&store), store];
    scenarios::three_drainers_keep_per_key_order(stores, ids_by_key).await;
}

/// The embedded store's claim looks at keys' heads only, so one key's long
/// backlog does not crowd out the other keys. (The MongoDB store reads 4×
/// the batch size of due records and can be crowded out by a key with a
/// longer backlog than that; see `promhub_outbox::mongo`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_hot_keys_backlog_does_not_hold_other_keys_back() {
    let (store, _dir) = sqlite_outbox();
    let t = 5_000_000;
    let record = |key: &str| {
        NewRecord::new("orders.updated", &1)
            .expect("record")
            .key(key)
    };
    let hot_head = store.enqueue(record("hot"), t).await.unwrap();
    for _ in 0..50 {
        store.enqueue(record("hot"), t).await.unwrap();
    }
    let cold = store.enqueue(record("cold"), t).await.unwrap();
    let claim = store
        .claim(10, std::time::Duration::from_secs(10), t)
        .await
        .unwrap();
    let ids: Vec<String> = claim.records.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, [hot_head, cold]);
}
