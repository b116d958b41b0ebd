//! Filling a group's window: live commits while it is caught up, store
//! pages while it is behind, and the bodies of events whose delivery needs
//! them again (redeliveries, events that were blocked).
//!
//! A group reads ahead only what its members can soon take: ready entries
//! up to the members' `max_inflight` together (at most [`FETCH_PAGE`]),
//! each body held in the group buffer. A group whose members are full stops
//! appending live events and falls behind; it reads them from the store
//! once its members have room again. So a group of members that never read
//! holds its in-flight deliveries and nothing more.

use std::sync::Arc;

use super::super::committed::Committed;
use super::{Effects, Entry, EntryState, GroupState, Source};

/// Events read per store page at most, and the read-ahead of a group.
pub(crate) const FETCH_PAGE: usize = 1000;
/// Rows a sparse pattern may scan per page.
pub(crate) const FETCH_SCAN_LIMIT: usize = 20_000;
/// Bytes one store page may bring at most (within the group's share): the
/// read and its serialization are transient copies on top of the buffer.
const FETCH_BYTES: usize = 1024 * 1024;
/// Bodies read again per store read at most.
const BODIES_PER_READ: usize = 256;

/// A page to read from the store for a group that is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FetchRequest {
    pub after: u64,
    pub limit: usize,
    /// Stop after the event that reaches this many bytes (reserved in the
    /// group buffer).
    pub max_bytes: usize,
}

impl GroupState {
    /// How many ready entries the group keeps: what its members can take at
    /// once, at most a page.
    fn read_ahead(&self) -> usize {
        let room: usize = self
            .members
            .iter()
            .map(|m| m.opts.max_inflight as usize)
            .sum();
        room.clamp(1, FETCH_PAGE)
    }

    /// Room for one more examined event: within the window (head-of-line
    /// bound) and the read-ahead.
    fn has_room(&self) -> bool {
        self.window.len() < self.defaults.window && self.ready.len() < self.read_ahead()
    }

    /// Appends live commits (matching ones, in `seq` order) while caught
    /// up; every event up to `upto` has been committed. A group that cannot
    /// take an event (read-ahead full, group buffer full) falls behind at
    /// it and reads it from the store later.
    pub fn on_live(&mut self, events: &[Arc<Committed>], upto: u64, fx: &mut Effects<'_>) {
        if self.source != Source::Live {
            return;
        }
        // Without members nobody needs the events now; read them from the
        // store when someone subscribes instead of holding them in memory.
        if self.members.is_empty() {
            self.source = Source::Behind;
            return;
        }
        let mut caught_up = true;
        for event in events {
            if event.seq <= self.fetched_upto {
                continue;
            }
            if !self.has_room() {
                // Hand out what is ready first; that may make room.
                self.pump(fx);
            }
            if !self.has_room() || !self.examine(event, false, fx) {
                self.source = Source::Behind;
                caught_up = false;
                break;
            }
        }
        if caught_up {
            self.fetched_upto = self.fetched_upto.max(upto);
        }
        self.advance();
        self.pump(fx);
    }

    /// Puts one event in the window when it matches and is not already
    /// done, holding its body (`force`: bytes already reserved). False when
    /// the group buffer refused the body: the event was not examined.
    fn examine(&mut self, event: &Arc<Committed>, force: bool, fx: &mut Effects<'_>) -> bool {
        if !self.pattern.matches(&event.topic)
            || self.restored_done.contains(&event.seq)
            || self.replays.contains_key(&event.seq)
        {
            self.fetched_upto = event.seq;
            return true;
        }
        let Some(body) = fx.budget.hold_body(self.id, &mut self.held, event, force) else {
            return false;
        };
        self.fetched_upto = event.seq;
        // A failed event of a group loaded again counts its attempts on.
        let attempts = self.restored_attempts.remove(&event.seq).unwrap_or(0);
        let mut entry = Entry::new(event, attempts);
        entry.body = Some(body);
        self.window.insert(event.seq, entry);
        self.ready.insert(event.seq);
        true
    }

    /// The next store page to read, if the group is behind, has members,
    /// room for more and bytes in the group buffer. Marks the group as
    /// fetching.
    pub fn start_fetch(&mut self, fx: &mut Effects<'_>) -> Option<FetchRequest> {
        if self.source != Source::Behind || self.members.is_empty() {
            return None;
        }
        let read_ahead = self.read_ahead();
        // Half empty before reading more: pages, not one event per ACK.
        if self.ready.len() * 2 > read_ahead {
            return None;
        }
        let room = self
            .defaults
            .window
            .saturating_sub(self.window.len())
            .min(read_ahead - self.ready.len());
        if room == 0 {
            return None;
        }
        let want = FETCH_BYTES.min(fx.budget.limit() / 4).max(1);
        let max_bytes = fx.budget.reserve(self.id, &mut self.held, want)?;
        self.reserved += max_bytes;
        self.source = Source::Fetching;
        Some(FetchRequest {
            after: self.fetched_upto,
            limit: room.min(FETCH_PAGE),
            max_bytes,
        })
    }

    /// A store page arrived: `events` matched the pattern, and every seq up
    /// to `last_examined` was looked at. `head` is the newest seq the broker
    /// has seen committed.
    pub fn on_fetched(
        &mut self,
        events: &[Arc<Committed>],
        last_examined: u64,
        head: u64,
        fx: &mut Effects<'_>,
    ) {
        let reserved = std::mem::take(&mut self.reserved);
        if self.members.is_empty() {
            // Everyone left meanwhile: read it again when someone comes.
            fx.budget.unreserve(&mut self.held, reserved);
            self.source = Source::Behind;
            return;
        }
        for event in events {
            if event.seq > self.fetched_upto {
                self.examine(event, true, fx);
            }
        }
        // The bodies are held now; the reservation goes back.
        fx.budget.unreserve(&mut self.held, reserved);
        self.fetched_upto = self.fetched_upto.max(last_examined);
        self.source = if self.fetched_upto >= head {
            Source::Live
        } else {
            Source::Behind
        };
        self.advance();
        self.pump(fx);
    }

    /// A store read failed: try again later.
    pub fn on_fetch_failed(&mut self, fx: &mut Effects<'_>) {
        let reserved = std::mem::take(&mut self.reserved);
        fx.budget.unreserve(&mut self.held, reserved);
        self.source = Source::Behind;
    }

    /// Bodies to read from the store for the next deliveries, lowest seq
    /// first, as far as the group buffer admits them (one at least).
    pub fn start_body_load(&mut self, fx: &mut Effects<'_>) -> Option<Vec<u64>> {
        if !self.wants_bodies || self.loading.is_some() || self.members.is_empty() {
            return None;
        }
        let mut seqs = Vec::new();
        let mut bytes = 0;
        for &seq in &self.ready {
            if seqs.len() == BODIES_PER_READ {
                break;
            }
            let Some(entry) = self.window.get(&seq).or_else(|| self.replays.get(&seq)) else {
                continue;
            };
            if entry.body.is_some() {
                continue;
            }
            if !fx.budget.reserve_exact(self.id, &mut self.held, entry.size) {
                break;
            }
            bytes += entry.size;
            seqs.push(seq);
        }
        if seqs.is_empty() {
            return None;
        }
        self.wants_bodies = false;
        self.loading = Some((seqs.clone(), bytes));
        Some(seqs)
    }

    /// Bodies read for [`GroupState::start_body_load`]. A requested event
    /// the store no longer has (removed by retention after it was handed
    /// out) cannot be delivered again: it is done.
    pub fn on_bodies(&mut self, events: &[Arc<Committed>], fx: &mut Effects<'_>) {
        let Some((requested, reserved)) = self.loading.take() else {
            return;
        };
        let members = !self.members.is_empty();
        for seq in requested {
            let found = events.iter().find(|e| e.seq == seq);
            let Some(entry) = self.window.get(&seq).or_else(|| self.replays.get(&seq)) else {
                continue;
            };
            if entry.state != EntryState::Ready || entry.body.is_some() {
                continue;
            }
            match found {
                Some(event) if members => {
                    let body = fx.budget.hold_body(self.id, &mut self.held, event, true);
                    if let Some(entry) = entry_mut!(self, seq) {
                        entry.body = body;
                    }
                }
                Some(_) => {}
                None => {
                    tracing::warn!(
                        group = %self.name, pattern = %self.pattern, seq,
                        "an event to deliver again is no longer stored (retention); skipped"
                    );
                    self.finish_unacknowledged(seq, fx);
                }
            }
        }
        fx.budget.unreserve(&mut self.held, reserved);
        self.advance();
        self.pump(fx);
    }

    /// Reading bodies failed: the next pump asks again.
    pub fn on_bodies_failed(&mut self, fx: &mut Effects<'_>) {
        if let Some((_, reserved)) = self.loading.take() {
            fx.budget.unreserve(&mut self.held, reserved);
        }
        self.wants_bodies = true;
    }

    /// The last member left: the group stops following live commits and
    /// lets go of the bodies it read ahead (it reads them again when a
    /// member comes).
    pub(super) fn on_last_member_gone(&mut self, fx: &mut Effects<'_>) {
        if self.source == Source::Live {
            self.source = Source::Behind;
        }
        self.wants_bodies = false;
        self.release_claims();
        for (&seq, entry) in self.window.iter_mut().chain(self.replays.iter_mut()) {
            if entry.body.take().is_some() {
                fx.budget.release_body(&mut self.held, seq, entry.size);
            }
        }
    }
}
