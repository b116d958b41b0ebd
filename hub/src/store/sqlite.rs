//! The embedded backend: one SQLite file (`promhub.db`) in the data dir.
//!
//! One write connection (`sqlite/writer.rs`), behind the store's writer
//! lock, turns every [`CommitBatch`] into one transaction and syncs the WAL
//! inside it (`synchronous=FULL`): a commit that returned survives a crash
//! (with `sync_each_commit` off, `synchronous=NORMAL`, only a crash of the
//! process: the WAL is synced before checkpoints).
//! The hub commits from one thread, the `StoreWriter`'s commit thread,
//! which calls [`BlockingCommit::commit_blocking`] directly: batches that
//! arrive during a commit's fsync form the next commit, so at most one
//! fsync is in flight and a busy hub amortises it over many events.
//! A checkpointer thread copies the WAL into the database file when
//! commits wake it (`sqlite/wal.rs`). Reads run on a small pool of
//! read-only connections via `spawn_blocking` (`sqlite/reads.rs`,
//! `sqlite/groups.rs`); WAL lets them proceed while a commit runs, and they
//! never return events past the durable seq.
//!
//! `seq` comes from a counter the write connection keeps: on open the
//! larger of `meta.last_seq` and the newest seq of any topic (each commit
//! updates its topics' rows, which retention never deletes; `meta` is
//! brought up to date on close), so it never goes backwards or gets reused
//! even if retention later deletes the newest events. The data dir's lock
//! keeps a second process from writing the same file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use promhub_core::frames::{Event, Millis};
use promhub_core::{Pattern, Topic};
use rusqlite::Connection;
use tokio::sync::Semaphore;

mod connections;
mod groups;
mod reads;
mod retention;
mod schema;
mod wal;
mod writer;

pub use self::connections::LOCK_FILE;
use self::connections::{disk_is_full, lock_data_dir, open_read_connection, open_write_connection};
use self::wal::{Checkpointer, WalBound, open_wal, wal_path};
use self::writer::SqliteWriter;
use super::{
    BlockingCommit, CommitBatch, CommitOutcome, DeadLetter, GroupKey, GroupRecord, LatestCursor,
    LatestPage, PageLimits, RetentionPass, RetentionPolicy, Store, StoreError,
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
    /// WAL pages between two checkpoints (copies of the WAL into the
    /// database file). Larger means fewer, bigger checkpoints: a page
    /// changed by many commits is copied once.
    pub wal_autocheckpoint_pages: u32,
    /// Checkpoint on a separate thread and connection (`PASSIVE`, which
    /// never blocks a commit), woken by the commit that passes
    /// `wal_autocheckpoint_pages`, instead of inside that commit: an
    /// in-commit checkpoint stalls every waiting PUBACK for ~10 ms several
    /// times a second at a few thousand commits/s (measured: p99
    /// publish-to-deliver 10.8 ms with it, 1.2 ms without). With the
    /// thread, a commit checkpoints itself only once the WAL passes
    /// `wal_limit_bytes`.
    pub checkpoint_thread: bool,
    /// The WAL file's bound: past it a checkpoint truncates it to zero
    /// bytes (also SQLite's `journal_size_limit`). Recovering from a full
    /// disk needs about this much free space (see `wal.rs`).
    pub wal_limit_bytes: u64,
    /// Sync the WAL inside every commit (`synchronous=FULL`: a commit that
    /// returned survives an OS crash), or only before checkpoints
    /// (`synchronous=NORMAL`: it survives a crash of the process).
    pub sync_each_commit: bool,
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
            checkpoint_thread: true,
            wal_limit_bytes: DEFAULT_WAL_LIMIT_BYTES,
            sync_each_commit: true,
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
    /// The write connection; `None` once closed. Held for a whole commit
    /// or retention call: writes are serialized here.
    writer: Mutex<Option<SqliteWriter>>,
    /// Idle read connections; the semaphore bounds how many are in use.
    idle_readers: Mutex<Vec<Connection>>,
    read_permits: Semaphore,
    /// Highest seq known to be synced; reads never look past it, so nothing
    /// that a crash could still take back is ever delivered.
    durable_seq: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) `promhub.db` in `dir` and starts the
    /// checkpointer thread. Blocking: call it at start-up, not from a busy
    /// async task. On a full disk the error is [`StoreError::DiskFull`],
    /// naming `dir`.
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
        let mut conn = open_write_connection(&path, &options)?;
        let last_seq = schema::last_seq(&conn)?;
        let dedup_oldest: Option<i64> = conn
            .query_row("SELECT min(stored_at) FROM dedup", [], |row| row.get(0))
            .map_err(backend)?;
        // Whatever the file holds now is durable once synced (a previous run
        // may have died between a commit and its sync).
        let wal = open_wal(&path)?;
        wal.sync_data().map_err(|e| {
            StoreError::Backend(format!("cannot sync {}: {e}", wal_path(&path).display()))
        })?;
        drop(wal);
        // The WAL's size after each commit decides when to checkpoint.
        let wal_pages = Arc::new(AtomicU32::new(0));
        let pages = Arc::clone(&wal_pages);
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: i32| {
            pages.store(u32::try_from(frames).unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }))
        .map_err(backend)?;
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .map_err(backend)?;
        let bound_pages = u32::try_from(options.wal_limit_bytes / from_sql_int(page_size).max(512))
            .unwrap_or(u32::MAX)
            .max(1);
        let durable_seq = Arc::new(AtomicU64::new(from_sql_int(last_seq)));
        let wal_bound = Arc::new(WalBound::new(&path, options.wal_limit_bytes));
        let checkpointer = if options.checkpoint_thread {
            Some(Checkpointer::start(
                &path,
                &options,
                Arc::clone(&wal_bound),
            )?)
        } else {
            None
        };
        let writer = SqliteWriter {
            conn,
            dedup_window_ms: duration_millis(options.dedup_window),
            prune_per_commit: options.dedup_prune_per_commit.max(1),
            durable_seq: Arc::clone(&durable_seq),
            last_seq,
            dedup_oldest,
            failed: false,
            wal_pages,
            wal_bound,
            checkpoint_pages: options.wal_autocheckpoint_pages.clamp(1, bound_pages),
            bound_pages,
            kicked_at: 0,
            checkpointer,
            _dir_lock: dir_lock,
        };
        let read_permits = Semaphore::new(options.read_connections.max(1));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                options,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(writer)),
                idle_readers: Mutex::new(Vec::new()),
                read_permits,
                durable_seq,
            }),
        })
    }

    /// Runs `write` on the write connection on this thread (blocking).
    fn with_writer<T>(
        &self,
        write: impl FnOnce(&mut SqliteWriter) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        let mut writer = lock(&self.inner.writer);
        write(writer.as_mut().ok_or(StoreError::Closed)?)
    }

    /// [`SqliteStore::with_writer`] on a blocking thread.
    async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut SqliteWriter) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.with_writer(write))
            .await
            .map_err(|e| StoreError::Backend(format!("write task failed: {e}")))?
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

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
        self.write(move |writer| writer.commit(batch)).await
    }

    fn blocking(&self) -> Option<Arc<dyn BlockingCommit>> {
        Some(Arc::new(self.clone()))
    }

    async fn read_after_bounded(
        &self,
        after: u64,
        pattern: Option<&Pattern>,
        limit: usize,
        max_bytes: usize,
        scan_limit: usize,
    ) -> Result<(Vec<Event>, u64), StoreError> {
        reads::read_after_bounded(self, after, pattern, limit, max_bytes, scan_limit).await
    }

    async fn events_by_seq(&self, seqs: &[u64]) -> Result<Vec<Event>, StoreError> {
        reads::events_by_seq(self, seqs).await
    }

    async fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        reads::get(self, seq).await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.check_open()?;
        Ok(self.inner.durable_seq.load(Ordering::Acquire))
    }

    async fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        reads::first_seq(self).await
    }

    async fn latest_by_key_page(
        &self,
        pattern: &Pattern,
        after: Option<&LatestCursor>,
        limits: PageLimits,
    ) -> Result<LatestPage, StoreError> {
        reads::latest_by_key_page(self, pattern, after, limits).await
    }

    async fn latest_for_key(&self, topic: &Topic, key: &str) -> Result<Option<Event>, StoreError> {
        reads::latest_for_key(self, topic, key).await
    }

    async fn load_group(&self, key: &GroupKey) -> Result<Option<GroupRecord>, StoreError> {
        groups::load_group(self, key).await
    }

    async fn groups_page(
        &self,
        after: Option<&GroupKey>,
        limit: usize,
    ) -> Result<Vec<GroupRecord>, StoreError> {
        groups::groups_page(self, after, limit).await
    }

    async fn group_count(&self) -> Result<u64, StoreError> {
        groups::group_count(self).await
    }

    async fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        groups::groups(self).await
    }

    async fn dead_letters(
        &self,
        key: &GroupKey,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        groups::dead_letters(self, key, after_seq, limit).await
    }

    async fn dead_letter_count(&self, key: &GroupKey) -> Result<u64, StoreError> {
        groups::dead_letter_count(self, key).await
    }

    async fn count_after(&self, after: u64) -> Result<u64, StoreError> {
        reads::count_after(self, after).await
    }

    async fn count_present(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        reads::count_present(self, seqs).await
    }

    async fn removed_since(&self, pattern: &Pattern, from: u64) -> Result<Option<u64>, StoreError> {
        reads::removed_since(self, pattern, from).await
    }

    async fn count_matching_after(&self, pattern: &Pattern, after: u64) -> Result<u64, StoreError> {
        reads::count_matching_after(self, pattern, after).await
    }

    async fn first_matching_after(
        &self,
        pattern: &Pattern,
        after: u64,
    ) -> Result<Option<Event>, StoreError> {
        reads::first_matching_after(self, pattern, after).await
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
        let policy = policy.clone();
        let from = from.map(str::to_owned);
        self.write(move |writer| writer.retain(&policy, now, from.as_deref(), limit))
            .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        lock(&self.inner.idle_readers).clear();
        self.inner.read_permits.close();
        let inner = Arc::clone(&self.inner);
        // Waits for a commit in progress; dropping the writer stops the
        // checkpointer, checkpoints a last time, closes the connection and
        // releases the data dir's lock.
        tokio::task::spawn_blocking(move || drop(lock(&inner.writer).take()))
            .await
            .map_err(|e| StoreError::Backend(format!("close task failed: {e}")))
    }
}

impl BlockingCommit for SqliteStore {
    fn commit_blocking(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
        self.with_writer(move |writer| writer.commit(batch))
    }
}

#[cfg(test)]
mod tests {
    use anyhow::{Result, ensure};
    use promhub_core::frames::to_payload;

    use rusqlite::OpenFlags;

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

    /// Pages in the WAL after the last commit, and checkpoint rounds run.
    fn wal_state(store: &SqliteStore) -> (u32, u64) {
        let writer = lock(&store.inner.writer);
        let writer = writer.as_ref().expect("open");
        (
            writer.wal_pages.load(Ordering::Relaxed),
            writer.checkpointer.as_ref().map_or(0, |c| c.rounds()),
        )
    }

    #[tokio::test]
    async fn commits_wake_the_checkpointer_as_the_wal_grows_and_idle_wakes_nothing() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(
            dir.path(),
            SqliteOptions {
                wal_autocheckpoint_pages: 64,
                ..SqliteOptions::default()
            },
        )?;
        let one = |n: usize| CommitBatch {
            events: vec![event(&format!("e{n}"), false)],
            ..CommitBatch::default()
        };
        store.commit_blocking(one(0))?;
        let (pages, rounds) = wal_state(&store);
        ensure!(pages < 64 && rounds == 0, "{pages} pages, {rounds} rounds");
        // Idle: no commit, no checkpoint (no timer runs it).
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(wal_state(&store).1 == 0, "an idle store checkpointed");
        // Commit until the WAL passes 64 pages: that commit wakes it.
        let mut n = 1;
        while wal_state(&store).0 < 64 {
            store.commit_blocking(one(n))?;
            n += 1;
            ensure!(n < 10_000, "the WAL never grew");
        }
        let grown = wal_state(&store).0;
        for _ in 0..1000 {
            if wal_state(&store).1 > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ensure!(wal_state(&store).1 == 1, "one checkpoint after the kick");
        // Everything was copied, so the next commit starts the WAL over.
        store.commit_blocking(one(n))?;
        let (pages, _) = wal_state(&store);
        ensure!(
            pages < grown,
            "the WAL restarted: {pages} pages, {grown} before"
        );
        ensure!(store.last_seq().await? == n as u64 + 1);
        store.close().await?;
        Ok(())
    }

    /// Commits do not write `meta` (schema version 6): a store that died
    /// before closing (its `meta.last_seq` behind) still never reuses a
    /// seq, even after retention removed the newest events.
    #[tokio::test]
    async fn seqs_continue_from_the_topics_when_meta_is_behind() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let events = (0..5).map(|i| event(&format!("e{i}"), false)).collect();
        store.commit_blocking(CommitBatch {
            events,
            ..CommitBatch::default()
        })?;
        let policy = RetentionPolicy {
            default: crate::store::RetentionLimits {
                max_age_ms: None,
                max_events: Some(0),
            },
            rules: Vec::new(),
        };
        let pass = store.apply_retention(&policy, 0, None, 100).await?;
        ensure!(pass.removed == 5 && count(store.path(), "events")? == 0);
        store.close().await?;
        {
            let conn = Connection::open(dir.path().join(DB_FILE))?;
            let recorded: i64 =
                conn.query_row("SELECT value FROM meta WHERE name = 'last_seq'", [], |r| {
                    r.get(0)
                })?;
            ensure!(recorded == 5, "close records the counter: {recorded}");
            // As if the hub had died before closing.
            conn.execute("UPDATE meta SET value = 0 WHERE name = 'last_seq'", [])?;
        }
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        ensure!(store.last_seq().await? == 5);
        let outcome = store.commit_blocking(CommitBatch {
            events: vec![event("next", false)],
            ..CommitBatch::default()
        })?;
        ensure!(outcome.seqs() == vec![6], "{:?}", outcome.events);
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
