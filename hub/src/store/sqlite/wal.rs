//! The WAL's checkpointer thread and its size bound.
//!
//! - [`Checkpointer`]: copies the WAL into the database file on its own
//!   connection (`PASSIVE`: never blocks the writer) when a commit wakes it
//!   — once per `wal_autocheckpoint_pages` of WAL growth, or after a failed
//!   commit — then enforces the [`WalBound`]. It sleeps until woken: an
//!   idle hub wakes no thread; only while the bound is not met yet (busy
//!   readers, a full disk) does it retry on its own, every
//!   [`RETRY_INTERVAL`].
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
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::{SqliteOptions, backend};
use crate::store::StoreError;

/// How often the checkpointer tries again while the WAL is over its bound.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_millis(200);

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
    /// why it is the exception, not every round. Returns whether the bound
    /// is met now (else the caller tries again later).
    pub(super) fn enforce(&self, conn: &Connection) -> bool {
        let disk_full = self.disk_full.load(Ordering::Acquire);
        let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if !disk_full && size <= self.limit {
            return true;
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
                true
            }
            Ok(_) => {
                tracing::debug!(bytes = size, "WAL truncation busy; retrying");
                false
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        error = %e, bytes = size, limit = self.limit,
                        "cannot checkpoint and truncate the WAL (is the disk full?); retrying"
                    );
                }
                false
            }
        }
    }
}

/// Thread that checkpoints the WAL on its own connection, off the commit
/// path, when a commit wakes it (see [`CheckpointKick`]), and enforces the
/// [`WalBound`].
#[derive(Debug)]
pub(super) struct Checkpointer {
    thread: JoinHandle<()>,
}

/// Wakes the [`Checkpointer`]; dropping it stops the thread.
#[derive(Debug)]
pub(super) struct CheckpointKick {
    kicks: mpsc::SyncSender<()>,
    checkpointer: Checkpointer,
    /// Checkpoint rounds run so far (tests look).
    #[cfg_attr(not(test), allow(dead_code))]
    rounds: Arc<AtomicU64>,
}

impl CheckpointKick {
    /// Checkpoint rounds the thread has run.
    #[cfg(test)]
    pub(super) fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Acquire)
    }

    /// Asks for a checkpoint; free when one is asked for already.
    pub(super) fn kick(&self) {
        let _ = self.kicks.try_send(());
    }

    /// Stops the thread after the checkpoint it is running.
    pub(super) fn stop(self) {
        let CheckpointKick {
            kicks,
            checkpointer,
            ..
        } = self;
        drop(kicks);
        if checkpointer.thread.join().is_err() {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

impl Checkpointer {
    pub(super) fn start(
        path: &Path,
        options: &SqliteOptions,
        bound: Arc<WalBound>,
    ) -> Result<CheckpointKick, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(options.busy_timeout).map_err(backend)?;
        // The checkpointer syncs the WAL before copying it and the database
        // file after, so what it copies is durable before SQLite may reuse
        // the WAL.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        // One kick waiting is enough: the checkpoint it starts covers every
        // commit before it.
        let (kicks, woken) = mpsc::sync_channel::<()>(1);
        let rounds = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&rounds);
        let thread = std::thread::Builder::new()
            .name("promhub-sqlite-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                let mut within_bound = true;
                loop {
                    let woke = if within_bound {
                        woken
                            .recv()
                            .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                    } else {
                        woken.recv_timeout(RETRY_INTERVAL)
                    };
                    if let Err(mpsc::RecvTimeoutError::Disconnected) = woke {
                        break;
                    }
                    // Busy or failing checkpoints (a full disk: the database
                    // file cannot grow) only let the WAL grow; the next
                    // kick tries again. Logged when it starts and ends.
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
                    within_bound = bound.enforce(&conn);
                    counted.fetch_add(1, Ordering::AcqRel);
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(CheckpointKick {
            kicks,
            checkpointer: Checkpointer { thread },
            rounds,
        })
    }
}
