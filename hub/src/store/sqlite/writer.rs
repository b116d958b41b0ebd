//! The writer thread of the embedded store: it owns the only write
//! connection and turns each [`CommitBatch`] (and each retention call) into
//! one transaction; see the module docs of `sqlite.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use promhub_core::Topic;
use promhub_core::frames::Millis;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::wal::{SyncRequest, SyncStage, Syncer, WalBound, sync_failed_error};
use super::{WriteCommand, backend, bits_to_sql, from_sql_int, now_millis, seq_to_sql};
use crate::refusals::{self, Refusal};
use crate::store::{
    Appended, CommitBatch, CommitOutcome, GroupKey, PrefixWalk, RETENTION_TOPICS_PER_CALL,
    RetentionPass, RetentionPolicy, StoreError,
};

/// The writer thread's state: the only write connection.
pub(super) struct SqliteWriter {
    pub(super) conn: Connection,
    pub(super) dedup_window_ms: u64,
    pub(super) prune_per_commit: usize,
    pub(super) sync: SyncStage,
    pub(super) durable_seq: Arc<AtomicU64>,
    /// Set when a sync failed: every later commit fails.
    pub(super) failed: Arc<AtomicBool>,
    /// Told when a commit fails for lack of space.
    pub(super) wal_bound: Arc<WalBound>,
    /// No checkpointer thread: the writer enforces the WAL bound itself.
    pub(super) checkpoints_inline: bool,
    /// The data dir's lock: held by the thread that writes, released only
    /// after its last write and checkpoint (however the store goes away).
    pub(super) dir_lock: std::fs::File,
}

impl SqliteWriter {
    pub(super) fn run(mut self, commands: mpsc::Receiver<WriteCommand>) {
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
                            if let StoreError::DiskFull(_) = e {
                                // Nothing of the batch was written; later
                                // commits succeed once there is space.
                                refusals::count(Refusal::DiskFull);
                                self.wal_bound.report_disk_full();
                            }
                            tracing::error!(error = %e, "store commit failed");
                            let _ = applied.send(Err(e));
                        }
                    }
                    if self.checkpoints_inline {
                        self.wal_bound.enforce(&self.conn);
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
            "DELETE FROM dedup WHERE (topic, id) IN
                (SELECT topic, id FROM dedup WHERE stored_at < ?1 ORDER BY stored_at LIMIT ?2)",
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
            tx.prepare_cached(
                "UPDATE topics SET removed_upto = max(removed_upto, ?2) WHERE topic = ?1",
            )
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
