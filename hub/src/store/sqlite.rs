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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use promhub_core::frames::{Event, Millis};
use promhub_core::{Pattern, Topic};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, oneshot};

use super::topic_filter::{TopicFilter, literal_prefix};
use super::{
    Appended, CommitBatch, CommitOutcome, DeadLetter, GroupKey, GroupRecord, PendingCommit,
    PrefixWalk, RETENTION_TOPICS_PER_CALL, RetentionPass, RetentionPolicy, Store, StoreError,
    event_bytes,
};

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "promhub.db";

/// Bumped when the schema changes; [`SqliteStore::open`] refuses files
/// written by a newer version instead of misreading them.
const SCHEMA_VERSION: i64 = 3;

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
    /// changed by many commits is copied once. Only used when
    /// `checkpoint_interval` is zero.
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
}

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

/// Thread that checkpoints the WAL on its own connection, off the commit
/// path (see [`SqliteOptions::checkpoint_interval`]).
#[derive(Debug)]
struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    fn start(path: &Path, options: &SqliteOptions) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(options.busy_timeout).map_err(backend)?;
        // The checkpointer syncs the WAL before copying it and the database
        // file after, so what it copies is durable before SQLite may reuse
        // the WAL.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        let interval = options.checkpoint_interval;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("promhub-sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        // Busy or failing checkpoints only let the WAL grow;
                        // the next round tries again.
                        tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) -> std::thread::Result<()> {
        drop(self.stop);
        self.thread.join()
    }
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
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
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
        let writer = SqliteWriter {
            conn,
            dedup_window_ms: duration_millis(options.dedup_window),
            prune_per_commit: options.dedup_prune_per_commit.max(1),
            sync,
            durable_seq: Arc::clone(&durable_seq),
            failed,
            dir_lock,
        };
        let thread = std::thread::Builder::new()
            .name("promhub-sqlite-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        let checkpointer = if options.checkpoint_interval.is_zero() {
            None
        } else {
            Some(Checkpointer::start(&path, &options)?)
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
    StoreError::Backend(e.to_string())
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
    let autocheckpoint_pages = if options.checkpoint_interval.is_zero() {
        options.wal_autocheckpoint_pages
    } else {
        0
    };
    conn.pragma_update(None, "wal_autocheckpoint", autocheckpoint_pages)
        .map_err(backend)?;
    // Keep the WAL file from staying huge after a burst.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
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

const SCHEMA_V1: &str = "
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (name, value) VALUES ('last_seq', 0);

-- seq is the rowid: assigned from meta.last_seq, never by SQLite.
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL,
    topic     TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    key       TEXT,
    payload   TEXT NOT NULL,
    headers   TEXT,
    tags      TEXT,
    caused_by TEXT,
    sid       TEXT
);
CREATE INDEX events_by_topic ON events (topic, seq);

-- Publisher ids (opts.id) stored within the dedup window.
CREATE TABLE dedup (
    id        TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    stored_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX dedup_by_age ON dedup (stored_at);

CREATE TABLE latest (
    topic TEXT NOT NULL,
    key   TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (topic, key)
) WITHOUT ROWID;

CREATE TABLE groups (
    pattern TEXT NOT NULL,
    grp     TEXT NOT NULL,
    cursor  INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp)
) WITHOUT ROWID;

-- Events after a group's cursor that are already done.
CREATE TABLE group_done (
    pattern TEXT NOT NULL,
    grp     TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp, seq)
) WITHOUT ROWID;

CREATE TABLE dead_letters (
    pattern  TEXT NOT NULL,
    grp      TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    reason   TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    dead_at  INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp, seq)
) WITHOUT ROWID;
";

/// Version 2: per-topic counts, so the ops API's lag is two index lookups
/// per topic instead of a scan. `tord` is the event's ordinal within its
/// topic (1, 2, ...): the number of a topic's events in `(a, b]` is
/// `tord(last ≤ b) − tord(last ≤ a)`. `topics` lists every topic with its
/// count and newest seq (to enumerate the topics a pattern matches).
/// Existing events are numbered once by the migration.
const SCHEMA_V2: &str = "
ALTER TABLE events ADD COLUMN tord INTEGER NOT NULL DEFAULT 0;
CREATE TABLE topics (
    topic    TEXT PRIMARY KEY,
    events   INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
UPDATE events SET tord = numbered.n
    FROM (SELECT seq, row_number() OVER (PARTITION BY topic ORDER BY seq) AS n FROM events)
        AS numbered
    WHERE events.seq = numbered.seq;
INSERT INTO topics (topic, events, last_seq)
    SELECT topic, max(tord), max(seq) FROM events GROUP BY topic;
";

/// Version 3: delivery attempts used by failed events above a group's
/// cursor (`GroupProgress::attempt_changes`), so a redelivery after a restart
/// or an idle group's eviction counts on instead of starting again at 1.
const SCHEMA_V3: &str = "
CREATE TABLE group_attempts (
    pattern  TEXT NOT NULL,
    grp      TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp, seq)
) WITHOUT ROWID;
";

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend)?;
    let steps = match version {
        0 => format!("{SCHEMA_V1}\n{SCHEMA_V2}\n{SCHEMA_V3}"),
        1 => format!("{SCHEMA_V2}\n{SCHEMA_V3}"),
        2 => SCHEMA_V3.to_owned(),
        SCHEMA_VERSION => return Ok(()),
        newer if newer > SCHEMA_VERSION => {
            return Err(StoreError::Corrupt(format!(
                "database schema version {newer} is newer than this hub supports ({SCHEMA_VERSION})"
            )));
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "database schema version {other} is unknown"
            )));
        }
    };
    let script =
        format!("BEGIN IMMEDIATE;\n{steps}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;");
    conn.execute_batch(&script).map_err(|e| {
        // Leave no half-migrated schema behind.
        let _ = conn.execute_batch("ROLLBACK");
        StoreError::Backend(format!("cannot create or migrate the schema: {e}"))
    })
}

/// Records (`attempts > 0`) or forgets (`0`) attempts of a group's events.
fn change_attempts(
    tx: &rusqlite::Transaction<'_>,
    key: &GroupKey,
    changes: &[(u64, u32)],
) -> Result<(), StoreError> {
    let mut put = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO group_attempts (pattern, grp, seq, attempts)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    let mut forget = tx
        .prepare_cached("DELETE FROM group_attempts WHERE pattern = ?1 AND grp = ?2 AND seq = ?3")
        .map_err(backend)?;
    for &(seq, attempts) in changes {
        let seq = seq_to_sql(seq);
        if attempts == 0 {
            forget.execute(params![key.pattern, key.group, seq])
        } else {
            put.execute(params![key.pattern, key.group, seq, attempts])
        }
        .map_err(backend)?;
    }
    Ok(())
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

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The WAL file, for the syncer's own fsync. SQLite keeps this same file
/// (truncating, never deleting it) while the write connection is open.
fn open_wal(db: &Path) -> Result<std::fs::File, StoreError> {
    let path = wal_path(db);
    std::fs::File::open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))
}

/// Where a commit becomes durable.
enum SyncStage {
    /// `synchronous=FULL`: inside the commit itself.
    Inline,
    /// `synchronous=NORMAL`: on the syncer thread, after the commit.
    Thread(Syncer),
}

/// A commit applied but not yet synced.
struct SyncRequest {
    last_seq: u64,
    reply: DurableReply,
}

/// Thread that fsyncs the WAL for every commit handed to it. One fsync
/// covers every commit that was applied before it started, so while it
/// syncs, the writer applies the next batches and the next fsync covers
/// them all.
struct Syncer {
    requests: mpsc::Sender<SyncRequest>,
    thread: JoinHandle<()>,
}

impl Syncer {
    fn start(
        wal: std::fs::File,
        durable_seq: Arc<AtomicU64>,
        failed: Arc<AtomicBool>,
        pause: Arc<Mutex<()>>,
    ) -> Result<Syncer, StoreError> {
        let (requests, receiver) = mpsc::channel::<SyncRequest>();
        let thread = std::thread::Builder::new()
            .name("promhub-sqlite-sync".into())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    // Uncontended except when a test holds syncs back.
                    drop(lock(&pause));
                    let mut synced = vec![first];
                    synced.extend(receiver.try_iter());
                    let result = if failed.load(Ordering::Acquire) {
                        Err(sync_failed_error())
                    } else {
                        wal.sync_data().map_err(|e| {
                            // After a failed fsync the kernel may have dropped
                            // the dirty pages: nothing written since can be
                            // trusted, so the store stops accepting writes.
                            failed.store(true, Ordering::Release);
                            tracing::error!(error = %e, "syncing the WAL failed; the store stops writing");
                            StoreError::Backend(format!("syncing the WAL failed: {e}"))
                        })
                    };
                    if result.is_ok() {
                        let newest = synced.iter().map(|r| r.last_seq).max().unwrap_or(0);
                        durable_seq.fetch_max(newest, Ordering::AcqRel);
                    }
                    for request in synced {
                        let _ = request.reply.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the sync thread: {e}")))?;
        Ok(Syncer { requests, thread })
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Backend("the writer thread stopped".into())
}

fn sync_failed_error() -> StoreError {
    StoreError::Backend("an earlier WAL sync failed; restart the hub".into())
}

/// The writer thread's state: the only write connection.
struct SqliteWriter {
    conn: Connection,
    dedup_window_ms: u64,
    prune_per_commit: usize,
    sync: SyncStage,
    durable_seq: Arc<AtomicU64>,
    /// Set when a sync failed: every later commit fails.
    failed: Arc<AtomicBool>,
    /// The data dir's lock: held by the thread that writes, released only
    /// after its last write and checkpoint (however the store goes away).
    dir_lock: std::fs::File,
}

impl SqliteWriter {
    fn run(mut self, commands: mpsc::Receiver<WriteCommand>) {
        // Ends when the store is closed (sender dropped) after finishing every
        // commit already queued.
        while let Ok(command) = commands.recv() {
            match command {
                WriteCommand::Commit(batch, applied, durable) => {
                    let result = if self.failed.load(Ordering::Acquire) {
                        Err(sync_failed_error())
                    } else {
                        self.commit(batch)
                    };
                    match result {
                        Ok((outcome, last_seq)) => {
                            match &self.sync {
                                SyncStage::Inline => {
                                    self.durable_seq.fetch_max(last_seq, Ordering::AcqRel);
                                    let _ = durable.send(Ok(()));
                                }
                                SyncStage::Thread(syncer) => {
                                    let request = SyncRequest {
                                        last_seq,
                                        reply: durable,
                                    };
                                    if let Err(mpsc::SendError(request)) =
                                        syncer.requests.send(request)
                                    {
                                        let _ = request.reply.send(Err(StoreError::Backend(
                                            "the sync thread stopped".into(),
                                        )));
                                    }
                                }
                            }
                            // The requester may have gone away; the commit
                            // stands.
                            let _ = applied.send(Ok(outcome));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "store commit failed");
                            let _ = applied.send(Err(e));
                        }
                    }
                }
                WriteCommand::Retain {
                    policy,
                    now,
                    from,
                    limit,
                    reply,
                } => {
                    let result = if self.failed.load(Ordering::Acquire) {
                        Err(sync_failed_error())
                    } else {
                        self.retain(&policy, now, from.as_deref(), limit)
                    };
                    let _ = reply.send(result);
                }
            }
        }
        // Let every commit already applied finish syncing before closing.
        if let SyncStage::Thread(Syncer { requests, thread }) =
            std::mem::replace(&mut self.sync, SyncStage::Inline)
        {
            drop(requests);
            if thread.join().is_err() {
                tracing::error!("the sync thread panicked");
            }
        }
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the store failed");
        }
        // Another hub may open the folder now.
        drop(self.dir_lock);
    }

    /// Applies one batch in one transaction; returns the outcome and the
    /// newest seq after it.
    fn commit(&mut self, mut batch: CommitBatch) -> Result<(CommitOutcome, u64), StoreError> {
        let now = now_millis();
        let window_start = now.saturating_sub(self.dedup_window_ms);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let mut outcome = Vec::with_capacity(batch.events.len());
        let mut client_ids_in_batch = 0usize;
        let first_seq: i64 = tx
            .prepare_cached("SELECT value FROM meta WHERE name = 'last_seq'")
            .and_then(|mut s| s.query_row([], |row| row.get(0)))
            .map_err(backend)?;
        let mut last_seq = first_seq;
        {
            let mut insert_event = tx
                .prepare_cached(
                    "INSERT INTO events (seq, id, topic, ts, key, payload, headers, tags, caused_by, sid, tord)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(backend)?;
            let mut find_dedup = tx
                .prepare_cached("SELECT seq FROM dedup WHERE id = ?1 AND stored_at >= ?2")
                .map_err(backend)?;
            let mut put_dedup = tx
                .prepare_cached(
                    "INSERT INTO dedup (id, seq, stored_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, stored_at = excluded.stored_at",
                )
                .map_err(backend)?;
            let mut put_latest = tx
                .prepare_cached(
                    "INSERT INTO latest (topic, key, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (topic, key) DO UPDATE SET seq = excluded.seq",
                )
                .map_err(backend)?;
            let mut find_topic_count = tx
                .prepare_cached("SELECT events FROM topics WHERE topic = ?1")
                .map_err(backend)?;
            // Per topic of the batch: (events so far, newest seq).
            let mut topic_counts: HashMap<String, (i64, i64)> = HashMap::new();
            let mut batch_ids: HashMap<String, u64> = HashMap::new();
            for event in std::mem::take(&mut batch.events) {
                if event.client_id {
                    client_ids_in_batch += 1;
                    let earlier = match batch_ids.get(&event.id) {
                        Some(&seq) => Some(seq),
                        None => find_dedup
                            .query_row(params![event.id, bits_to_sql(window_start)], |row| {
                                row.get::<_, i64>(0)
                            })
                            .optional()
                            .map_err(backend)?
                            .map(from_sql_int),
                    };
                    if let Some(seq) = earlier {
                        outcome.push(Appended::Duplicate { id: event.id, seq });
                        continue;
                    }
                }
                last_seq += 1;
                let tord = match topic_counts.get_mut(event.topic.as_str()) {
                    Some(count) => {
                        *count = (count.0 + 1, last_seq);
                        count.0
                    }
                    None => {
                        let stored: i64 = find_topic_count
                            .query_row([event.topic.as_str()], |row| row.get(0))
                            .optional()
                            .map_err(backend)?
                            .unwrap_or(0);
                        topic_counts
                            .insert(event.topic.as_str().to_owned(), (stored + 1, last_seq));
                        stored + 1
                    }
                };
                let headers = event.headers.as_ref().map(to_json).transpose()?;
                let tags = event.tags.as_ref().map(to_json).transpose()?;
                let caused_by = event.caused_by.as_ref().map(to_json).transpose()?;
                insert_event
                    .execute(params![
                        last_seq,
                        event.id,
                        event.topic.as_str(),
                        bits_to_sql(event.ts),
                        event.key,
                        event.payload.get(),
                        headers,
                        tags,
                        caused_by,
                        event.sid,
                        tord,
                    ])
                    .map_err(backend)?;
                let seq = from_sql_int(last_seq);
                if event.client_id {
                    put_dedup
                        .execute(params![event.id, last_seq, bits_to_sql(now)])
                        .map_err(backend)?;
                    batch_ids.insert(event.id.clone(), seq);
                }
                if let Some(key) = &event.key {
                    put_latest
                        .execute(params![event.topic.as_str(), key, last_seq])
                        .map_err(backend)?;
                }
                outcome.push(Appended::Stored(event.into_stored(seq)));
            }
            let mut put_topic = tx
                .prepare_cached(
                    "INSERT INTO topics (topic, events, last_seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (topic) DO UPDATE SET events = excluded.events, last_seq = excluded.last_seq",
                )
                .map_err(backend)?;
            for (topic, (count, newest)) in &topic_counts {
                put_topic
                    .execute(params![topic, count, newest])
                    .map_err(backend)?;
            }
            if last_seq != first_seq {
                tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'last_seq'")
                    .and_then(|mut s| s.execute([last_seq]))
                    .map_err(backend)?;
            }
        }
        apply_group_changes(&tx, &batch)?;
        // Bounded pruning: at least as many as this batch could have added,
        // so the table tracks the window instead of growing.
        let prune_limit = self.prune_per_commit.max(2 * client_ids_in_batch);
        tx.prepare_cached(
            "DELETE FROM dedup WHERE id IN
                (SELECT id FROM dedup WHERE stored_at < ?1 ORDER BY stored_at LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![bits_to_sql(window_start), prune_limit as i64]))
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok((CommitOutcome { events: outcome }, from_sql_int(last_seq)))
    }

    /// One retention call (see [`Store::apply_retention`]) in one
    /// transaction. The `topics` row stays (its counter keeps numbering
    /// `tord`), so a topic's retained events keep consecutive ordinals.
    /// Only durable events are removed.
    fn retain(
        &mut self,
        policy: &RetentionPolicy,
        now: Millis,
        from: Option<&str>,
        limit: usize,
    ) -> Result<RetentionPass, StoreError> {
        let durable = seq_to_sql(self.durable_seq.load(Ordering::Acquire));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        // One more than the budget: the extra one is where the next call
        // starts.
        let mut topics: Vec<(String, i64)> = tx
            .prepare_cached(
                "SELECT topic, events FROM topics WHERE topic >= ?1 ORDER BY topic LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![from.unwrap_or(""), RETENTION_TOPICS_PER_CALL as i64 + 1],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?
                .collect()
            })
            .map_err(backend)?;
        let mut next = (topics.len() > RETENTION_TOPICS_PER_CALL)
            .then(|| topics.pop().map(|(name, _)| name))
            .flatten();
        let mut removed = 0u64;
        for (name, counter) in topics {
            let room = (limit as u64).saturating_sub(removed);
            if room == 0 {
                // Out of room: this topic is where the next call starts.
                next = Some(name);
                break;
            }
            let Ok(topic) = Topic::parse(&name) else {
                continue;
            };
            let limits = policy.limits_for(&topic);
            if limits.keeps_everything() {
                continue;
            }
            let first: Option<(i64, i64)> = tx
                .prepare_cached(
                    "SELECT tord, ts FROM events WHERE topic = ?1 AND seq <= ?2 ORDER BY seq LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(params![name, durable], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()
                })
                .map_err(backend)?;
            let Some((first_tord, first_ts)) = first else {
                continue;
            };
            // Retention removes prefixes, so the retained ordinals are
            // consecutive: their count needs no scan.
            let retained = from_sql_int(counter - first_tord + 1);
            let mut walk =
                PrefixWalk::new(limits, retained, Some(from_sql_int(first_ts)), room, now);
            let mut page = tx
                .prepare_cached(
                    "SELECT seq, ts FROM events WHERE topic = ?1 AND seq > ?2 AND seq <= ?3
                     ORDER BY seq LIMIT ?4",
                )
                .map_err(backend)?;
            while let Some((after, want)) = walk.next_page() {
                let rows: Vec<(u64, u64)> = page
                    .query_map(
                        params![name, seq_to_sql(after), durable, want as i64],
                        |row| Ok((from_sql_int(row.get(0)?), from_sql_int(row.get(1)?))),
                    )
                    .and_then(|rows| rows.collect())
                    .map_err(backend)?;
                walk.feed(&rows);
            }
            let Some((boundary, count)) = walk.removal() else {
                continue;
            };
            let boundary = seq_to_sql(boundary);
            tx.prepare_cached("DELETE FROM events WHERE topic = ?1 AND seq <= ?2")
                .and_then(|mut s| s.execute(params![name, boundary]))
                .map_err(backend)?;
            tx.prepare_cached("DELETE FROM latest WHERE topic = ?1 AND seq <= ?2")
                .and_then(|mut s| s.execute(params![name, boundary]))
                .map_err(backend)?;
            removed += count;
            if count == room {
                // Cut short: the topic may have more to remove.
                next = Some(name);
                break;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(RetentionPass { removed, next })
    }
}

fn apply_group_changes(
    tx: &rusqlite::Transaction<'_>,
    batch: &CommitBatch,
) -> Result<(), StoreError> {
    if !batch.progress.is_empty() {
        let mut put_cursor = tx
            .prepare_cached(
                "INSERT INTO groups (pattern, grp, cursor) VALUES (?1, ?2, ?3)
                 ON CONFLICT (pattern, grp) DO UPDATE SET cursor = excluded.cursor",
            )
            .map_err(backend)?;
        let mut drop_done = tx
            .prepare_cached("DELETE FROM group_done WHERE pattern = ?1 AND grp = ?2 AND seq <= ?3")
            .map_err(backend)?;
        let mut add_done = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO group_done (pattern, grp, seq) VALUES (?1, ?2, ?3)",
            )
            .map_err(backend)?;
        for p in &batch.progress {
            let cursor = seq_to_sql(p.cursor);
            put_cursor
                .execute(params![p.key.pattern, p.key.group, cursor])
                .map_err(backend)?;
            drop_done
                .execute(params![p.key.pattern, p.key.group, cursor])
                .map_err(backend)?;
            for seq in p.done_above.iter().map(|&seq| seq_to_sql(seq)) {
                if seq > cursor {
                    add_done
                        .execute(params![p.key.pattern, p.key.group, seq])
                        .map_err(backend)?;
                }
            }
            if !p.attempt_changes.is_empty() {
                change_attempts(tx, &p.key, &p.attempt_changes)?;
            }
        }
    }
    if !batch.dead_letters.is_empty() {
        let mut put = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters
                    (pattern, grp, seq, event_id, reason, attempts, dead_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(backend)?;
        for d in &batch.dead_letters {
            put.execute(params![
                d.key.pattern,
                d.key.group,
                seq_to_sql(d.seq),
                d.event_id,
                d.reason,
                d.attempts,
                bits_to_sql(d.dead_at),
            ])
            .map_err(backend)?;
        }
    }
    if !batch.removed_dead_letters.is_empty() {
        let mut delete = tx
            .prepare_cached("DELETE FROM dead_letters WHERE pattern = ?1 AND grp = ?2 AND seq = ?3")
            .map_err(backend)?;
        for r in &batch.removed_dead_letters {
            delete
                .execute(params![r.key.pattern, r.key.group, seq_to_sql(r.seq)])
                .map_err(backend)?;
        }
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Backend(format!("cannot encode an event field: {e}")))
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

    async fn latest_by_key(&self, pattern: &Pattern) -> Result<Vec<Event>, StoreError> {
        let pattern = pattern.clone();
        self.read(move |tx, durable| {
            let mut events = Vec::new();
            let mut collect = |sql: &str, args: &[&dyn rusqlite::ToSql], filter: bool| {
                let mut topic_filter = TopicFilter::new(&pattern);
                let mut stmt = tx.prepare_cached(sql).map_err(backend)?;
                let mut rows = stmt.query(args).map_err(backend)?;
                while let Some(row) = rows.next().map_err(backend)? {
                    // A key whose newest event is still syncing is left out;
                    // that event reaches live subscribers once durable.
                    if row.get::<_, i64>(0).map_err(backend)? > durable {
                        continue;
                    }
                    if filter {
                        let topic = row
                            .get_ref(TOPIC_COLUMN)
                            .and_then(|v| v.as_str().map_err(Into::into))
                            .map_err(backend)?;
                        if !topic_filter.matches(topic) {
                            continue;
                        }
                    }
                    events.push(event_from_row(row)?);
                }
                Ok::<_, StoreError>(())
            };
            let join =
                format!("SELECT {EVENT_COLUMNS_E} FROM latest l JOIN events e ON e.seq = l.seq");
            if let Some(topic) = pattern.as_topic() {
                collect(
                    &format!("{join} WHERE l.topic = ?1"),
                    &[&topic.as_str()],
                    false,
                )?;
            } else if let Some(prefix) = literal_prefix(&pattern) {
                // Only topics equal to the prefix or below it can match.
                collect(&format!("{join} WHERE l.topic = ?1"), &[&prefix], true)?;
                let low = format!("{prefix}.");
                let high = format!("{prefix}/"); // '/' sorts right after '.'
                collect(
                    &format!("{join} WHERE l.topic >= ?1 AND l.topic < ?2"),
                    &[&low, &high],
                    true,
                )?;
            } else {
                collect(&join, &[], true)?;
            }
            events.sort_unstable_by_key(|e| e.seq);
            Ok(events)
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
    use crate::store::NewEvent;

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
    async fn creates_a_versioned_wal_database_and_refuses_a_newer_schema() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let path = store.path().to_owned();
        ensure!(path == dir.path().join(DB_FILE));
        store.close().await?;
        {
            let conn = Connection::open(&path)?;
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            ensure!(mode == "wal", "journal mode {mode}");
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            ensure!(version == SCHEMA_VERSION);
            conn.execute_batch("PRAGMA user_version = 99")?;
        }
        match SqliteStore::open(dir.path(), SqliteOptions::default()) {
            Err(StoreError::Corrupt(msg)) => ensure!(msg.contains("99"), "{msg}"),
            other => anyhow::bail!("expected a schema error, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_version_1_database_gets_topic_counts_on_open() -> Result<()> {
        let dir = tempfile::tempdir()?;
        {
            let conn = Connection::open(dir.path().join(DB_FILE))?;
            conn.execute_batch(&format!("{SCHEMA_V1}\nPRAGMA user_version = 1;"))?;
            for (seq, topic) in [(1, "a.b"), (2, "a.c"), (3, "a.b"), (4, "z")] {
                conn.execute(
                    "INSERT INTO events (seq, id, topic, ts, payload) VALUES (?1, ?2, ?3, 5, '1')",
                    params![seq, format!("e{seq}"), topic],
                )?;
            }
            conn.execute("UPDATE meta SET value = 4 WHERE name = 'last_seq'", [])?;
        }
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let a_star = Pattern::parse("a.*")?;
        ensure!(store.count_matching_after(&a_star, 0).await? == 3);
        ensure!(store.count_matching_after(&a_star, 1).await? == 2);
        ensure!(
            store
                .count_matching_after(&Pattern::parse("a.b")?, 1)
                .await?
                == 1
        );
        // New events continue each topic's numbering.
        store
            .commit(CommitBatch {
                events: vec![NewEvent {
                    id: "n".into(),
                    client_id: false,
                    topic: Topic::parse("a.b")?,
                    ts: 9,
                    key: None,
                    payload: RawValue::from_string("2".into())?,
                    headers: None,
                    tags: None,
                    caused_by: None,
                    sid: None,
                }],
                ..CommitBatch::default()
            })
            .await?;
        ensure!(
            store
                .count_matching_after(&Pattern::parse("a.b")?, 0)
                .await?
                == 3
        );
        ensure!(
            store
                .count_matching_after(&Pattern::parse("**")?, 3)
                .await?
                == 2
        );
        let first = store.first_matching_after(&a_star, 3).await?;
        ensure!(first.map(|e| e.seq) == Some(5));
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
