//! Stores and sinks for the outbox tests.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use promhub_hub::store::mongo::test_server::FerretDb;
use promhub_outbox::mongo::{MongoOutbox, MongoOutboxOptions};
use promhub_outbox::sqlite::SqliteOutbox;
use promhub_outbox::{
    Backoff, DrainerOptions, OutboxRecord, OutboxSink, PublishOutcome, SinkError,
};

/// A fresh embedded outbox in a temp dir (kept alive by the returned dir).
pub fn sqlite_outbox() -> (SqliteOutbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteOutbox::open(dir.path().join("app.db")).expect("open sqlite outbox");
    (store, dir)
}

/// A fresh outbox collection on the shared FerretDB (no transactions
/// there, so opened with the explicit opt-out); `None` when MongoDB tests
/// are skipped (visibly).
pub async fn ferret_outbox(test: &str) -> Option<MongoOutbox> {
    let server = FerretDb::shared_or_skip(test)?;
    let client = mongodb::Client::with_uri_str(server.uri("outbox"))
        .await
        .expect("connect to FerretDB");
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "outbox_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let options = MongoOutboxOptions {
        allow_without_transactions: true,
        ..MongoOutboxOptions::default()
    };
    let db = client.database("outbox");
    Some(
        MongoOutbox::open(&client, &db, &name, options)
            .await
            .expect("open the outbox on FerretDB"),
    )
}

/// How long any awaited step may take before the test fails as hung.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it takes longer than the hang guard.
pub async fn guard<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("hang guard: {what} did not happen within {HANG_GUARD:?}"),
    }
}

/// Quick retries for the tests (the delays are not asserted on).
pub fn fast_options(batch_size: usize) -> DrainerOptions {
    DrainerOptions {
        batch_size,
        lease: Duration::from_secs(60),
        poll_interval: Duration::from_millis(5),
        max_attempts: 4,
        backoff: Backoff {
            base: Duration::from_millis(4),
            max: Duration::from_millis(100),
        },
        ..DrainerOptions::default()
    }
}

/// What the in-memory hub did with one publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub key: Option<String>,
    pub at: std::time::Instant,
}

/// An in-memory stand-in for the hub's log: de-duplicates by id like the
/// hub, and fails when told to (the drainer must retry, then give up).
#[derive(Debug, Default)]
pub struct MemoryHub {
    /// Every publish attempt, in order (failed ones too).
    pub attempts: Mutex<Vec<Published>>,
    /// Stored events (each id once), in publish order.
    pub log: Mutex<Vec<Published>>,
    seen: Mutex<HashSet<String>>,
    /// Fail every publish while set.
    pub failing: std::sync::atomic::AtomicBool,
    /// Fail about one publish in this many (0: never), pseudo-randomly.
    pub fail_one_in: AtomicU64,
    /// Refuse records of this topic for good (like a forbidden topic).
    pub rejected_topic: Mutex<Option<String>>,
}

impl MemoryHub {
    pub fn log_ids(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.id.clone())
            .collect()
    }
}

#[async_trait]
impl OutboxSink for MemoryHub {
    async fn publish(&self, record: &OutboxRecord) -> Result<PublishOutcome, SinkError> {
        let published = Published {
            id: record.id.clone(),
            key: record.key.clone(),
            at: std::time::Instant::now(),
        };
        if self.rejected_topic.lock().unwrap().as_deref() == Some(record.topic.as_str()) {
            self.attempts.lock().unwrap().push(published);
            return Err(SinkError::permanent(format!(
                "forbidden by the hub: no publish:{}",
                record.topic
            )));
        }
        let one_in = self.fail_one_in.load(Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) || (one_in > 0 && fastrand::u64(0..one_in) == 0) {
            self.attempts.lock().unwrap().push(published);
            return Err(SinkError::transient("broker unavailable"));
        }
        self.attempts.lock().unwrap().push(published.clone());
        // Yield like a network call would, so lanes interleave.
        tokio::task::yield_now().await;
        let fresh = self.seen.lock().unwrap().insert(record.id.clone());
        let mut log = self.log.lock().unwrap();
        if fresh {
            log.push(published);
        }
        Ok(PublishOutcome {
            seq: log.len() as u64,
            duplicate: !fresh,
        })
    }
}

/// A sink that blocks every publish until released (a slow broker).
#[derive(Debug)]
pub struct StallingSink {
    pub inner: Arc<MemoryHub>,
    pub started: tokio::sync::Notify,
    pub release: tokio::sync::Semaphore,
}

impl StallingSink {
    pub fn new() -> Self {
        StallingSink {
            inner: Arc::default(),
            started: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

#[async_trait]
impl OutboxSink for StallingSink {
    async fn publish(&self, record: &OutboxRecord) -> Result<PublishOutcome, SinkError> {
        self.started.notify_one();
        let permit = self.release.acquire().await.expect("semaphore open");
        permit.forget();
        self.inner.publish(record).await
    }
}

/// Logs to the test output (`RUST_LOG=promhub_outbox=debug` for details).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
