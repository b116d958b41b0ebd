//! Answers of members (`ACK`, `NACK`, `WORKING`), timers, and what a
//! group makes durable.

use super::{Effects, EntryState, GroupState, MAX_NACK_DELAY_MS, Settle};
use crate::store::GroupProgress;
use crate::store::writer::GroupUpdate;

impl GroupState {
    /// The seq of the delivery `settle` names, if its sender holds it: by
    /// `seq` when given (the event there must have that id), else by id.
    /// Anything else — another member's delivery, one already settled or
    /// taken back, a seq that does not match the id — is ignored.
    fn held(&self, settle: Settle<'_>) -> Option<u64> {
        let seq = match settle.seq {
            Some(seq) => seq,
            None => *self.inflight_ids.get(settle.id)?,
        };
        let entry = entry!(self, seq)?;
        match entry.state {
            EntryState::Inflight { conn, .. } if conn == settle.conn && *entry.id == *settle.id => {
                Some(seq)
            }
            _ => None,
        }
    }

    /// `ACK`: the event is done. Deliveries the sender does not hold are
    /// ignored (protocol.md).
    pub fn ack(&mut self, settle: Settle<'_>, fx: &mut Effects<'_>) {
        let Some(seq) = self.held(settle) else {
            return;
        };
        fx.counters.acks.inc();
        self.acked += 1;
        self.release(seq, fx);
        self.complete(seq, fx);
        self.advance();
        self.pump(fx);
    }

    /// `NACK`: redeliver after `delay_ms` (or the backoff), or dead-letter
    /// when final or out of attempts.
    pub fn nack(
        &mut self,
        settle: Settle<'_>,
        reason: Option<&str>,
        delay_ms: Option<u64>,
        final_: bool,
        fx: &mut Effects<'_>,
    ) {
        let Some(seq) = self.held(settle) else {
            return;
        };
        let Some(holder) = self.release(seq, fx) else {
            return;
        };
        fx.counters.nacks.inc();
        let max_deliver = self.holder_max_deliver(holder);
        let attempts = entry!(self, seq).map_or(0, |e| e.attempts);
        if final_ {
            self.dead_letter(seq, reason.unwrap_or("rejected (final NACK)"), fx);
        } else if attempts >= max_deliver {
            self.dead_letter(seq, reason.unwrap_or("NACKed"), fx);
        } else {
            self.record_failure(seq);
            let delay = delay_ms
                .unwrap_or_else(|| self.defaults.nack_backoff_ms(attempts))
                .min(MAX_NACK_DELAY_MS);
            if delay == 0 {
                self.ready.insert(seq);
            } else if let Some(entry) = entry_mut!(self, seq) {
                let due = fx.now_mono + delay;
                entry.state = EntryState::Delayed { due };
                fx.timers.insert((due, self.id, seq));
            }
        }
        self.advance();
        self.pump(fx);
    }

    /// `WORKING`: push the ack deadline back by the holder's ack timeout.
    pub fn working(&mut self, settle: Settle<'_>, fx: &mut Effects<'_>) {
        let Some(seq) = self.held(settle) else {
            return;
        };
        let Some(entry) = entry_mut!(self, seq) else {
            return;
        };
        let EntryState::Inflight { conn, due } = entry.state else {
            return;
        };
        let timeout = self
            .members
            .iter()
            .find(|m| m.conn == conn)
            .map_or(self.defaults.ack_timeout_ms, |m| m.opts.ack_timeout_ms);
        let new_due = fx.now_mono + timeout;
        fx.timers.remove(&(due, self.id, seq));
        fx.timers.insert((new_due, self.id, seq));
        entry.state = EntryState::Inflight { conn, due: new_due };
    }

    /// A timer of this group fired: an ack deadline or a NACK delay.
    pub fn on_timer(&mut self, seq: u64, due: u64, fx: &mut Effects<'_>) {
        let Some(entry) = entry_mut!(self, seq) else {
            return;
        };
        match entry.state {
            EntryState::Inflight { conn, due: d } if d == due => {
                let max_deliver = self.holder_max_deliver(conn);
                self.release(seq, fx);
                self.fail(seq, max_deliver, "ack deadline passed", fx);
            }
            EntryState::Delayed { due: d } if d == due => {
                entry.state = EntryState::Ready;
                self.ready.insert(seq);
            }
            _ => return,
        }
        self.advance();
        self.pump(fx);
    }

    // ---------------------------------------------------------------
    // Durability

    /// The progress and dead letters not yet made durable, if any.
    pub fn take_update(&mut self) -> Option<GroupUpdate> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let cursor = self.cursor;
        let mut done_above: Vec<u64> = std::mem::take(&mut self.new_marks)
            .into_iter()
            .filter(|&seq| seq > cursor)
            .collect();
        done_above.sort_unstable();
        done_above.dedup();
        Some(GroupUpdate {
            progress: Some(GroupProgress {
                key: self.key.clone(),
                cursor,
                done_above,
                attempt_changes: std::mem::take(&mut self.attempt_changes)
                    .into_iter()
                    .collect(),
            }),
            dead_letters: std::mem::take(&mut self.dead_letters),
            removed_dead_letters: std::mem::take(&mut self.removed_dead_letters),
        })
    }

    /// A flush failed: keep its content for the next one.
    pub fn restore_update(&mut self, update: GroupUpdate) {
        if let Some(progress) = update.progress {
            self.new_marks.extend(progress.done_above);
            // Changes made since the failed flush are newer.
            for (seq, attempts) in progress.attempt_changes {
                self.attempt_changes.entry(seq).or_insert(attempts);
            }
        }
        let mut dead_letters = update.dead_letters;
        dead_letters.append(&mut self.dead_letters);
        self.dead_letters = dead_letters;
        let mut removed = update.removed_dead_letters;
        removed.append(&mut self.removed_dead_letters);
        self.removed_dead_letters = removed;
        self.dirty = true;
    }
}
