//! The WAL's two helper threads and its size bound.
//!
//! - [`Syncer`]: fsyncs the WAL after commits (pipelined sync), so a commit
//!   counts as durable only once synced.
//! - [`Checkpointer`]: copies the WAL into the database file on its own
//!   connection every `checkpoint_interval` (`PASSIVE`: never blocks the
//!   writer), then enforces the [`WalBound`].
//! - [`WalBound`]: SQLite reuses the WAL file from its start after a
//!   complete checkpoint but never shrinks it below `journal_size_limit`,
//!   and under steady writes with readers a `PASSIVE` checkpoint may never
//!   let it restart, so the file only grows. Past `wal_limit_bytes` — or as
//!   soon as a commit failed for lack of space — a `TRUNCATE` checkpoint
//!   copies everything and cuts the file to zero bytes. That keeps the
//!   space a checkpoint needs bounded, so freeing about that much lets a
//!   full disk recover; a `TRUNCATE` that cannot finish (the database file
//!   cannot grow on a full disk) is retried every round until it can.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use rusqlite::Connection;

use super::{DurableReply, SqliteOptions, backend, lock};
use crate::refusals::{self, Refusal};
use crate::store::StoreError;

pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The WAL file, for the syncer's own fsync. SQLite keeps this same file
/// (truncating, never deleting it) while the write connection is open.
pub(super) fn open_wal(db: &Path) -> Result<std::fs::File, StoreError> {
    let path = wal_path(db);
    std::fs::File::open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))
}

/// The WAL's size bound (see the module docs), shared by the writer (which
/// reports a full disk) and whoever checkpoints.
#[derive(Debug)]
pub(super) struct WalBound {
    wal: PathBuf,
    limit: u64,
    /// A commit failed for lack of space: truncate at the next chance.
    disk_full: AtomicBool,
    /// The last enforcement failed (logged once, not every round).
    failing: AtomicBool,
}

impl WalBound {
    pub(super) fn new(db: &Path, limit: u64) -> Self {
        WalBound {
            wal: wal_path(db),
            limit,
            disk_full: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        }
    }

    /// A commit failed because the disk is full.
    pub(super) fn report_disk_full(&self) {
        self.disk_full.store(true, Ordering::Release);
    }

    /// Checkpoints everything and truncates the WAL on `conn` when it is
    /// over the limit or the disk was reported full. Blocks writers while
    /// it runs (and waits up to the busy timeout for readers), which is
    /// why it is the exception, not every round.
    pub(super) fn enforce(&self, conn: &Connection) {
        let disk_full = self.disk_full.load(Ordering::Acquire);
        let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if !disk_full && size <= self.limit {
            return;
        }
        // (busy, frames in the WAL, frames checkpointed); busy = 1 when a
        // reader or the writer kept it from finishing.
        let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        });
        match result {
            Ok(0) => {
                self.disk_full.store(false, Ordering::Release);
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("the WAL is checkpointed and truncated again");
                }
                tracing::debug!(bytes = size, "WAL truncated");
            }
            Ok(_) => tracing::debug!(bytes = size, "WAL truncation busy; retrying"),
            Err(e) => {
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        error = %e, bytes = size, limit = self.limit,
                        "cannot checkpoint and truncate the WAL (is the disk full?); retrying"
                    );
                }
            }
        }
    }
}

/// Thread that checkpoints the WAL on its own connection, off the commit
/// path (see [`SqliteOptions::checkpoint_interval`]), and enforces the
/// [`WalBound`].
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(
        path: &Path,
        options: &SqliteOptions,
        bound: Arc<WalBound>,
    ) -> Result<Checkpointer, StoreError> {
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
                let mut failing = false;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    // Busy or failing checkpoints (a full disk: the database
                    // file cannot grow) only let the WAL grow; the next
                    // round tries again. Logged when it starts and ends.
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!("WAL checkpoints succeed again");
                        }
                        Ok(()) => {}
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                        }
                        Err(_) => {}
                    }
                    bound.enforce(&conn);
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop, thread })
    }

    pub(super) fn stop(self) -> std::thread::Result<()> {
        drop(self.stop);
        self.thread.join()
    }
}

/// Where a commit becomes durable.
pub(super) enum SyncStage {
    /// `synchronous=FULL`: inside the commit itself.
    Inline,
    /// `synchronous=NORMAL`: on the syncer thread, after the commit.
    Thread(Syncer),
}

/// A commit applied but not yet synced.
pub(super) struct SyncRequest {
    pub last_seq: u64,
    pub reply: DurableReply,
}

/// Thread that fsyncs the WAL for every commit handed to it. One fsync
/// covers every commit that was applied before it started, so while it
/// syncs, the writer applies the next batches and the next fsync covers
/// them all.
pub(super) struct Syncer {
    pub requests: mpsc::Sender<SyncRequest>,
    pub thread: JoinHandle<()>,
}

impl Syncer {
    pub(super) fn start(
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
                            // trusted, so the store stops accepting writes
                            // (a full disk normally shows at write time, in
                            // the commit, which recovers; not here).
                            failed.store(true, Ordering::Release);
                            tracing::error!(error = %e, "syncing the WAL failed; the store stops writing");
                            if e.kind() == std::io::ErrorKind::StorageFull {
                                refusals::count(Refusal::DiskFull);
                            }
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

pub(super) fn sync_failed_error() -> StoreError {
    StoreError::Backend("an earlier WAL sync failed; restart the hub".into())
}
