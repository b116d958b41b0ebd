//! Retention in the embedded store: one [`Store::apply_retention`] call is
//! one write transaction on the write connection.
//!
//! [`Store::apply_retention`]: crate::store::Store::apply_retention

use std::sync::atomic::Ordering;

use promhub_core::Topic;
use promhub_core::frames::Millis;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::writer::SqliteWriter;
use super::{backend, from_sql_int, seq_to_sql};
use crate::store::{
    PrefixWalk, RETENTION_TOPICS_PER_CALL, RetentionPass, RetentionPolicy, StoreError,
};

impl SqliteWriter {
    /// One retention call (see [`Store::apply_retention`]) in one
    /// transaction. The `topics` row stays (its counter keeps numbering
    /// `tord`), so a topic's retained events keep consecutive ordinals.
    /// Only durable events are removed.
    pub(super) fn retain(
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
