//! Several drainers of one MongoDB outbox (on FerretDB): the drain lease
//! (one drainer at a time per collection) and opening a collection again.

use std::time::Duration;

use promhub_hub::store::mongo::test_server::FerretDb;
use promhub_outbox::mongo::{DrainLease, MongoOutbox};

const TEST: &str = "one_holder_at_a_time_until_the_lease_lapses_or_is_released";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_until_the_lease_lapses_or_is_released() {
    let Some(server) = FerretDb::shared_or_skip(TEST) else {
        return;
    };
    let client = mongodb::Client::with_uri_str(server.uri("outbox"))
        .await
        .expect("connect to FerretDB");
    let db = client.database("outbox");
    let collection = format!("leased_{}", std::process::id());
    let lease = Duration::from_secs(10);
    let a = DrainLease::new(&db, &collection, "hub-a", lease);
    let b = DrainLease::new(&db, &collection, "hub-b", lease);
    // Times are passed in: no waiting.
    let t = 1_000_000;

    assert!(a.acquire(t).await.unwrap(), "the first holder takes it");
    assert!(!b.acquire(t + 1).await.unwrap(), "a running lease is kept");
    assert!(a.acquire(t + 5_000).await.unwrap(), "the holder renews");
    assert_eq!(
        a.current_holder(t + 6_000).await.unwrap().as_deref(),
        Some("hub-a")
    );
    // Renewed at t + 5 s, so still running at t + 12 s.
    assert!(!b.acquire(t + 12_000).await.unwrap());
    // Lapsed (the holder stopped renewing): the other takes it over, and
    // the old holder can no longer renew.
    assert!(
        b.acquire(t + 15_000).await.unwrap(),
        "a lapsed lease is taken over"
    );
    assert!(
        !a.acquire(t + 15_001).await.unwrap(),
        "the old holder lost it"
    );
    assert_eq!(
        b.current_holder(t + 15_002).await.unwrap().as_deref(),
        Some("hub-b")
    );
    // Released: free at once, not after it lapses; a release by a holder
    // that does not have it changes nothing.
    a.release().await.unwrap();
    assert!(!a.acquire(t + 16_000).await.unwrap());
    b.release().await.unwrap();
    assert_eq!(b.current_holder(t + 16_001).await.unwrap(), None);
    assert!(
        a.acquire(t + 16_002).await.unwrap(),
        "a released lease is free"
    );
}

/// Opening an outbox again (a restarted or a second drainer) finds its
/// indexes in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_opens_again_with_its_indexes_in_place() {
    let Some(server) = FerretDb::shared_or_skip("an_outbox_opens_again_with_its_indexes_in_place")
    else {
        return;
    };
    let collection = format!("reopened_{}", std::process::id());
    for _ in 0..2 {
        // Each open with its own client, as two processes would.
        let client = mongodb::Client::with_uri_str(server.uri("outbox"))
            .await
            .expect("connect to FerretDB");
        MongoOutbox::open_for_draining(
            &client.database("outbox"),
            &collection,
            Duration::from_secs(60),
        )
        .await
        .expect("open for draining");
    }
}
