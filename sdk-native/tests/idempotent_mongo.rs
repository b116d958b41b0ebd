//! The MongoDB dedupe store. On FerretDB (no transactions): opening fails
//! clearly unless the caller opts out, and the opted-out store still runs
//! each handler once per id. The transactional path (the id and the
//! handler's writes commit or roll back together) runs against a real
//! replica set named by PROMHUB_TEST_MONGODB_URL, and is skipped visibly
//! otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::{Client, Collection, Database};
use promhub::idempotent::{
    EventRef, HandleError, Handled, MongoDedupe, MongoDedupeError, MongoDedupeOptions,
};
use promhub_hub::store::mongo::test_server::FerretDb;

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn ferret(test: &str) -> Option<(Client, Database)> {
    let server = FerretDb::shared_or_skip(test)?;
    let client = Client::with_uri_str(server.uri("dedupe"))
        .await
        .expect("connect");
    let db = client.database("dedupe");
    Some((client, db))
}

/// Inserts one invoice per run through the session.
async fn invoice(
    invoices: &Collection<Document>,
    session: &mut mongodb::ClientSession,
    event_id: &str,
) -> Result<(), mongodb::error::Error> {
    invoices
        .insert_one(doc! { "event_id": event_id })
        .session(session)
        .await
        .map(|_| ())
}

async fn count(invoices: &Collection<Document>, event_id: &str) -> u64 {
    invoices
        .count_documents(doc! { "event_id": event_id })
        .await
        .expect("count")
}

#[tokio::test]
async fn without_transactions_opening_fails_clearly_unless_allowed() {
    let Some((client, db)) = ferret("dedupe_detects_no_transactions").await else {
        return;
    };
    let mut options = MongoDedupeOptions::new("billing");
    options.collection = unique("processed");
    let refused = MongoDedupe::open(&client, &db, options.clone())
        .await
        .expect_err("FerretDB runs no transactions");
    let MongoDedupeError::NoTransactions(message) = &refused else {
        panic!("wrong error: {refused:?}");
    };
    assert!(message.contains("replica set"), "{message}");
    assert!(
        message.contains("MongoDedupeOptions::allow_without_transactions"),
        "the message names the opt-out: {message}"
    );

    options.allow_without_transactions = true;
    let store = MongoDedupe::open(&client, &db, options)
        .await
        .expect("opt-out");
    assert!(!store.has_transactions());
}

#[tokio::test]
async fn without_transactions_each_id_is_still_handled_once() {
    let Some((client, db)) = ferret("dedupe_once_without_transactions").await else {
        return;
    };
    let mut options = MongoDedupeOptions::new("billing");
    options.collection = unique("processed");
    options.allow_without_transactions = true;
    let store = MongoDedupe::open(&client, &db, options.clone())
        .await
        .expect("open");
    let invoices = db.collection::<Document>(&unique("invoices"));

    let first = store
        .process(EventRef::new("t", "e1"), |session| {
            let invoices = invoices.clone();
            Box::pin(async move { invoice(&invoices, session, "e1").await })
        })
        .await
        .expect("process");
    assert_eq!(first, Handled::Processed(()));
    let second = store
        .process(EventRef::new("t", "e1"), |session| {
            let invoices = invoices.clone();
            Box::pin(async move { invoice(&invoices, session, "e1").await })
        })
        .await
        .expect("process");
    assert_eq!(second, Handled::AlreadyProcessed);
    assert_eq!(count(&invoices, "e1").await, 1);
    assert!(store.is_processed(EventRef::new("t", "e1")).await.unwrap());

    // A failing handler records nothing: the next delivery runs it.
    let failed = store
        .process(EventRef::new("t", "e2"), |_session| {
            Box::pin(async move { Err::<(), _>("the payment service is down") })
        })
        .await;
    assert!(matches!(failed, Err(HandleError::Handler(_))));
    assert!(!store.is_processed(EventRef::new("t", "e2")).await.unwrap());
    let retried = store
        .process(EventRef::new("t", "e2"), |session| {
            let invoices = invoices.clone();
            Box::pin(async move { invoice(&invoices, session, "e2").await })
        })
        .await
        .expect("retry");
    assert!(retried.is_processed());

    // Another scope is another consumer.
    let mut shipping = options.clone();
    shipping.dedupe = promhub::idempotent::DedupeOptions::new("shipping");
    let shipping = MongoDedupe::open(&client, &db, shipping)
        .await
        .expect("open");
    let other = shipping
        .process(EventRef::new("t", "e1"), |_session| {
            Box::pin(async move { Ok::<_, mongodb::error::Error>(()) })
        })
        .await
        .expect("process");
    assert!(other.is_processed());
}

#[tokio::test]
async fn expired_ids_are_purged_where_there_is_no_ttl_index() {
    let Some((client, db)) = ferret("dedupe_purge").await else {
        return;
    };
    let mut options = MongoDedupeOptions::new("billing");
    options.collection = unique("processed");
    options.allow_without_transactions = true;
    options.dedupe = options.dedupe.ttl(Duration::ZERO);
    let store = MongoDedupe::open(&client, &db, options)
        .await
        .expect("open");
    for id in ["a", "b"] {
        store
            .process(EventRef::new("t", id), |_s| {
                Box::pin(async move { Ok::<_, mongodb::error::Error>(()) })
            })
            .await
            .expect("process");
    }
    // A zero TTL: expired at once, so handled again and purgeable.
    assert!(!store.is_processed(EventRef::new("t", "a")).await.unwrap());
    assert_eq!(store.purge_expired().await.unwrap(), 2);
    assert_eq!(store.purge_expired().await.unwrap(), 0);
}

/// The transactional path, on a real replica set only.
#[tokio::test]
async fn in_a_transaction_the_id_and_the_handlers_writes_commit_or_roll_back_together() {
    let Ok(url) = std::env::var("PROMHUB_TEST_MONGODB_URL") else {
        eprintln!(
            "SKIPPED in_a_transaction_the_id_and_the_handlers_writes_commit_or_roll_back_together: \
             set PROMHUB_TEST_MONGODB_URL to a MongoDB replica set to run it"
        );
        return;
    };
    let client = Client::with_uri_str(&url).await.expect("connect");
    let db = client.database("promhub_dedupe_test");
    let mut options = MongoDedupeOptions::new("billing");
    options.collection = unique("processed");
    let store = MongoDedupe::open(&client, &db, options)
        .await
        .expect("a replica set runs transactions");
    assert!(store.has_transactions());
    let invoices = db.collection::<Document>(&unique("invoices"));

    // The handler writes, then fails: its write and the id roll back.
    let failed = store
        .process(EventRef::new("t", "e1"), |session| {
            let invoices = invoices.clone();
            Box::pin(async move {
                invoice(&invoices, session, "e1").await?;
                Err::<(), _>(mongodb::error::Error::custom("after the write"))
            })
        })
        .await;
    assert!(matches!(failed, Err(HandleError::Handler(_))));
    assert_eq!(count(&invoices, "e1").await, 0);
    assert!(!store.is_processed(EventRef::new("t", "e1")).await.unwrap());

    // Committed together; a second handling does nothing.
    let done = store
        .process(EventRef::new("t", "e1"), |session| {
            let invoices = invoices.clone();
            Box::pin(async move { invoice(&invoices, session, "e1").await })
        })
        .await
        .expect("process");
    assert!(done.is_processed());
    let again = store
        .process(EventRef::new("t", "e1"), |session| {
            let invoices = invoices.clone();
            Box::pin(async move { invoice(&invoices, session, "e1").await })
        })
        .await
        .expect("process");
    assert_eq!(again, Handled::AlreadyProcessed);
    assert_eq!(count(&invoices, "e1").await, 1);
}
