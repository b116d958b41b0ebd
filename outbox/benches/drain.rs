//! Outbox drain rate (prints numbers; nothing is asserted): records/s a
//! [`Drainer`] drains (claim, publish to an instant sink, mark sent) at
//! batch sizes 1, 100 and 1,000, on the embedded store (SQLite) and on
//! MongoDB (FerretDB, or the server of `PROMHUB_BENCH_MONGODB_URL`), next to
//! the design note's claim: one `findOneAndUpdate` per record and one
//! mark-sent write per record, on the same store (implemented here only).
//! Commit-to-delivery latency through a real hub is the native SDK's
//! `outbox` bench.
//!
//! `cargo bench -p promhub-outbox --bench drain [-- sqlite|mongodb]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::options::ReturnDocument;
use promhub_hub::store::mongo::test_server::FerretDb;
use promhub_outbox::mongo::{MongoOutbox, MongoOutboxOptions};
use promhub_outbox::sqlite::{SqliteOutbox, with_transaction};
use promhub_outbox::{
    Drainer, DrainerOptions, NewRecord, OutboxError, OutboxRecord, OutboxSink, OutboxStore,
    PublishOutcome, SinkError,
};

/// Each measurement stops after this long (and reports what it drained).
const BUDGET: Duration = Duration::from_secs(60);
const MONGODB_ENV: &str = "PROMHUB_BENCH_MONGODB_URL";

/// Publishes nothing, at once: the drain rate is the outbox's own cost.
#[derive(Debug, Default)]
struct InstantSink {
    seq: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl OutboxSink for InstantSink {
    async fn publish(&self, _record: &OutboxRecord) -> Result<PublishOutcome, SinkError> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(PublishOutcome {
            seq,
            duplicate: false,
        })
    }
}

fn record(n: usize) -> NewRecord {
    NewRecord::new(
        "orders.created",
        &serde_json::json!({ "order": n, "total": 42 }),
    )
    .expect("record")
}

fn rate(records: usize, elapsed: Duration) -> f64 {
    records as f64 / elapsed.as_secs_f64()
}

fn report(store: &str, claim: &str, batch: usize, drained: usize, elapsed: Duration) {
    println!(
        "{store:<8} {claim:<28} batch {batch:>5}: {drained:>6} records in {:>8.2?} = {:>9.0} records/s",
        elapsed,
        rate(drained, elapsed)
    );
}

/// Drains with our drainer until empty (or the budget); records drained.
async fn drain_all<S: OutboxStore>(store: Arc<S>, batch: usize) -> Result<(usize, Duration)> {
    let drainer = Drainer::new(
        store,
        Arc::new(InstantSink::default()),
        DrainerOptions {
            batch_size: batch,
            ..DrainerOptions::default()
        },
    );
    let start = Instant::now();
    let mut drained = 0;
    while start.elapsed() < BUDGET {
        let report = drainer.drain_once().await?;
        if report.claimed == 0 {
            break;
        }
        drained += report.sent as usize;
    }
    Ok((drained, start.elapsed()))
}

// ---------------------------------------------------------------------------
// SQLite

fn fill_sqlite(path: &std::path::Path, count: usize) -> Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    SqliteOutbox::create_schema(&conn)?;
    with_transaction(&mut conn, |tx| {
        for n in 0..count {
            SqliteOutbox::enqueue_in(tx, record(n))?;
        }
        Ok::<_, OutboxError>(())
    })?;
    Ok(())
}

/// The note's claim on SQLite: per record, claim the oldest pending one
/// (its own transaction), publish, mark it sent (another write).
fn baseline_sqlite(path: &std::path::Path) -> Result<(usize, Duration)> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let start = Instant::now();
    let mut drained = 0;
    while start.elapsed() < BUDGET {
        let now = promhub_outbox::now_ms() as i64;
        let claimed: Option<String> = conn
            .query_row(
                "UPDATE promhub_outbox SET status = 'claimed', lease_until = ?1 + 30000 \
                 WHERE seq = (SELECT seq FROM promhub_outbox WHERE status = 'pending' \
                 AND next_attempt_at <= ?1 ORDER BY seq LIMIT 1) RETURNING id",
                [now],
                |row| row.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let Some(id) = claimed else { break };
        conn.execute(
            "UPDATE promhub_outbox SET status = 'sent', sent_at = ?2 WHERE id = ?1",
            rusqlite::params![id, now],
        )?;
        drained += 1;
    }
    Ok((drained, start.elapsed()))
}

async fn bench_sqlite() -> Result<()> {
    println!("== drain rate, embedded store (SQLite, synchronous=FULL, WAL) ==");
    for (batch, count) in [(1, 2_000), (100, 50_000), (1_000, 100_000)] {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bench.db");
        fill_sqlite(&path, count)?;
        let store = Arc::new(SqliteOutbox::open(&path)?);
        let (drained, elapsed) = drain_all(store, batch).await?;
        report("sqlite", "ours (claim a batch)", batch, drained, elapsed);
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    fill_sqlite(&path, 2_000)?;
    let (drained, elapsed) = tokio::task::spawn_blocking(move || baseline_sqlite(&path)).await??;
    report("sqlite", "note (1 claim per record)", 1, drained, elapsed);
    Ok(())
}

// ---------------------------------------------------------------------------
// MongoDB

async fn fill_mongodb(outbox: &MongoOutbox, count: usize) -> Result<()> {
    let now = DateTime::now();
    let documents: Vec<Document> = (0..count)
        .map(|n| {
            doc! {
                "_id": format!("bench-{n:08}"),
                "topic": "orders.created",
                "payload": { "order": n as i64, "total": 42 },
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
        })
        .collect();
    for chunk in documents.chunks(1_000) {
        outbox.collection().insert_many(chunk.to_vec()).await?;
    }
    Ok(())
}

/// The note's claim on MongoDB: one `findOneAndUpdate` per record, then
/// one `updateOne` to mark it sent.
async fn baseline_mongodb(outbox: &MongoOutbox) -> Result<(usize, Duration)> {
    let collection = outbox.collection();
    let start = Instant::now();
    let mut drained = 0;
    while start.elapsed() < BUDGET {
        let now = DateTime::now();
        let claimed = collection
            .find_one_and_update(
                doc! { "status": "pending", "next_attempt_at": { "$lte": now } },
                doc! { "$set": { "status": "claimed", "lease_until": DateTime::from_millis(now.timestamp_millis() + 30_000) } },
            )
            .sort(doc! { "created_at": 1, "_id": 1 })
            .return_document(ReturnDocument::After)
            .await?;
        let Some(claimed) = claimed else { break };
        let id = claimed.get("_id").cloned().context("_id")?;
        collection
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "status": "sent", "sent_at": now } },
            )
            .await?;
        drained += 1;
    }
    Ok((drained, start.elapsed()))
}

async fn bench_mongodb() -> Result<()> {
    let (uri, label, _server) = match std::env::var(MONGODB_ENV) {
        Ok(uri) => (uri, "mongodb", None),
        Err(_) => {
            let server = FerretDb::start().map_err(anyhow::Error::msg)?;
            (server.uri("bench"), "ferretdb", Some(server))
        }
    };
    println!("== drain rate, MongoDB store ({label}) ==");
    let client = mongodb::Client::with_uri_str(&uri).await?;
    let db = client.database("promhub_outbox_bench");
    let options = MongoOutboxOptions {
        allow_without_transactions: true,
        ..MongoOutboxOptions::default()
    };
    let runs = [(1, 100), (100, 2_000), (1_000, 5_000)];
    for (n, (batch, count)) in runs.into_iter().enumerate() {
        let outbox = MongoOutbox::open(&client, &db, &format!("ours_{n}"), options.clone()).await?;
        fill_mongodb(&outbox, count).await?;
        let (drained, elapsed) = drain_all(Arc::new(outbox.clone()), batch).await?;
        report(label, "ours (claim a batch)", batch, drained, elapsed);
        outbox.collection().drop().await?;
    }
    let outbox = MongoOutbox::open(&client, &db, "note", options).await?;
    fill_mongodb(&outbox, 2_000).await?;
    let (drained, elapsed) = baseline_mongodb(&outbox).await?;
    report(label, "note (1 findOneAndUpdate)", 1, drained, elapsed);
    outbox.collection().drop().await?;
    Ok(())
}

fn main() -> Result<()> {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if runs("sqlite") {
            bench_sqlite().await?;
        }
        if runs("mongodb") {
            bench_mongodb().await?;
        }
        Ok(())
    })
}
