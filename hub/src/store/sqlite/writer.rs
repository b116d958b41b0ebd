//! The embedded store's only write connection. Every commit and every
//! retention call is one transaction on it, made by whoever holds the
//! store's writer lock: the `StoreWriter`'s commit thread, or a blocking
//! task for retention and direct commits. With `synchronous=FULL` SQLite
//! syncs the WAL inside each commit, so a commit that returned is durable.
//! After each commit the WAL's size (from SQLite's WAL hook) decides
//! whether the checkpointer is woken; see `wal.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::groups::apply_group_changes;
use super::wal::{CheckpointKick, WalBound};
use super::{backend, bits_to_sql, from_sql_int, now_millis};
use crate::refusals::{self, Refusal};
use crate::store::{Appended, CommitBatch, CommitOutcome, StoreError};

/// The write connection and what a commit needs besides it.
pub(super) struct SqliteWriter {
    pub(super) conn: Connection,
    pub(super) dedup_window_ms: u64,
    pub(super) prune_per_commit: usize,
    pub(super) durable_seq: Arc<AtomicU64>,
    /// The newest seq assigned (schema version 6: kept here and in the
    /// topics' rows, written to `meta` when the store closes).
    pub(super) last_seq: i64,
    /// No de-duplication entry is older than this (`None`: the table is
    /// empty), so a commit prunes only when something may have expired.
    pub(super) dedup_oldest: Option<i64>,
    /// Set when a sync failed: every later commit fails.
    pub(super) failed: bool,
    /// Pages in the WAL after the last commit (SQLite's WAL hook).
    pub(super) wal_pages: Arc<AtomicU32>,
    /// Told when a commit fails for lack of space.
    pub(super) wal_bound: Arc<WalBound>,
    /// WAL pages between two checkpoints (`wal_autocheckpoint_pages`).
    pub(super) checkpoint_pages: u32,
    /// The WAL's bound in pages: past it a commit checkpoints itself.
    pub(super) bound_pages: u32,
    /// WAL pages when the checkpointer was last woken.
    pub(super) kicked_at: u32,
    /// Wakes the checkpointer thread; `None`: the commits checkpoint.
    pub(super) checkpointer: Option<CheckpointKick>,
    /// The data dir's lock: released only after the last write and
    /// checkpoint, when this is dropped (however the store goes away).
    /// Declared after `conn`, so it is dropped after it.
    pub(super) _dir_lock: std::fs::File,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("failed", &self.failed)
            .field("wal_pages", &self.wal_pages.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteWriter {
    /// Applies a batch in one transaction, durable when this returns (the
    /// WAL is synced inside the commit), then looks after the WAL.
    pub(super) fn commit(&mut self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
        if self.failed {
            return Err(sync_failed_error());
        }
        let result = self.apply(batch);
        match &result {
            Ok((_, last_seq)) => {
                self.durable_seq.fetch_max(*last_seq, Ordering::AcqRel);
            }
            Err(StoreError::DiskFull(_)) => {
                // Nothing of the batch was written; later commits succeed
                // once there is space.
                refusals::count(Refusal::DiskFull);
                self.wal_bound.report_disk_full();
                tracing::error!("store commit failed: the disk is full");
            }
            Err(e) => tracing::error!(error = %e, "store commit failed"),
        }
        self.after_commit(result.is_err());
        result.map(|(outcome, _)| outcome)
    }

    /// Checkpoints as the WAL grows: wakes the checkpointer once per
    /// `checkpoint_pages` of growth (or after a failed commit, which may
    /// have been a full disk), and checkpoints inside the commit only past
    /// the WAL's bound; without a checkpointer thread every
    /// `checkpoint_pages`, enforcing the bound too.
    fn after_commit(&mut self, failed: bool) {
        let pages = self.wal_pages.load(Ordering::Relaxed);
        if pages < self.kicked_at {
            // The WAL restarted from its beginning.
            self.kicked_at = 0;
        }
        let due = pages >= self.kicked_at.saturating_add(self.checkpoint_pages);
        match &self.checkpointer {
            Some(checkpointer) => {
                if due || failed {
                    self.kicked_at = pages;
                    checkpointer.kick();
                }
                if pages >= self.bound_pages {
                    self.checkpoint_inline();
                }
            }
            None => {
                if due || pages >= self.bound_pages {
                    self.kicked_at = pages;
                    self.checkpoint_inline();
                }
                self.wal_bound.enforce(&self.conn);
            }
        }
    }

    fn checkpoint_inline(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::debug!(error = %e, "WAL checkpoint in a commit failed");
        }
    }

    /// Applies one batch in one transaction; returns the outcome and the
    /// newest seq after it.
    fn apply(&mut self, mut batch: CommitBatch) -> Result<(CommitOutcome, u64), StoreError> {
        let now = now_millis();
        let window_start = now.saturating_sub(self.dedup_window_ms);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let mut outcome = Vec::with_capacity(batch.events.len());
        let mut stored = Vec::with_capacity(batch.events.len());
        let mut client_ids_in_batch = 0usize;
        let mut last_seq = self.last_seq;
        {
            let mut insert_event = tx
                .prepare_cached(
                    "INSERT INTO events (seq, id, topic, ts, key, payload, headers, tags, caused_by, sid, tord)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(backend)?;
            // Per topic (semantics.md §3): the same id on another topic is
            // another event.
            let mut find_dedup = tx
                .prepare_cached(
                    "SELECT seq FROM dedup WHERE topic = ?1 AND id = ?2 AND stored_at >= ?3",
                )
                .map_err(backend)?;
            let mut put_dedup = tx
                .prepare_cached(
                    "INSERT INTO dedup (topic, id, seq, stored_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (topic, id) DO UPDATE SET seq = excluded.seq, stored_at = excluded.stored_at",
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
            // (topic, id) → seq of the publisher ids stored by this batch.
            let mut batch_ids: HashMap<(String, String), u64> = HashMap::new();
            for event in std::mem::take(&mut batch.events) {
                if event.client_id {
                    client_ids_in_batch += 1;
                    let in_batch =
                        batch_ids.get(&(event.topic.as_str().to_owned(), event.id.clone()));
                    let earlier = match in_batch {
                        Some(&seq) => Some(seq),
                        None => find_dedup
                            .query_row(
                                params![event.topic.as_str(), event.id, bits_to_sql(window_start)],
                                |row| row.get::<_, i64>(0),
                            )
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
                        .execute(params![
                            event.topic.as_str(),
                            event.id,
                            last_seq,
                            bits_to_sql(now)
                        ])
                        .map_err(backend)?;
                    batch_ids.insert((event.topic.as_str().to_owned(), event.id.clone()), seq);
                }
                if let Some(key) = &event.key {
                    put_latest
                        .execute(params![event.topic.as_str(), key, last_seq])
                        .map_err(backend)?;
                }
                outcome.push(Appended::Stored {
                    id: event.id.clone(),
                    seq,
                });
                stored.push(event.into_stored(seq));
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
        }
        apply_group_changes(&tx, &batch)?;
        // Bounded pruning: at least as many as this batch could have added,
        // so the table tracks the window instead of growing; only when an
        // entry may have expired (none: no statement at all).
        let mut dedup_oldest = self.dedup_oldest;
        if client_ids_in_batch > 0 {
            let now = bits_to_sql(now);
            dedup_oldest = Some(dedup_oldest.map_or(now, |oldest| oldest.min(now)));
        }
        let window_start = bits_to_sql(window_start);
        if dedup_oldest.is_some_and(|oldest| oldest < window_start) {
            let prune_limit = self.prune_per_commit.max(2 * client_ids_in_batch);
            let pruned = tx
                .prepare_cached(
                    "DELETE FROM dedup WHERE (topic, id) IN
                        (SELECT topic, id FROM dedup WHERE stored_at < ?1 ORDER BY stored_at LIMIT ?2)",
                )
                .and_then(|mut s| s.execute(params![window_start, prune_limit as i64]))
                .map_err(backend)?;
            if pruned < prune_limit {
                // Nothing expired is left: where the next expiry is.
                dedup_oldest = tx
                    .prepare_cached("SELECT min(stored_at) FROM dedup")
                    .and_then(|mut s| s.query_row([], |row| row.get(0)))
                    .map_err(backend)?;
            }
        }
        if let Err(e) = tx.commit() {
            if is_sync_failure(&e) {
                // A full disk normally shows at write time (SQLITE_FULL,
                // which recovers), not here.
                self.failed = true;
                tracing::error!(error = %e, "syncing the WAL failed; the store stops writing");
                return Err(StoreError::Backend(format!("syncing the WAL failed: {e}")));
            }
            return Err(backend(e));
        }
        self.last_seq = last_seq;
        self.dedup_oldest = dedup_oldest;
        Ok((
            CommitOutcome {
                events: outcome,
                stored,
            },
            from_sql_int(last_seq),
        ))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Backend(format!("cannot encode an event field: {e}")))
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        // The checkpointer first, so the final checkpoint is this one.
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
        // The counter's floor for the next open (schema version 6).
        if !self.failed
            && let Err(e) = self.conn.execute(
                "UPDATE meta SET value = max(value, ?1) WHERE name = 'last_seq'",
                [self.last_seq],
            )
        {
            tracing::warn!(error = %e, "recording the last seq failed");
        }
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
        // The fields drop in order: the connection closes, then the
        // data dir's lock is released (another hub may open the folder).
    }
}

/// Whether a commit failed in the WAL's fsync: the kernel may have dropped
/// the dirty pages, so nothing written since can be trusted.
pub(super) fn is_sync_failure(e: &rusqlite::Error) -> bool {
    e.sqlite_error().is_some_and(|e| {
        e.extended_code == rusqlite::ffi::SQLITE_IOERR_FSYNC
            || e.extended_code == rusqlite::ffi::SQLITE_IOERR_DIR_FSYNC
    })
}

pub(super) fn sync_failed_error() -> StoreError {
    StoreError::Backend("an earlier WAL sync failed; restart the hub".into())
}
