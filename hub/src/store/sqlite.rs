//! The embedded backend: one SQLite file (`promhub.db`) in the data dir.
//!
//! One dedicated OS thread owns the only write connection and turns every
//! [`CommitBatch`] into one transaction. A second thread then fsyncs the WAL
//! (one fsync covers every transaction applied before it started), so the
//! writer applies the next batch while the previous one syncs; a commit is
//! reported durable only after its fsync, and reads never return events past
//! the durable seq. (`pipelined_sync: false` makes SQLite sync inside each
//! commit instead, `synchronous=FULL`.) Either way a commit that returned
//! survives a crash. Reads run on a small pool of read-only connections via
//! `spawn_blocking`; WAL lets them proceed while the writer commits.
//!
//! `seq` comes from a counter row in `meta`, read inside each write
//! transaction, so it never goes backwards or gets reused even if retention
//! later deletes the newest events, and it stays right even if another
//! process opened the same file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use promhub_core::frames::{Event, Millis};
use promhub_core::{Pattern, Topic};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, oneshot};

mod schema;
mod wal;
mod writer;

use self::schema::migrate;
use self::wal::{Checkpointer, SyncStage, Syncer, WalBound, open_wal, wal_path};
use self::writer::SqliteWriter;
use super::topic_filter::{TopicFilter, literal_prefix};
use super::{
    CommitBatch, CommitOutcome, DeadLetter, GroupKey, GroupRecord, LatestCursor, LatestPage,
    PageLimits, PendingCommit, RetentionPass, RetentionPolicy, Store, StoreError, event_bytes,
};

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "promhub.db";

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// A publisher's `opts.id` seen within this window is a duplicate.
    pub dedup_window: Duration,
    /// Read connections kept open (and the bound on concurrent reads).
    pub read_connections: usize,
    /// Page cache per connection, in KiB.
    pub cache_size_kib: u32,
    /// How long a connection waits on a lock held by another one.
    pub busy_timeout: Duration,
    /// Expired de-duplication entries deleted per commit at least (more when
    /// the batch itself adds many), so pruning keeps up without ever making
    /// one commit slow.
    pub dedup_prune_per_commit: usize,
    /// Memory-map this much of the file for reads (0 = off).
    pub mmap_size: u64,
    /// WAL pages after which a commit also checkpoints (copies the WAL into
    /// the database file). Larger means fewer, bigger checkpoints: a page
    /// changed by many commits is copied once. Used when
    /// `checkpoint_interval` is zero; otherwise a commit checkpoints only
    /// once the WAL passes `wal_limit_bytes`.
    pub wal_autocheckpoint_pages: u32,
    /// Checkpoint from a separate thread and connection this often
    /// (`PRAGMA wal_checkpoint(PASSIVE)`, which never blocks the writer)
    /// instead of inside a commit: an in-commit checkpoint stalls every
    /// waiting PUBACK for ~10 ms several times a second at a few thousand
    /// commits/s (measured: p99 publish-to-deliver 10.8 ms with it, 1.2 ms
    /// without). Zero = SQLite's automatic in-commit checkpoints.
    pub checkpoint_interval: Duration,
    /// Sync each commit's WAL on a separate thread while the writer applies
    /// the next batch (`synchronous=NORMAL` + our own fsync of the WAL; a
    /// commit counts as durable only after that fsync). `false` uses
    /// `synchronous=FULL`: the writer waits for every sync itself.
    pub pipelined_sync: bool,
    /// The WAL file's bound: past it a checkpoint truncates it to zero
    /// bytes (also SQLite's `journal_size_limit`). Recovering from a full
    /// disk needs about this much free space (see `wal.rs`).
    pub wal_limit_bytes: u64,
}

/// Default [`SqliteOptions::wal_limit_bytes`].
pub const DEFAULT_WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            dedup_window: Duration::from_secs(120),
            read_connections: 4,
            cache_size_kib: 64 * 1024,
            busy_timeout: Duration::from_secs(5),
            dedup_prune_per_commit: 512,
            mmap_size: 256 * 1024 * 1024,
            wal_autocheckpoint_pages: 1000,
            checkpoint_interval: Duration::from_millis(200),
            pipelined_sync: true,
            wal_limit_bytes: DEFAULT_WAL_LIMIT_BYTES,
        }
    }
}

/// The embedded SQLite [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    closed: AtomicBool,
    writer: Mutex<Option<WriterThread>>,
    /// Idle read connections; the semaphore bounds how many are in use.
    idle_readers: Mutex<Vec<Connection>>,
    read_permits: Semaphore,
    /// Highest seq known to be synced; reads never look past it, so nothing
    /// that a crash could still take back is ever delivered.
    durable_seq: Arc<AtomicU64>,
    /// Held by a test to keep the syncer from syncing.
    #[cfg(test)]
    sync_pause: Arc<Mutex<()>>,
}

#[derive(Debug)]
struct WriterThread {
    commands: mpsc::Sender<WriteCommand>,
    thread: JoinHandle<()>,
    /// Dropping it stops the checkpointer thread.
    checkpointer: Option<Checkpointer>,
}

type AppliedReply = oneshot::Sender<Result<CommitOutcome, StoreError>>;
type DurableReply = oneshot::Sender<Result<(), StoreError>>;

#[derive(Debug)]
enum WriteCommand {
    Commit(CommitBatch, AppliedReply, DurableReply),
    Retain {
        policy: RetentionPolicy,
        now: Millis,
        from: Option<String>,
        limit: usize,
        reply: oneshot::Sender<Result<RetentionPass, StoreError>>,
    },
}

impl SqliteStore {
    /// Opens (creating if needed) `promhub.db` in `dir` and starts the writer
    /// thread. Blocking: call it at start-up, not from a busy async task.
    /// On a full disk the error is [`StoreError::DiskFull`], naming `dir`.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        Self::open_inner(dir, options).map_err(|e| {
            let (StoreError::DiskFull(cause) | StoreError::Backend(cause)) = &e else {
                return e;
            };
            if matches!(e, StoreError::DiskFull(_)) || disk_is_full(dir) {
                StoreError::DiskFull(format!(
                    "no space left for the store in {} ({cause}); free some space and start again",
                    dir.display()
                ))
            } else {
                e
            }
        })
    }

    fn open_inner(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let dir_lock = lock_data_dir(dir)?;
        let path = dir.join(DB_FILE);
        let conn = open_write_connection(&path, &options)?;
        let last_seq: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'last_seq'",
                [],
                |row| row.get(0),
            )
            .map_err(backend)?;
        // Whatever the file holds now is durable once synced (a previous run
        // may have died between a commit and its sync).
        let wal = open_wal(&path)?;
        wal.sync_data().map_err(|e| {
            StoreError::Backend(format!("cannot sync {}: {e}", wal_path(&path).display()))
        })?;
        let durable_seq = Arc::new(AtomicU64::new(from_sql_int(last_seq)));
        let failed = Arc::new(AtomicBool::new(false));
        let sync_pause = Arc::new(Mutex::new(()));
        let sync = if options.pipelined_sync {
            SyncStage::Thread(Syncer::start(
                wal,
                Arc::clone(&durable_seq),
                Arc::clone(&failed),
                Arc::clone(&sync_pause),
            )?)
        } else {
            SyncStage::Inline
        };
        let (commands, receiver) = mpsc::channel();
        let wal_bound = Arc::new(WalBound::new(&path, options.wal_limit_bytes));
        let checkpoints_inline = options.checkpoint_interval.is_zero();
        let writer = SqliteWriter {
            conn,
            dedup_window_ms: duration_millis(options.dedup_window),
            prune_per_commit: options.dedup_prune_per_commit.max(1),
            sync,
            durable_seq: Arc::clone(&durable_seq),
            failed,
            wal_bound: Arc::clone(&wal_bound),
            checkpoints_inline,
            dir_lock,
        };
        let thread = std::thread::Builder::new()
            .name("promhub-sqlite-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        let checkpointer = if checkpoints_inline {
            None
        } else {
            Some(Checkpointer::start(&path, &options, wal_bound)?)
        };
        let read_permits = Semaphore::new(options.read_connections.max(1));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                options,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(WriterThread {
                    commands,
                    thread,
                    checkpointer,
                })),
                idle_readers: Mutex::new(Vec::new()),
                read_permits,
                durable_seq,
                #[cfg(test)]
                sync_pause,
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Runs `read` on a pooled read-only connection inside one read
    /// transaction (one consistent snapshot), off the async threads. `read`
    /// gets the durable seq: every event up to it is in the snapshot, and it
    /// must not return events after it.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<T, StoreError> + Send + 'static,
    {
        self.check_open()?;
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            inner.check_open()?;
            let idle = lock(&inner.idle_readers).pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => open_read_connection(&inner.path, &inner.options)?,
            };
            let result = (|| {
                // Loaded before the snapshot starts, so the snapshot holds
                // every event up to it.
                let durable = seq_to_sql(inner.durable_seq.load(Ordering::Acquire));
                let tx = conn.transaction().map_err(backend)?;
                let value = read(&tx, durable)?;
                tx.finish().map_err(backend)?;
                Ok(value)
            })();
            if !inner.closed.load(Ordering::Acquire) {
                lock(&inner.idle_readers).push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the
/// data inside (a list of idle connections, a channel) is still valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn backend(e: rusqlite::Error) -> StoreError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        StoreError::DiskFull(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// Whether the file system holding `dir` has no room for a small write
/// (to explain an open that failed with a vague "disk I/O error").
fn disk_is_full(dir: &Path) -> bool {
    use std::io::Write;
    let probe = dir.join(".promhub-space-probe");
    let result = std::fs::File::create(&probe).and_then(|mut file| {
        file.write_all(&[0; 64 * 1024])?;
        file.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::StorageFull)
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_millis)
        .unwrap_or(0)
}

// SQLite integers are i64. No `seq` can exceed i64::MAX, so a larger seq or
// cursor (say a client's absurd `from`) is clamped, which keeps its meaning
// ("after everything"). Other u64 values (a publisher's `ts`) are stored
// bit-for-bit so any value round-trips.
fn seq_to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn bits_to_sql(v: u64) -> i64 {
    v as i64
}

fn from_sql_int(v: i64) -> u64 {
    v as u64
}

fn apply_common_pragmas(conn: &Connection, options: &SqliteOptions) -> Result<(), StoreError> {
    conn.busy_timeout(options.busy_timeout).map_err(backend)?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_size_kib))
        .map_err(backend)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

fn open_write_connection(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    apply_common_pragmas(&conn, options)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "cannot switch {} to WAL mode (got {mode})",
            path.display()
        )));
    }
    // PUBACK is sent only once a commit is synced. FULL: SQLite syncs the WAL
    // in every commit. NORMAL (pipelined): SQLite syncs only around
    // checkpoints and the syncer thread syncs the WAL after each commit.
    let synchronous = if options.pipelined_sync {
        "NORMAL"
    } else {
        "FULL"
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(backend)?;
    // With a checkpointer thread, SQLite checkpoints inside a commit only
    // when the WAL passes its bound between two rounds (a burst): the WAL
    // then restarts (and is cut to `journal_size_limit`) instead of growing.
    let page_size: i64 = conn
        .pragma_query_value(None, "page_size", |row| row.get(0))
        .map_err(backend)?;
    let bound_pages = u32::try_from(options.wal_limit_bytes / from_sql_int(page_size).max(512))
        .unwrap_or(u32::MAX);
    let autocheckpoint_pages = if options.checkpoint_interval.is_zero() {
        options.wal_autocheckpoint_pages.min(bound_pages)
    } else {
        bound_pages
    }
    .max(1);
    conn.pragma_update(None, "wal_autocheckpoint", autocheckpoint_pages)
        .map_err(backend)?;
    // Keep the WAL file from staying huge after a burst: cut back to the
    // bound whenever SQLite restarts it (the checkpointer truncates it when
    // it grows past the bound anyway, see `wal.rs`).
    conn.pragma_update(
        None,
        "journal_size_limit",
        i64::try_from(options.wal_limit_bytes).unwrap_or(i64::MAX),
    )
    .map_err(backend)?;
    migrate(&conn)?;
    Ok(conn)
}

fn open_read_connection(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    apply_common_pragmas(&conn, options)?;
    if options.mmap_size > 0 {
        conn.pragma_update(None, "mmap_size", seq_to_sql(options.mmap_size))
            .map_err(backend)?;
    }
    Ok(conn)
}

/// File locked (an OS advisory lock, released when the process dies) while
/// a store has the data dir open.
pub const LOCK_FILE: &str = "promhub.lock";

/// Takes the data dir's lock: two hubs on one folder would each hand out
/// seqs and never see the other's events live, so the second is refused.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "data dir {} is in use by another promhub hub (or store); stop it or pick another --data",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Backend("the writer thread stopped".into())
}

fn from_json<T: serde::de::DeserializeOwned>(
    text: Option<String>,
    seq: u64,
    column: &str,
) -> Result<Option<T>, StoreError> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::Corrupt(format!("event {seq}: bad {column}: {e}")))
    })
    .transpose()
}

/// The topics `pattern` matches that have an event after `after` (from the
/// `topics` table: one row per topic, never the log).
fn topics_matching(
    tx: &rusqlite::Transaction<'_>,
    pattern: &Pattern,
    after: i64,
) -> Result<Vec<String>, StoreError> {
    if let Some(topic) = pattern.as_topic() {
        return Ok(vec![topic.as_str().to_owned()]);
    }
    let mut filter = TopicFilter::new(pattern);
    let mut found = Vec::new();
    let mut keep = |topic: String| {
        if filter.matches(&topic) {
            found.push(topic);
        }
    };
    match literal_prefix(pattern) {
        Some(prefix) => {
            // The prefix itself, and every topic under `prefix.` ('/' sorts
            // right after '.').
            let mut stmt = tx
                .prepare_cached(
                    "SELECT topic FROM topics WHERE last_seq > ?1
                     AND (topic = ?2 OR (topic > ?3 AND topic < ?4))",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![after, prefix, format!("{prefix}."), format!("{prefix}/")],
                    |row| row.get::<_, String>(0),
                )
                .map_err(backend)?;
            for topic in rows {
                keep(topic.map_err(backend)?);
            }
        }
        None => {
            let mut stmt = tx
                .prepare_cached("SELECT topic FROM topics WHERE last_seq > ?1")
                .map_err(backend)?;
            let rows = stmt
                .query_map([after], |row| row.get::<_, String>(0))
                .map_err(backend)?;
            for topic in rows {
                keep(topic.map_err(backend)?);
            }
        }
    }
    Ok(found)
}

/// How many events of `topic` have `seq <= upto`: the ordinal of the last
/// one (an index lookup on `(topic, seq)`).
fn topic_ordinal(
    tx: &rusqlite::Transaction<'_>,
    topic: &str,
    upto: i64,
) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "SELECT tord FROM events WHERE topic = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row(params![topic, upto], |row| row.get(0))
            .optional()
    })
    .map(Option::unwrap_or_default)
    .map_err(backend)
}

/// The group key in columns 0 (pattern) and 1 (group) of a row.
fn group_key_of(row: &Row<'_>) -> Result<GroupKey, StoreError> {
    Ok(GroupKey {
        pattern: row.get(0).map_err(backend)?,
        group: row.get(1).map_err(backend)?,
    })
}

/// A group's record: its cursor with the done marks and recorded attempts
/// above it.
fn group_record_in(
    tx: &rusqlite::Transaction<'_>,
    key: GroupKey,
    cursor: i64,
) -> Result<GroupRecord, StoreError> {
    let mut stmt = tx
        .prepare_cached("SELECT seq FROM group_done WHERE pattern = ?1 AND grp = ?2 ORDER BY seq")
        .map_err(backend)?;
    let done_above = stmt
        .query_map(params![key.pattern, key.group], |row| row.get::<_, i64>(0))
        .map_err(backend)?
        .map(|r| r.map(from_sql_int).map_err(backend))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT seq, attempts FROM group_attempts
             WHERE pattern = ?1 AND grp = ?2 AND seq > ?3 ORDER BY seq",
        )
        .map_err(backend)?;
    let attempts_above = stmt
        .query_map(params![key.pattern, key.group, cursor], |row| {
            Ok((from_sql_int(row.get(0)?), row.get::<_, u32>(1)?))
        })
        .map_err(backend)?
        .map(|r| r.map_err(backend))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GroupRecord {
        key,
        cursor: from_sql_int(cursor),
        done_above,
        attempts_above,
    })
}

/// `tord` of a topic's first retained event.
fn first_topic_ordinal(
    tx: &rusqlite::Transaction<'_>,
    topic: &str,
) -> Result<Option<i64>, StoreError> {
    tx.prepare_cached("SELECT tord FROM events WHERE topic = ?1 ORDER BY seq LIMIT 1")
        .and_then(|mut s| s.query_row([topic], |row| row.get(0)).optional())
        .map_err(backend)
}

const EVENT_COLUMNS: &str = "seq, id, topic, ts, key, payload, headers, tags, caused_by, sid";
/// The same columns qualified with the `e` alias, for joins.
const EVENT_COLUMNS_E: &str =
    "e.seq, e.id, e.topic, e.ts, e.key, e.payload, e.headers, e.tags, e.caused_by, e.sid";
const TOPIC_COLUMN: usize = 2;
/// Columns in [`EVENT_COLUMNS_E`] (extra columns of a query follow them).
const EVENT_COLUMN_COUNT: usize = 10;

/// Decodes a row selected with [`EVENT_COLUMNS`].
fn event_from_row(row: &Row<'_>) -> Result<Event, StoreError> {
    let seq = from_sql_int(row.get::<_, i64>(0).map_err(backend)?);
    let topic_text: String = row.get(TOPIC_COLUMN).map_err(backend)?;
    let topic = Topic::parse(&topic_text)
        .map_err(|e| StoreError::Corrupt(format!("event {seq}: bad topic: {e}")))?;
    let payload: String = row.get(5).map_err(backend)?;
    let payload = RawValue::from_string(payload)
        .map_err(|e| StoreError::Corrupt(format!("event {seq}: bad payload: {e}")))?;
    Ok(Event {
        id: row.get(1).map_err(backend)?,
        seq,
        topic,
        ts: from_sql_int(row.get(3).map_err(backend)?),
        key: row.get(4).map_err(backend)?,
        payload,
        headers: from_json(row.get(6).map_err(backend)?, seq, "headers")?,
        tags: from_json(row.get(7).map_err(backend)?, seq, "tags")?,
        caused_by: from_json(row.get(8).map_err(backend)?, seq, "caused_by")?,
        sid: row.get(9).map_err(backend)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
        let pending = self.commit_pipelined(batch).await?;
        pending.durable.await?;
        Ok(pending.outcome)
    }

    async fn commit_pipelined(&self, batch: CommitBatch) -> Result<PendingCommit, StoreError> {
        self.check_open()?;
        let (applied_tx, applied) = oneshot::channel();
        let (durable_tx, durable) = oneshot::channel();
        {
            let writer = lock(&self.inner.writer);
            let writer = writer.as_ref().ok_or(StoreError::Closed)?;
            writer
                .commands
                .send(WriteCommand::Commit(batch, applied_tx, durable_tx))
                .map_err(|_| writer_stopped())?;
        }
        let outcome = applied.await.map_err(|_| writer_stopped())??;
        Ok(PendingCommit {
            outcome,
            durable: Box::pin(async move { durable.await.map_err(|_| writer_stopped())? }),
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
        if limit == 0 {
            self.check_open()?;
            return Ok((Vec::new(), after));
        }
        let pattern = pattern.cloned();
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        // A scan looks at one row at least, so every call makes progress.
        let scan_limit = scan_limit.max(1);
        self.read(move |tx, durable| {
            let after_sql = seq_to_sql(after);
            let mut events = Vec::new();
            let topic = pattern.as_ref().and_then(Pattern::as_topic);
            match (&pattern, &topic) {
                (None, _) | (Some(_), Some(_)) => {
                    let mut stmt;
                    let mut rows = match &topic {
                        Some(topic) => {
                            stmt = tx
                                .prepare_cached(&format!(
                                    "SELECT {EVENT_COLUMNS} FROM events
                                     WHERE topic = ?1 AND seq > ?2 AND seq <= ?3
                                     ORDER BY seq LIMIT ?4"
                                ))
                                .map_err(backend)?;
                            stmt.query(params![topic.as_str(), after_sql, durable, limit_sql])
                        }
                        None => {
                            stmt = tx
                                .prepare_cached(&format!(
                                    "SELECT {EVENT_COLUMNS} FROM events
                                     WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
                                ))
                                .map_err(backend)?;
                            stmt.query(params![after_sql, durable, limit_sql])
                        }
                    }
                    .map_err(backend)?;
                    let mut bytes = 0usize;
                    while let Some(row) = rows.next().map_err(backend)? {
                        let event = event_from_row(row)?;
                        bytes = bytes.saturating_add(event_bytes(&event));
                        events.push(event);
                        if bytes >= max_bytes {
                            break;
                        }
                    }
                    if events.len() == limit || bytes >= max_bytes {
                        let last = events.last().map_or(after, |e| e.seq);
                        return Ok((events, last));
                    }
                }
                (Some(pattern), None) => {
                    let mut filter = TopicFilter::new(pattern);
                    let mut stmt = tx
                        .prepare_cached(&format!(
                            "SELECT {EVENT_COLUMNS} FROM events
                             WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
                        ))
                        .map_err(backend)?;
                    let mut rows = stmt
                        .query(params![
                            after_sql,
                            durable,
                            i64::try_from(scan_limit).unwrap_or(i64::MAX)
                        ])
                        .map_err(backend)?;
                    let mut examined = 0usize;
                    let mut last_examined = after;
                    let mut bytes = 0usize;
                    while let Some(row) = rows.next().map_err(backend)? {
                        examined += 1;
                        last_examined = from_sql_int(row.get::<_, i64>(0).map_err(backend)?);
                        // Columns are read lazily: a non-matching event's
                        // payload is never loaded.
                        let topic = row
                            .get_ref(TOPIC_COLUMN)
                            .and_then(|v| v.as_str().map_err(Into::into))
                            .map_err(backend)?;
                        if filter.matches(topic) {
                            let event = event_from_row(row)?;
                            bytes = bytes.saturating_add(event_bytes(&event));
                            events.push(event);
                            if events.len() == limit || bytes >= max_bytes {
                                return Ok((events, last_examined));
                            }
                        }
                    }
                    if examined == scan_limit {
                        return Ok((events, last_examined));
                    }
                }
            }
            // The scan reached the durable end of the log: everything up to
            // it has been examined.
            Ok((events, from_sql_int(durable).max(after)))
        })
        .await
    }

    async fn events_by_seq(&self, seqs: &[u64]) -> Result<Vec<Event>, StoreError> {
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        self.read(move |tx, durable| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1 AND seq <= ?2"
                ))
                .map_err(backend)?;
            let mut events = Vec::with_capacity(seqs.len());
            for seq in seqs {
                let mut rows = stmt
                    .query(params![seq_to_sql(seq), durable])
                    .map_err(backend)?;
                if let Some(row) = rows.next().map_err(backend)? {
                    events.push(event_from_row(row)?);
                }
            }
            Ok(events)
        })
        .await
    }

    async fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.read(move |tx, durable| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1 AND seq <= ?2"
                ))
                .map_err(backend)?;
            let mut rows = stmt
                .query(params![seq_to_sql(seq), durable])
                .map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => Ok(Some(event_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.check_open()?;
        Ok(self.inner.durable_seq.load(Ordering::Acquire))
    }

    async fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        self.read(|tx, durable| {
            tx.prepare_cached("SELECT min(seq) FROM events WHERE seq <= ?1")
                .and_then(|mut s| s.query_row([durable], |row| row.get::<_, Option<i64>>(0)))
                .map(|v| v.map(from_sql_int))
                .map_err(backend)
        })
        .await
    }

    async fn latest_by_key_page(
        &self,
        pattern: &Pattern,
        after: Option<&LatestCursor>,
        limits: PageLimits,
    ) -> Result<LatestPage, StoreError> {
        let pattern = pattern.clone();
        let after = after.cloned();
        self.read(move |tx, durable| {
            // The entries in (topic, key) order from the primary key,
            // narrowed to the topics that can match.
            let mut conditions = Vec::new();
            let mut args: Vec<String> = Vec::new();
            let filter = match (pattern.as_topic(), literal_prefix(&pattern)) {
                (Some(topic), _) => {
                    args.push(topic.as_str().to_owned());
                    conditions.push(format!("l.topic = ?{}", args.len()));
                    false
                }
                (None, Some(prefix)) => {
                    // The prefix itself and every topic below it; others in
                    // that range (`a-b` for `a`) are filtered out.
                    args.push(prefix.clone());
                    conditions.push(format!("l.topic >= ?{}", args.len()));
                    args.push(format!("{prefix}/")); // '/' sorts right after '.'
                    conditions.push(format!("l.topic < ?{}", args.len()));
                    true
                }
                (None, None) => true,
            };
            if let Some(after) = &after {
                args.push(after.topic.clone());
                args.push(after.key.clone());
                conditions.push(format!(
                    "(l.topic, l.key) > (?{}, ?{})",
                    args.len() - 1,
                    args.len()
                ));
            }
            let filter_sql = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            let sql = format!(
                "SELECT {EVENT_COLUMNS_E}, l.topic, l.key FROM latest l JOIN events e ON e.seq = l.seq
                 {filter_sql} ORDER BY l.topic, l.key LIMIT {}",
                limits.scan.max(1)
            );
            let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(args.iter()))
                .map_err(backend)?;
            let mut topic_filter = TopicFilter::new(&pattern);
            let mut page = LatestPage::default();
            let (mut examined, mut bytes) = (0, 0);
            let mut last = None;
            let mut full = false;
            while let Some(row) = rows.next().map_err(backend)? {
                examined += 1;
                let topic: String = row.get(EVENT_COLUMN_COUNT).map_err(backend)?;
                let key: String = row.get(EVENT_COLUMN_COUNT + 1).map_err(backend)?;
                // A key whose newest event is still syncing is left out;
                // that event reaches live subscribers once durable.
                let wanted = row.get::<_, i64>(0).map_err(backend)? <= durable
                    && (!filter || topic_filter.matches(&topic));
                last = Some(LatestCursor { topic, key });
                if wanted {
                    let event = event_from_row(row)?;
                    bytes += event.payload.get().len();
                    page.events.push(event);
                    if page.events.len() >= limits.keys || bytes >= limits.bytes {
                        full = true;
                        break;
                    }
                }
            }
            // More may follow when the page filled up or the scan hit its
            // limit; an empty next page then ends it.
            if full || examined >= limits.scan.max(1) {
                page.next = last;
            }
            Ok(page)
        })
        .await
    }

    async fn latest_for_key(&self, topic: &Topic, key: &str) -> Result<Option<Event>, StoreError> {
        let topic = topic.clone();
        let key = key.to_owned();
        self.read(move |tx, durable| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS_E} FROM latest l JOIN events e ON e.seq = l.seq
                     WHERE l.topic = ?1 AND l.key = ?2 AND e.seq <= ?3"
                ))
                .map_err(backend)?;
            let mut rows = stmt
                .query(params![topic.as_str(), key, durable])
                .map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => Ok(Some(event_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn load_group(&self, key: &GroupKey) -> Result<Option<GroupRecord>, StoreError> {
        let key = key.clone();
        self.read(move |tx, _| {
            let cursor = tx
                .prepare_cached("SELECT cursor FROM groups WHERE pattern = ?1 AND grp = ?2")
                .and_then(|mut s| {
                    s.query_row(params![key.pattern, key.group], |row| row.get::<_, i64>(0))
                        .optional()
                })
                .map_err(backend)?;
            match cursor {
                Some(cursor) => group_record_in(tx, key, cursor).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn groups_page(
        &self,
        after: Option<&GroupKey>,
        limit: usize,
    ) -> Result<Vec<GroupRecord>, StoreError> {
        let after = after.cloned();
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |tx, _| {
            let mut page = Vec::new();
            {
                let mut stmt;
                let mut rows = match &after {
                    // The primary key's order: one index range, whatever
                    // the number of groups.
                    Some(after) => {
                        stmt = tx
                            .prepare_cached(
                                "SELECT pattern, grp, cursor FROM groups
                                 WHERE (pattern, grp) > (?1, ?2)
                                 ORDER BY pattern, grp LIMIT ?3",
                            )
                            .map_err(backend)?;
                        stmt.query(params![after.pattern, after.group, limit_sql])
                    }
                    None => {
                        stmt = tx
                            .prepare_cached(
                                "SELECT pattern, grp, cursor FROM groups
                                 ORDER BY pattern, grp LIMIT ?1",
                            )
                            .map_err(backend)?;
                        stmt.query(params![limit_sql])
                    }
                }
                .map_err(backend)?;
                while let Some(row) = rows.next().map_err(backend)? {
                    page.push((group_key_of(row)?, row.get::<_, i64>(2).map_err(backend)?));
                }
            }
            page.into_iter()
                .map(|(key, cursor)| group_record_in(tx, key, cursor))
                .collect()
        })
        .await
    }

    async fn group_count(&self) -> Result<u64, StoreError> {
        self.read(|tx, _| {
            tx.prepare_cached("SELECT count(*) FROM groups")
                .and_then(|mut s| s.query_row([], |row| row.get::<_, i64>(0)))
                .map(from_sql_int)
                .map_err(backend)
        })
        .await
    }

    async fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.read(|tx, _| {
            let mut records: BTreeMap<GroupKey, GroupRecord> = BTreeMap::new();
            let mut stmt = tx
                .prepare_cached("SELECT pattern, grp, cursor FROM groups")
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let key = group_key_of(row)?;
                let cursor = from_sql_int(row.get(2).map_err(backend)?);
                records.insert(
                    key.clone(),
                    GroupRecord {
                        key,
                        cursor,
                        done_above: Vec::new(),
                        attempts_above: Vec::new(),
                    },
                );
            }
            let mut stmt = tx
                .prepare_cached(
                    "SELECT pattern, grp, seq FROM group_done ORDER BY pattern, grp, seq",
                )
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let key = group_key_of(row)?;
                let seq = from_sql_int(row.get(2).map_err(backend)?);
                // A mark without its group row cannot be written by commit.
                if let Some(record) = records.get_mut(&key) {
                    record.done_above.push(seq);
                }
            }
            let mut stmt = tx
                .prepare_cached(
                    "SELECT pattern, grp, seq, attempts FROM group_attempts
                     ORDER BY pattern, grp, seq",
                )
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let key = group_key_of(row)?;
                let seq = from_sql_int(row.get(2).map_err(backend)?);
                let used: u32 = row.get(3).map_err(backend)?;
                if let Some(record) = records.get_mut(&key).filter(|r| seq > r.cursor) {
                    record.attempts_above.push((seq, used));
                }
            }
            Ok(records.into_values().collect())
        })
        .await
    }

    async fn dead_letters(
        &self,
        key: &GroupKey,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let key = key.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |tx, _| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, event_id, reason, attempts, dead_at FROM dead_letters
                     WHERE pattern = ?1 AND grp = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                )
                .map_err(backend)?;
            let mut rows = stmt
                .query(params![
                    key.pattern,
                    key.group,
                    seq_to_sql(after_seq),
                    limit
                ])
                .map_err(backend)?;
            let mut letters = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                letters.push(DeadLetter {
                    key: key.clone(),
                    seq: from_sql_int(row.get(0).map_err(backend)?),
                    event_id: row.get(1).map_err(backend)?,
                    reason: row.get(2).map_err(backend)?,
                    attempts: row.get(3).map_err(backend)?,
                    dead_at: from_sql_int(row.get::<_, i64>(4).map_err(backend)?),
                });
            }
            Ok(letters)
        })
        .await
    }

    async fn dead_letter_count(&self, key: &GroupKey) -> Result<u64, StoreError> {
        let key = key.clone();
        self.read(move |tx, _| {
            tx.prepare_cached("SELECT count(*) FROM dead_letters WHERE pattern = ?1 AND grp = ?2")
                .and_then(|mut s| {
                    s.query_row(params![key.pattern, key.group], |row| row.get::<_, i64>(0))
                })
                .map(from_sql_int)
                .map_err(backend)
        })
        .await
    }

    async fn count_after(&self, after: u64) -> Result<u64, StoreError> {
        self.read(move |tx, durable| {
            tx.prepare_cached("SELECT count(*) FROM events WHERE seq > ?1 AND seq <= ?2")
                .and_then(|mut s| {
                    s.query_row(params![seq_to_sql(after), durable], |row| {
                        row.get::<_, i64>(0)
                    })
                })
                .map(from_sql_int)
                .map_err(backend)
        })
        .await
    }

    async fn count_present(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        let seqs = seqs.to_vec();
        self.read(move |tx, durable| {
            let mut stmt = tx
                .prepare_cached("SELECT 1 FROM events WHERE seq = ?1 AND seq <= ?2")
                .map_err(backend)?;
            let mut present = 0;
            for seq in seqs {
                if stmt
                    .exists(params![seq_to_sql(seq), durable])
                    .map_err(backend)?
                {
                    present += 1;
                }
            }
            Ok(present)
        })
        .await
    }

    async fn removed_since(&self, pattern: &Pattern, from: u64) -> Result<Option<u64>, StoreError> {
        let pattern = pattern.clone();
        self.read(move |tx, _durable| {
            let from = seq_to_sql(from);
            let mut removed_upto = tx
                .prepare_cached("SELECT removed_upto FROM topics WHERE topic = ?1")
                .map_err(backend)?;
            let mut highest: Option<i64> = None;
            // A topic that lost events at or after `from` had one after it.
            for topic in topics_matching(tx, &pattern, from.saturating_sub(1))? {
                let removed: i64 = removed_upto
                    .query_row([&topic], |row| row.get(0))
                    .optional()
                    .map_err(backend)?
                    .unwrap_or(0);
                if removed >= from {
                    highest = highest.max(Some(removed));
                }
            }
            Ok(highest.map(from_sql_int))
        })
        .await
    }

    async fn count_matching_after(&self, pattern: &Pattern, after: u64) -> Result<u64, StoreError> {
        let pattern = pattern.clone();
        self.read(move |tx, durable| {
            let after = seq_to_sql(after);
            if after >= durable {
                return Ok(0);
            }
            let mut total = 0u64;
            for topic in topics_matching(tx, &pattern, after)? {
                let newer = topic_ordinal(tx, &topic, durable)?;
                if newer == 0 {
                    // Nothing durable in this topic (any more).
                    continue;
                }
                let older = match topic_ordinal(tx, &topic, after)? {
                    // Nothing at or before `after` (never was, or removed by
                    // retention): count from the first retained event.
                    0 => first_topic_ordinal(tx, &topic)?.map_or(0, |first| first - 1),
                    older => older,
                };
                total += from_sql_int((newer - older).max(0));
            }
            Ok(total)
        })
        .await
    }

    async fn first_matching_after(
        &self,
        pattern: &Pattern,
        after: u64,
    ) -> Result<Option<Event>, StoreError> {
        let pattern = pattern.clone();
        self.read(move |tx, durable| {
            let after = seq_to_sql(after);
            let mut first: Option<i64> = None;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq FROM events WHERE topic = ?1 AND seq > ?2 AND seq <= ?3
                     ORDER BY seq LIMIT 1",
                )
                .map_err(backend)?;
            for topic in topics_matching(tx, &pattern, after)? {
                let seq: Option<i64> = stmt
                    .query_row(params![topic, after, durable], |row| row.get(0))
                    .optional()
                    .map_err(backend)?;
                if let Some(seq) = seq {
                    first = Some(first.map_or(seq, |f| f.min(seq)));
                }
            }
            let Some(seq) = first else {
                return Ok(None);
            };
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
                ))
                .map_err(backend)?;
            let mut rows = stmt.query([seq]).map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => Ok(Some(event_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now: Millis,
        from: Option<&str>,
        limit: usize,
    ) -> Result<RetentionPass, StoreError> {
        self.check_open()?;
        if policy.keeps_everything() || limit == 0 {
            return Ok(RetentionPass::default());
        }
        let (reply, removed) = oneshot::channel();
        {
            let writer = lock(&self.inner.writer);
            let writer = writer.as_ref().ok_or(StoreError::Closed)?;
            writer
                .commands
                .send(WriteCommand::Retain {
                    policy: policy.clone(),
                    now,
                    from: from.map(str::to_owned),
                    limit,
                    reply,
                })
                .map_err(|_| writer_stopped())?;
        }
        removed.await.map_err(|_| writer_stopped())?
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let writer = lock(&self.inner.writer).take();
        lock(&self.inner.idle_readers).clear();
        self.inner.read_permits.close();
        if let Some(WriterThread {
            commands,
            thread,
            checkpointer,
        }) = writer
        {
            // Dropping the sender lets the thread finish the queued commits,
            // checkpoint and exit; the checkpointer stops first so the final
            // checkpoint is the writer's.
            drop(commands);
            tokio::task::spawn_blocking(move || {
                let checkpointer = checkpointer.map(Checkpointer::stop).transpose();
                (checkpointer, thread.join())
            })
            .await
            .map_err(|e| StoreError::Backend(format!("close task failed: {e}")))
            .and_then(|(checkpointer, writer)| {
                checkpointer
                    .map_err(|_| StoreError::Backend("the checkpoint thread panicked".into()))?;
                writer.map_err(|_| StoreError::Backend("the writer thread panicked".into()))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use anyhow::{Result, ensure};
    use promhub_core::frames::to_payload;

    use super::*;
    use crate::store::{Appended, NewEvent};

    fn event(id: &str, client_id: bool) -> NewEvent {
        NewEvent {
            id: id.to_owned(),
            client_id,
            topic: Topic::parse("t").unwrap(),
            ts: 1,
            key: None,
            payload: to_payload("p").unwrap(),
            headers: None,
            tags: None,
            caused_by: None,
            sid: None,
        }
    }

    fn count(path: &Path, table: &str) -> Result<i64> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
    }

    #[tokio::test]
    async fn a_data_dir_is_used_by_one_store_at_a_time() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let first = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let refused = SqliteStore::open(dir.path(), SqliteOptions::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        ensure!(
            refused.contains("in use by another promhub hub"),
            "{refused:?}"
        );
        // The refused open touched nothing: the first store still works.
        let appended = first
            .commit(CommitBatch {
                events: vec![event("a", false)],
                ..CommitBatch::default()
            })
            .await?;
        ensure!(appended.events.len() == 1);
        first.close().await?;
        // Closed: the folder is free again (even while `first` is alive).
        let second = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        ensure!(second.last_seq().await? == 1);
        second.close().await?;
        Ok(())
    }

    #[tokio::test]
    async fn expired_dedup_entries_are_pruned_a_bounded_amount_per_commit() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let window = Duration::from_millis(20);
        let store = SqliteStore::open(
            dir.path(),
            SqliteOptions {
                dedup_window: window,
                dedup_prune_per_commit: 2,
                ..SqliteOptions::default()
            },
        )?;
        let events = (0..10).map(|i| event(&format!("c{i}"), true)).collect();
        store
            .commit(CommitBatch {
                events,
                ..CommitBatch::default()
            })
            .await?;
        ensure!(count(store.path(), "dedup")? == 10);
        tokio::time::sleep(window * 3).await;
        let plain = || CommitBatch {
            events: vec![event("hub", false)],
            ..CommitBatch::default()
        };
        store.commit(plain()).await?;
        ensure!(count(store.path(), "dedup")? == 8, "two pruned");
        store.commit(plain()).await?;
        ensure!(count(store.path(), "dedup")? == 6, "two more pruned");
        store.close().await?;
        Ok(())
    }

    // Holding the sync thread's std mutex across awaits is the point: the
    // syncer (another OS thread) must stay blocked while the reads run.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn reads_never_see_commits_that_are_not_durable() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let keyed = |id: &str| {
            let mut e = event(id, false);
            e.key = Some("k".into());
            CommitBatch {
                events: vec![e],
                ..CommitBatch::default()
            }
        };
        store.commit(keyed("first")).await?;
        let topic = Topic::parse("t")?;
        let pending = {
            let _hold = lock(&store.inner.sync_pause);
            let pending = store.commit_pipelined(keyed("second")).await?;
            let Appended::Stored(second) = &pending.outcome.events[0] else {
                anyhow::bail!("stored expected");
            };
            ensure!(second.seq == 2, "seq assigned before the sync");
            let (events, upto) = store.read_after(0, None, 10, 10).await?;
            ensure!(
                events.len() == 1 && events[0].seq == 1 && upto == 1,
                "{events:?}"
            );
            let (events, _) = store
                .read_after(0, Some(&Pattern::parse("*")?), 10, 10)
                .await?;
            ensure!(events.len() == 1);
            ensure!(store.get(2).await?.is_none());
            ensure!(store.last_seq().await? == 1);
            ensure!(store.count_after(0).await? == 1);
            ensure!(store.latest_for_key(&topic, "k").await?.is_none());
            ensure!(store.latest_by_key(&Pattern::parse("t")?).await?.is_empty());
            pending
        };
        pending.durable.await?;
        let (events, upto) = store.read_after(0, None, 10, 10).await?;
        ensure!(events.len() == 2 && upto == 2);
        ensure!(store.last_seq().await? == 2);
        ensure!(store.latest_for_key(&topic, "k").await?.map(|e| e.seq) == Some(2));
        store.close().await?;
        Ok(())
    }

    #[tokio::test]
    async fn unusable_data_dir_is_a_clear_error() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x")?;
        match SqliteStore::open(&file, SqliteOptions::default()) {
            Err(StoreError::Backend(msg)) => ensure!(msg.contains("not-a-dir"), "{msg}"),
            other => anyhow::bail!("expected an error, got {other:?}"),
        }
        // A file that is not a database.
        let bad = dir.path().join("bad");
        std::fs::create_dir(&bad)?;
        std::fs::write(bad.join(DB_FILE), vec![7u8; 8192])?;
        ensure!(SqliteStore::open(&bad, SqliteOptions::default()).is_err());
        Ok(())
    }
}
