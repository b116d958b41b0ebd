//! What only the MongoDB backend can get wrong: batches cut short by a
//! crash, a counter that went missing or backwards, and expiry of
//! de-duplication entries on a server without TTL indexes.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use promhub_core::Topic;
use promhub_core::frames::to_payload;

use super::codec::event_document;
use super::queries;
use super::test_server::FerretDb;
use super::{MongoOptions, MongoStore};
use crate::store::{Appended, CommitBatch, NewEvent, Store, StoreError};

fn event(id: &str, client_id: bool, key: Option<&str>) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        client_id,
        topic: Topic::parse("jobs.eu").expect("topic"),
        ts: 1,
        key: key.map(str::to_owned),
        payload: to_payload(id).expect("payload"),
        headers: None,
        tags: None,
        caused_by: None,
        sid: None,
    }
}

async fn commit(store: &MongoStore, events: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
    Ok(store
        .commit(CommitBatch {
            events,
            ..CommitBatch::default()
        })
        .await?
        .events)
}

fn stored_seq(appended: &Appended) -> Result<u64> {
    match appended {
        Appended::Stored { seq, .. } => Ok(*seq),
        other => bail!("expected stored, got {other:?}"),
    }
}

async fn open(server: &FerretDb, database: &str) -> Result<MongoStore> {
    Ok(MongoStore::connect(&server.uri(database)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_is_completed_at_the_next_start() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("a_batch_cut_short") else {
        return Ok(());
    };
    let store = open(server, "cut_short").await?;
    let first = commit(&store, vec![event("a", true, Some("k"))]).await?;
    let first = stored_seq(&first[0])?;
    // What a crash right after step 2 leaves: seqs reserved and events
    // inserted, but no de-duplication or latest-by-key entries.
    let db = store.inner.db.clone();
    db.collection::<Document>(queries::META)
        .update_one(
            doc! { "_id": queries::SEQ_COUNTER },
            doc! { "$inc": { "value": 2_i64 } },
        )
        .await?;
    let now = DateTime::now();
    db.collection::<Document>(queries::EVENTS)
        .insert_many([
            event_document(first + 1, &event("b", true, Some("k")), now),
            event_document(first + 2, &event("c", false, Some("k2")), now),
        ])
        .await?;
    // The crash: the store is gone without closing.
    drop(store);

    let store = open(server, "cut_short").await?;
    ensure!(
        store.last_seq().await? == first + 2,
        "the cut-short events count"
    );
    let topic = Topic::parse("jobs.eu")?;
    let latest = store
        .latest_for_key(&topic, "k")
        .await?
        .context("latest k")?;
    ensure!(
        latest.seq == first + 1 && latest.id == "b",
        "latest-by-key repaired"
    );
    let latest = store
        .latest_for_key(&topic, "k2")
        .await?
        .context("latest k2")?;
    ensure!(latest.seq == first + 2);
    // The topic list is repaired too (lag counts start from it).
    let jobs = promhub_core::Pattern::parse("jobs.*")?;
    ensure!(store.count_matching_after(&jobs, first).await? == 2);
    let out = commit(
        &store,
        vec![event("b", true, None), event("d", false, None)],
    )
    .await?;
    ensure!(
        out[0]
            == Appended::Duplicate {
                id: "b".into(),
                seq: first + 1
            },
        "de-duplication repaired: {:?}",
        out[0]
    );
    ensure!(
        stored_seq(&out[1])? == first + 3,
        "seqs continue after the repaired batch"
    );
    store.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_a_topic_list_gets_one_at_start() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("topic_list") else {
        return Ok(());
    };
    let store = open(server, "topic_list").await?;
    commit(
        &store,
        vec![event("a", false, None), event("b", false, None)],
    )
    .await?;
    // What a hub from before the topic list left behind.
    let db = store.inner.db.clone();
    db.collection::<Document>(queries::TOPICS).drop().await?;
    db.collection::<Document>(queries::META)
        .delete_one(doc! { "_id": queries::TOPICS_COMPLETE })
        .await?;
    store.close().await?;
    let store = open(server, "topic_list").await?;
    let jobs = promhub_core::Pattern::parse("jobs.**")?;
    ensure!(store.count_matching_after(&jobs, 0).await? == 2);
    ensure!(store.first_matching_after(&jobs, 0).await?.map(|e| e.id) == Some("a".into()));
    store.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_never_go_back_even_if_the_counter_does() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("seqs_never_go_back") else {
        return Ok(());
    };
    let store = open(server, "counter").await?;
    let out = commit(
        &store,
        (0..5)
            .map(|i| event(&format!("e{i}"), false, None))
            .collect(),
    )
    .await?;
    let highest = stored_seq(&out[4])?;
    let meta = store.inner.db.collection::<Document>(queries::META);

    // Reset behind the store's back while it runs: the next commit is
    // refused instead of reusing seqs, and the one after repairs the
    // counter from the stored events.
    meta.update_one(
        doc! { "_id": queries::SEQ_COUNTER },
        doc! { "$set": { "value": 1_i64 } },
    )
    .await?;
    store
        .inner
        .db
        .collection::<Document>(queries::SEQ_RANGES)
        .delete_many(doc! {})
        .await?;
    // The store follows its own last reservation: only a fresh read of
    // the chain notices.
    store.inner.writer.lock().await.chain_head = None;
    match commit(&store, vec![event("x", false, None)]).await {
        Err(StoreError::Corrupt(message)) => ensure!(message.contains("counter"), "{message}"),
        other => bail!("expected a refused commit, got {other:?}"),
    }
    let out = commit(&store, vec![event("y", false, None)]).await?;
    ensure!(stored_seq(&out[0])? > highest, "{out:?} after {highest}");
    let highest = stored_seq(&out[0])?;
    store.close().await?;

    // Counter document lost while stopped: the next start continues above
    // the stored events.
    let client = mongodb::Client::with_uri_str(server.uri("counter")).await?;
    for collection in [queries::META, queries::SEQ_RANGES] {
        client
            .database("counter")
            .collection::<Document>(collection)
            .delete_many(doc! {})
            .await?;
    }
    let store = open(server, "counter").await?;
    ensure!(store.last_seq().await? == highest);
    let out = commit(&store, vec![event("z", false, None)]).await?;
    ensure!(stored_seq(&out[0])? == highest + 1, "{out:?}");
    store.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_dedup_entries_are_deleted_without_ttl_indexes() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("expired_dedup_entries") else {
        return Ok(());
    };
    let window = Duration::from_millis(50);
    let store = MongoStore::connect_with(
        &server.uri("dedup_expiry"),
        MongoOptions {
            dedup_window: window,
            dedup_prune_interval: Duration::ZERO,
            ..MongoOptions::default()
        },
    )
    .await?;
    ensure!(
        !store
            .inner
            .dedup_ttl
            .load(std::sync::atomic::Ordering::Acquire),
        "FerretDB has no TTL indexes; this test covers the fallback"
    );
    let dedup = store.inner.db.collection::<Document>(queries::DEDUP);
    commit(
        &store,
        (0..10)
            .map(|i| event(&format!("c{i}"), true, None))
            .collect(),
    )
    .await?;
    ensure!(dedup.count_documents(doc! {}).await? == 10);
    tokio::time::sleep(window * 3).await;
    commit(&store, vec![event("fresh", true, None)]).await?;
    ensure!(
        dedup.count_documents(doc! {}).await? == 1,
        "only the entry within the window is left"
    );
    store.close().await?;
    Ok(())
}

fn on_topic(topic: &str, id: &str) -> NewEvent {
    NewEvent {
        topic: Topic::parse(topic).expect("topic"),
        ..event(id, true, None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_entries_of_an_older_hub_move_to_their_topic() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("dedup_entries_of_an_older_hub") else {
        return Ok(());
    };
    let store = open(server, "dedup_layout").await?;
    let out = commit(
        &store,
        vec![
            on_topic("orders.created", "order-42"),
            on_topic("evil.x", "x-1"),
        ],
    )
    .await?;
    let (order, x) = (stored_seq(&out[0])?, stored_seq(&out[1])?);
    store.close().await?;
    // What an older hub leaves: entries keyed by the id alone, no topic,
    // no marker; one of them points at an event retention removed.
    let client = mongodb::Client::with_uri_str(server.uri("dedup_layout")).await?;
    let db = client.database("dedup_layout");
    let dedup = db.collection::<Document>(queries::DEDUP);
    dedup.delete_many(doc! {}).await?;
    db.collection::<Document>(queries::META)
        .delete_one(doc! { "_id": queries::DEDUP_BY_TOPIC })
        .await?;
    let now = DateTime::now();
    let old = |id: &str, seq: u64| {
        doc! {
            "_id": id, "seq": i64::try_from(seq).unwrap_or(i64::MAX), "stored_at": now,
            "expire_at": now.saturating_add_millis(120_000),
        }
    };
    dedup
        .insert_many([old("order-42", order), old("x-1", x), old("gone", 999)])
        .await?;

    let store = open(server, "dedup_layout").await?;
    ensure!(
        dedup
            .count_documents(doc! { "topic": { "$exists": false } })
            .await?
            == 0,
        "every old entry moved or dropped"
    );
    ensure!(dedup.count_documents(doc! {}).await? == 2);
    let out = commit(
        &store,
        vec![
            on_topic("orders.created", "order-42"),
            on_topic("evil.x", "order-42"),
            on_topic("evil.x", "x-1"),
            on_topic("orders.created", "gone"),
        ],
    )
    .await?;
    ensure!(
        out[0]
            == Appended::Duplicate {
                id: "order-42".into(),
                seq: order
            },
        "the moved entry guards its own topic: {out:?}"
    );
    stored_seq(&out[1]).context("the same id on another topic is another event")?;
    ensure!(
        out[2]
            == Appended::Duplicate {
                id: "x-1".into(),
                seq: x
            },
        "{out:?}"
    );
    stored_seq(&out[3])?;
    store.close().await?;
    // Done once: the marker stays, so a later start does not scan again.
    ensure!(
        db.collection::<Document>(queries::META)
            .count_documents(doc! { "_id": queries::DEDUP_BY_TOPIC })
            .await?
            == 1
    );
    Ok(())
}

/// The ranges not done yet.
async fn open_ranges(store: &MongoStore) -> Result<Vec<Document>> {
    Ok(store
        .inner
        .db
        .collection::<Document>(queries::SEQ_RANGES)
        .find(doc! { "done": false })
        .await?
        .try_collect()
        .await?)
}

/// What another hub does when it reserves `count` seqs: its range follows
/// the newest and stays open until `expires_in_ms` from now. Returns its
/// low.
async fn open_foreign_range(
    store: &MongoStore,
    writer: &str,
    count: u64,
    expires_in_ms: i64,
) -> Result<u64> {
    let ranges = store.inner.db.collection::<Document>(queries::SEQ_RANGES);
    let newest = ranges
        .find_one(doc! {})
        .sort(doc! { "_id": -1 })
        .await?
        .context("no range")?;
    let low = newest.get_i64("high")? + 1;
    let expires = DateTime::from_millis(DateTime::now().timestamp_millis() + expires_in_ms);
    ranges
        .insert_one(doc! {
            "_id": low,
            "high": low + count as i64 - 1,
            "writer": writer,
            "expires": expires,
            "done": false,
        })
        .await?;
    Ok(low as u64)
}

async fn seqs_read(store: &MongoStore) -> Result<Vec<u64>> {
    let (events, _) = store
        .read_after_bounded(0, None, 10_000, usize::MAX, 10_000)
        .await?;
    Ok(events.iter().map(|e| e.seq).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_range_holds_the_horizon_until_closed_or_lapsed() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("open_range_horizon") else {
        return Ok(());
    };
    let store = open(server, "open_range").await?;
    let base = stored_seq(&commit(&store, vec![event("a", false, None)]).await?[0])?;
    ensure!(store.last_seq().await? == base);
    ensure!(
        open_ranges(&store).await?.is_empty(),
        "a committed batch closes its range"
    );

    // Another hub reserved 3 seqs and is still writing them.
    let low = open_foreign_range(&store, "other", 3, 60_000).await?;
    ensure!(low == base + 1);
    let mine = stored_seq(&commit(&store, vec![event("b", false, None)]).await?[0])?;
    ensure!(mine == base + 4, "seqs after the open range: {mine}");
    // Acknowledged, but not readable past the horizon.
    ensure!(
        store.last_seq().await? == base,
        "horizon held below the open range"
    );
    ensure!(seqs_read(&store).await? == vec![base]);
    ensure!(store.get(mine).await?.is_none());

    // The other hub writes one of its seqs and closes its range.
    let db = store.inner.db.clone();
    db.collection::<Document>(queries::EVENTS)
        .insert_one(event_document(
            low,
            &event("o", false, None),
            DateTime::now(),
        ))
        .await?;
    db.collection::<Document>(queries::SEQ_RANGES)
        .update_one(
            doc! { "_id": low as i64 },
            doc! { "$set": { "done": true } },
        )
        .await?;
    ensure!(store.refresh_horizon().await? == mine);
    // Its unwritten seqs never appear: readers skip them.
    ensure!(seqs_read(&store).await? == vec![base, low, mine]);

    // A range whose hub died lapses after its lease; nothing waits on it.
    let dead = open_foreign_range(&store, "dead", 2, 700).await?;
    let after = stored_seq(&commit(&store, vec![event("c", false, None)]).await?[0])?;
    ensure!(after == dead + 2);
    ensure!(store.last_seq().await? == mine);
    tokio::time::sleep(Duration::from_millis(800)).await;
    ensure!(store.refresh_horizon().await? == after);
    ensure!(seqs_read(&store).await? == vec![base, low, mine, after]);
    // The lapsed range stays given up.
    let next = stored_seq(&commit(&store, vec![event("d", false, None)]).await?[0])?;
    ensure!(store.last_seq().await? == next);
    store.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_commit_in_one_seq_order() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("two_stores_one_order") else {
        return Ok(());
    };
    let a = open(server, "two_writers").await?;
    let b = open(server, "two_writers").await?;
    let write = |store: MongoStore, name: &'static str| async move {
        let mut seqs = Vec::new();
        for batch in 0..40 {
            let events = (0..3)
                .map(|i| event(&format!("{name}-{batch}-{i}"), false, None))
                .collect();
            for appended in commit(&store, events).await? {
                seqs.push(stored_seq(&appended)?);
            }
        }
        anyhow::Ok(seqs)
    };
    let (from_a, from_b) = tokio::join!(write(a.clone(), "a"), write(b.clone(), "b"));
    let mut all: Vec<u64> = from_a?.into_iter().chain(from_b?).collect();
    all.sort_unstable();
    let len = all.len();
    all.dedup();
    ensure!(all.len() == len && len == 240, "distinct seqs: {len}");
    ensure!(open_ranges(&a).await?.is_empty());
    // Both see every event, in one strictly increasing order, no gap.
    for store in [&a, &b] {
        store.refresh_horizon().await?;
        ensure!(seqs_read(store).await? == all);
    }
    a.close().await?;
    b.close().await?;
    Ok(())
}

/// A hub killed between inserting a batch's events and their
/// de-duplication entries leaves a copy without an entry; the client sends
/// the publish again to another hub, which finds that copy (its range never
/// finished) and answers it as a duplicate with the copy's seq, writing
/// the missing entry, instead of storing the event twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_sent_again_after_its_hub_died_mid_batch_is_stored_once() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("sent_again_after_a_dead_batch") else {
        return Ok(());
    };
    let dead = open(server, "sent_again").await?;
    let alive = open(server, "sent_again").await?;
    commit(&alive, vec![event("before", true, None)]).await?;

    // The dead hub's batch: its range reserved, its event inserted, then
    // nothing more (no entry, the range never marked done).
    let seq = {
        let mut state = dead.inner.writer.lock().await;
        dead.reserve(&mut state, 1).await?
    };
    dead.inner
        .db
        .collection::<Document>(queries::EVENTS)
        .insert_one(event_document(
            seq,
            &event("order-7", true, None),
            DateTime::now(),
        ))
        .await?;

    let out = commit(
        &alive,
        vec![event("order-7", true, None), event("order-8", true, None)],
    )
    .await?;
    match &out[0] {
        Appended::Duplicate { id, seq: original } => {
            ensure!(
                id == "order-7" && *original == seq,
                "{out:?} (copy at {seq})"
            )
        }
        other => bail!("expected the copy at {seq} as a duplicate, got {other:?}"),
    }
    ensure!(stored_seq(&out[1])? > seq, "{out:?}");
    // Its entry is written now: found like any other from here on.
    let entry = alive
        .inner
        .db
        .collection::<Document>(queries::DEDUP)
        .find_one(doc! { "_id": super::codec::dedup_id("jobs.eu", "order-7") })
        .await?
        .context("the missing entry was written")?;
    ensure!(entry.get_i64("seq")? as u64 == seq, "{entry}");
    let again = commit(&alive, vec![event("order-7", true, None)]).await?;
    ensure!(
        matches!(&again[0], Appended::Duplicate { seq: s, .. } if *s == seq),
        "{again:?}"
    );
    let copies = alive
        .inner
        .db
        .collection::<Document>(queries::EVENTS)
        .count_documents(doc! { "id": "order-7" })
        .await?;
    ensure!(copies == 1, "{copies} copies of order-7");
    alive.close().await?;
    Ok(())
}

/// FerretDB 1.x holds one SQL connection per statement of an `update`
/// until the command ends, from a pool of 100: a batch whose latest-by-key
/// upserts were sent as one 300-statement command never finished, and the
/// database answered nothing more. Statements go in commands of at most
/// 64 (`writes.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_hundreds_of_keys_commits_and_the_database_stays_usable() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("a_batch_with_hundreds_of_keys") else {
        return Ok(());
    };
    let store = open(server, "many_keys").await?;
    // Twice: the second batch's upserts each match the first's entries.
    let mut last = 0;
    for round in 0..2 {
        let events = (0..300)
            .map(|i| event(&format!("r{round}-k{i}"), true, Some(&format!("key-{i}"))))
            .collect();
        let appended = tokio::time::timeout(Duration::from_secs(60), commit(&store, events))
            .await
            .context("a 300-key batch did not commit within 60 s")??;
        ensure!(appended.len() == 300);
        last = stored_seq(&appended[299])?;
    }
    let latest = tokio::time::timeout(
        Duration::from_secs(60),
        store.latest_for_key(&Topic::parse("jobs.eu")?, "key-299"),
    )
    .await
    .context("the database stopped answering")??
    .context("latest-by-key of the last key")?;
    ensure!(latest.seq == last, "latest {} != {last}", latest.seq);
    Ok(())
}

/// Hubs started together on a new database each create its collections,
/// indexes and marker documents; every one of them opens (on FerretDB two
/// upserts of one `_id` at once give the loser a duplicate key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opened_at_once_on_a_new_database_all_open() -> Result<()> {
    let Some(server) = FerretDb::shared_or_skip("opened_at_once") else {
        return Ok(());
    };
    for round in 0..4 {
        let database = format!("opened_at_once_{round}");
        let opened = futures_util::future::join_all((0..3).map(|_| open(server, &database))).await;
        let mut stores = Vec::new();
        for (hub, store) in opened.into_iter().enumerate() {
            stores.push(store.with_context(|| format!("round {round}: store {hub} did not open"))?);
        }
        let appended = commit(&stores[0], vec![event("after-open", false, None)]).await?;
        ensure!(appended.len() == 1, "round {round}: {appended:?}");
        stored_seq(&appended[0])?;
        for store in stores {
            store.close().await?;
        }
    }
    Ok(())
}
