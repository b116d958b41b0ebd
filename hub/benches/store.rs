//! Store throughput: durable appends through `StoreWriter` with many
//! appenders in flight (the hub's publish path minus the network), and group
//! progress commits. Prints the mean group-commit size next to criterion's
//! rate. Data lives under the target dir (a real disk, never tmpfs), so every
//! commit pays a real fsync.
//!
//! `cargo bench -p promhub-hub --bench store`
//!
//! `PROMHUB_BENCH_STORE=mongodb` runs the same cases on the MongoDB store:
//! against `PROMHUB_BENCH_MONGO_URI` (`mongodb://HOST:PORT`, one fresh
//! database per case) when set, else against a FerretDB the bench starts
//! (see `store::mongo::test_server`). The SQLite-only full-sync cases are
//! left out there, and the read cases use a smaller log
//! (`PROMHUB_BENCH_READ_EVENTS`, default 100,000 on SQLite, 10,000 on
//! MongoDB): FerretDB scans the whole collection for every query.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use promhub_core::frames::{Event, Millis, Payload};
use promhub_core::{Pattern, Topic};
use promhub_hub::store::mongo::test_server::FerretDb;
use promhub_hub::store::mongo::{MongoOptions, MongoStore};
use promhub_hub::store::sqlite::{SqliteOptions, SqliteStore};
use promhub_hub::store::writer::StoreWriter;
use promhub_hub::store::{
    BlockingCommit, CommitBatch, CommitOutcome, DeadLetter, GroupKey, GroupProgress, GroupRecord,
    LatestCursor, LatestPage, NewEvent, PageLimits, RetentionPass, RetentionPolicy, Store,
    StoreError,
};
use serde_json::value::RawValue;

/// Commits and what they carried, to report the mean batch size.
#[derive(Debug, Default)]
struct Counts {
    commits: AtomicU64,
    events: AtomicU64,
    progress: AtomicU64,
}

impl Counts {
    fn add(&self, batch: &CommitBatch) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.events
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        self.progress
            .fetch_add(batch.progress.len() as u64, Ordering::Relaxed);
    }
}

/// Counts the commits of a store (on whichever path the writer commits).
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Store>,
    counts: Arc<Counts>,
}

impl Counting {
    fn take(&self) -> (u64, u64, u64) {
        (
            self.counts.commits.swap(0, Ordering::Relaxed),
            self.counts.events.swap(0, Ordering::Relaxed),
            self.counts.progress.swap(0, Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
struct CountingBlocking {
    inner: Arc<dyn BlockingCommit>,
    counts: Arc<Counts>,
}

impl BlockingCommit for CountingBlocking {
    fn commit_blocking(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
        self.counts.add(&batch);
        self.inner.commit_blocking(batch)
    }
}

#[async_trait]
impl Store for Counting {
    async fn commit(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
        self.counts.add(&batch);
        self.inner.commit(batch).await
    }
    fn blocking(&self) -> Option<Arc<dyn BlockingCommit>> {
        self.inner.blocking().map(|inner| {
            Arc::new(CountingBlocking {
                inner,
                counts: Arc::clone(&self.counts),
            }) as Arc<dyn BlockingCommit>
        })
    }
    async fn read_after_bounded(
        &self,
        after: u64,
        pattern: Option<&Pattern>,
        limit: usize,
        max_bytes: usize,
        scan_limit: usize,
    ) -> Result<(Vec<Event>, u64), StoreError> {
        self.inner
            .read_after_bounded(after, pattern, limit, max_bytes, scan_limit)
            .await
    }
    async fn events_by_seq(&self, seqs: &[u64]) -> Result<Vec<Event>, StoreError> {
        self.inner.events_by_seq(seqs).await
    }
    async fn groups_page(
        &self,
        after: Option<&GroupKey>,
        limit: usize,
    ) -> Result<Vec<GroupRecord>, StoreError> {
        self.inner.groups_page(after, limit).await
    }
    async fn group_count(&self) -> Result<u64, StoreError> {
        self.inner.group_count().await
    }
    async fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.inner.get(seq).await
    }
    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_seq().await
    }
    async fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        self.inner.first_seq().await
    }
    async fn latest_by_key_page(
        &self,
        pattern: &Pattern,
        after: Option<&LatestCursor>,
        limits: PageLimits,
    ) -> Result<LatestPage, StoreError> {
        self.inner.latest_by_key_page(pattern, after, limits).await
    }
    async fn latest_for_key(&self, topic: &Topic, key: &str) -> Result<Option<Event>, StoreError> {
        self.inner.latest_for_key(topic, key).await
    }
    async fn load_group(&self, key: &GroupKey) -> Result<Option<GroupRecord>, StoreError> {
        self.inner.load_group(key).await
    }
    async fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.inner.groups().await
    }
    async fn dead_letters(
        &self,
        key: &GroupKey,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(key, after_seq, limit).await
    }
    async fn dead_letter_count(&self, key: &GroupKey) -> Result<u64, StoreError> {
        self.inner.dead_letter_count(key).await
    }
    async fn count_after(&self, after: u64) -> Result<u64, StoreError> {
        self.inner.count_after(after).await
    }
    async fn count_matching_after(&self, pattern: &Pattern, after: u64) -> Result<u64, StoreError> {
        self.inner.count_matching_after(pattern, after).await
    }
    async fn first_matching_after(
        &self,
        pattern: &Pattern,
        after: u64,
    ) -> Result<Option<Event>, StoreError> {
        self.inner.first_matching_after(pattern, after).await
    }
    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now: Millis,
        from: Option<&str>,
        limit: usize,
    ) -> Result<RetentionPass, StoreError> {
        self.inner.apply_retention(policy, now, from, limit).await
    }
    async fn count_present(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        self.inner.count_present(seqs).await
    }
    async fn removed_since(&self, pattern: &Pattern, from: u64) -> Result<Option<u64>, StoreError> {
        self.inner.removed_since(pattern, from).await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

const IN_FLIGHT: usize = 256;
const TOPICS: usize = 16;

fn payload_256() -> Payload {
    // A JSON string of 254 characters + quotes = 256 bytes.
    let text = format!("\"{}\"", "x".repeat(254));
    RawValue::from_string(text).expect("valid JSON")
}

#[derive(Clone, Copy)]
enum Shape {
    /// Hub-assigned id, no key: the cheapest stored event.
    Plain,
    /// Publisher id (de-duplicated) and one of this many keys
    /// (latest-by-key upsert).
    KeyedDedup { keys: u64 },
}

const KEYS: u64 = 10_000;

fn new_event(topics: &[Topic], payload: &Payload, n: u64, shape: Shape) -> NewEvent {
    let (client_id, key) = match shape {
        Shape::Plain => (false, None),
        Shape::KeyedDedup { keys } => (true, Some(format!("key-{}", n % keys))),
    };
    NewEvent {
        id: uuid::Uuid::now_v7().to_string(),
        client_id,
        topic: topics[n as usize % topics.len()].clone(),
        ts: 1_700_000_000_000 + n,
        key,
        payload: payload.clone(),
        headers: None,
        tags: None,
        caused_by: None,
        sid: None,
    }
}

/// Which store the bench measures.
enum Backend {
    Sqlite,
    /// MongoDB at `base_uri` (no database); `_server` is the FerretDB the
    /// bench started, if any.
    Mongo {
        base_uri: String,
        _server: Option<FerretDb>,
    },
}

impl Backend {
    fn from_env() -> Backend {
        match std::env::var("PROMHUB_BENCH_STORE").as_deref() {
            Err(_) | Ok("" | "sqlite" | "embedded") => Backend::Sqlite,
            Ok("mongodb") => match std::env::var("PROMHUB_BENCH_MONGO_URI") {
                Ok(uri) => Backend::Mongo {
                    base_uri: uri.trim_end_matches('/').to_owned(),
                    _server: None,
                },
                Err(_) => {
                    let server = FerretDb::start().expect("start FerretDB");
                    Backend::Mongo {
                        base_uri: format!("mongodb://127.0.0.1:{}", server.port()),
                        _server: Some(server),
                    }
                }
            },
            Ok(other) => panic!("PROMHUB_BENCH_STORE must be sqlite or mongodb, not {other:?}"),
        }
    }

    fn is_sqlite(&self) -> bool {
        matches!(self, Backend::Sqlite)
    }

    fn read_events(&self) -> u64 {
        let default = if self.is_sqlite() { 100_000 } else { 10_000 };
        std::env::var("PROMHUB_BENCH_READ_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn label(&self) -> &'static str {
        if self.is_sqlite() {
            "sqlite"
        } else {
            "mongodb"
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    counting: Arc<Counting>,
    writer: StoreWriter,
}

fn fixture(runtime: &tokio::runtime::Runtime, backend: &Backend) -> Fixture {
    static DATABASES: AtomicU64 = AtomicU64::new(0);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let store: Arc<dyn Store> = match backend {
        Backend::Sqlite => {
            Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).expect("open store"))
        }
        Backend::Mongo { base_uri, .. } => {
            let database = format!(
                "bench_{}_{}",
                std::process::id(),
                DATABASES.fetch_add(1, Ordering::Relaxed)
            );
            let uri = format!("{base_uri}/{database}");
            Arc::new(
                runtime
                    .block_on(MongoStore::connect_with(&uri, MongoOptions::default()))
                    .expect("connect to MongoDB"),
            )
        }
    };
    let counting = Arc::new(Counting {
        inner: store,
        counts: Arc::default(),
    });
    let writer = runtime.block_on(async {
        let (writer, mut committed) = StoreWriter::new(counting.clone());
        // The fan-out consumer the broker would be: drain as fast as possible.
        tokio::spawn(async move { while committed.recv().await.is_some() {} });
        writer
    });
    Fixture {
        _dir: dir,
        counting,
        writer,
    }
}

/// Runs `total` appends spread over `in_flight` tasks; returns elapsed time.
async fn run_appends(
    writer: &StoreWriter,
    total: u64,
    in_flight: usize,
    shape: Shape,
    next: &Arc<AtomicU64>,
) -> Duration {
    let topics: Arc<Vec<Topic>> = Arc::new(
        (0..TOPICS)
            .map(|i| Topic::parse(&format!("bench.topic{i}")).expect("topic"))
            .collect(),
    );
    let payload = payload_256();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(in_flight);
    let per_task = total.div_ceil(in_flight as u64);
    let mut remaining = total;
    for _ in 0..in_flight {
        let count = per_task.min(remaining);
        remaining -= count;
        let writer = writer.clone();
        let topics = topics.clone();
        let payload = payload.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                let n = next.fetch_add(1, Ordering::Relaxed);
                writer
                    .append(new_event(&topics, &payload, n, shape))
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("appender task");
    }
    start.elapsed()
}

fn report(name: &str, counting: &Counting) {
    let (commits, events, progress) = counting.take();
    if commits > 0 {
        println!(
            "{name}: {commits} commits, mean batch {:.1} events + {:.1} progress",
            events as f64 / commits as f64,
            progress as f64 / commits as f64
        );
    }
}

fn appends(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = Backend::from_env();
    let mut group = c.benchmark_group(format!("store_append/{}", backend.label()));
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(6));
    for (name, in_flight, shape) in [
        ("plain_256_inflight", IN_FLIGHT, Shape::Plain),
        (
            "keyed_dedup_256_inflight",
            IN_FLIGHT,
            Shape::KeyedDedup { keys: KEYS },
        ),
        ("plain_1_inflight", 1, Shape::Plain),
        // More publishers make bigger group commits on a slow disk.
        ("plain_1024_inflight", 4 * IN_FLIGHT, Shape::Plain),
    ] {
        let f = fixture(&runtime, &backend);
        let next = Arc::new(AtomicU64::new(0));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(run_appends(&f.writer, iters, in_flight, shape, &next))
            })
        });
        report(name, &f.counting);
    }
    group.finish();
}

fn progress(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = Backend::from_env();
    let mut group = c.benchmark_group(format!("store_progress/{}", backend.label()));
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let f = fixture(&runtime, &backend);
    let cursor = Arc::new(AtomicU64::new(0));
    // 256 in flight over 64 groups: each request moves one group's cursor and
    // marks one event above it done (an out-of-order ack).
    group.bench_function("progress_256_inflight_64_groups", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                let per_task = iters.div_ceil(IN_FLIGHT as u64);
                let mut remaining = iters;
                let mut tasks = Vec::new();
                for t in 0..IN_FLIGHT {
                    let count = per_task.min(remaining);
                    remaining -= count;
                    let writer = f.writer.clone();
                    let cursor = cursor.clone();
                    let key = GroupKey {
                        pattern: "bench.**".to_owned(),
                        group: format!("g{}", t % 64),
                    };
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..count {
                            let c = cursor.fetch_add(1, Ordering::Relaxed);
                            writer
                                .record_progress(GroupProgress {
                                    key: key.clone(),
                                    cursor: c,
                                    done_above: vec![c + 2],
                                    attempt_changes: Vec::new(),
                                })
                                .await
                                .expect("progress");
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("progress task");
                }
                start.elapsed()
            })
        })
    });
    report("progress_256_inflight_64_groups", &f.counting);
    group.finish();
}

/// Reads against a log of keyed events on 16 topics (100,000 by default).
fn reads(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = Backend::from_env();
    let f = fixture(&runtime, &backend);
    let next = Arc::new(AtomicU64::new(0));
    let total = backend.read_events();
    let keys = KEYS.min(total);
    runtime.block_on(run_appends(
        &f.writer,
        total,
        IN_FLIGHT,
        Shape::KeyedDedup { keys },
        &next,
    ));
    let store: Arc<dyn Store> = f.counting.clone();
    let mut group = c.benchmark_group(format!("store_read/{}", backend.label()));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    const PAGE: usize = 500;
    group.throughput(Throughput::Elements(PAGE as u64));
    let cases = [
        ("read_after_concrete_topic", "bench.topic3"),
        ("read_after_wildcard_all_match", "bench.*"),
        // Sparse: scans 16 rows per match.
        ("read_after_wildcard_1_in_16", "*.topic3"),
    ];
    for (name, pattern) in cases {
        let pattern = Pattern::parse(pattern).expect("pattern");
        group.bench_function(name, |b| {
            let mut after = 0u64;
            b.iter(|| {
                let (events, upto) = runtime
                    .block_on(store.read_after(after, Some(&pattern), PAGE, PAGE * 16 + 16))
                    .expect("read_after");
                // Page through the log, starting over at its end.
                after = if events.len() < PAGE { 0 } else { upto };
                assert!(events.len() <= PAGE);
                events.len()
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    let snapshot = Pattern::parse("bench.*").expect("pattern");
    group.bench_function(format!("latest_by_key_{keys}_keys"), |b| {
        b.iter(|| {
            let events = runtime
                .block_on(store.latest_by_key(&snapshot))
                .expect("latest_by_key");
            assert_eq!(events.len() as u64, keys);
            events.len()
        })
    });
    group.finish();
}

criterion_group!(benches, appends, progress, reads);
criterion_main!(benches);
