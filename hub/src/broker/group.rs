//! One durable consumer group (semantics.md §4), as a plain state machine
//! owned by the broker task: no IO here except pushing frames into member
//! send queues, so every rule can be followed in one place.
//!
//! State: a `cursor` (every event with `seq <= cursor` is done), and a
//! window of the matching events after it, each `Ready`, `Blocked` (no
//! connected member may read it: it waits for one that may, semantics.md
//! §2), `Delayed` (NACKed, waiting for its redelivery time), `Inflight`
//! (held by one member until its ack deadline) or `Done` (acknowledged or
//! dead-lettered). The cursor moves only over a fully done prefix.
//!
//! The window keeps metadata; an event's body is held (in the shared group
//! buffer, [`GroupBudget`]) only from when it is read for a delivery until
//! it goes out: the frame carries it then, and a redelivery reads it from
//! the store again. The window is filled from live commits while the group
//! is caught up and from store pages when it is behind (new group from
//! `earliest`, restart, members that fell behind), never beyond what its
//! members can soon take (see `fill.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use promhub_core::frames::{DeliveryCtx, Group as GroupName, encode_event_delivery};
use promhub_core::{Action, Pattern, Policy, Topic};

use self::claims::ClaimState;
pub(crate) use self::claims::ClaimWrites;
use super::budget::GroupBudget;
use super::committed::Committed;
use crate::config::GroupDefaults;
use crate::limits::COUNTERS;
use crate::metrics::GroupCounters;
use crate::store::{DeadLetter, DeadLetterRef, GroupKey, GroupRecord};
use promhub_core::frames::Millis;

pub(crate) type ConnId = u64;
pub(crate) type GroupId = u32;

/// A pending timer: (due on the broker's monotonic ms clock, group, seq).
pub(crate) type TimerKey = (u64, GroupId, u64);

/// What the group needs from the broker while it changes state.
pub(crate) struct Effects<'a> {
    /// Milliseconds on the broker's monotonic clock (timers).
    pub now_mono: u64,
    /// Milliseconds since the Unix epoch (what clients see).
    pub now_wall: u64,
    pub timers: &'a mut BTreeSet<TimerKey>,
    pub counters: &'a GroupCounters,
    /// The group buffer shared by every group.
    pub budget: &'a mut GroupBudget,
}

/// Why a dead letter could not be replayed into its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplayRefused {
    #[error("the group has no connected member to deliver to")]
    NoMembers,
    #[error("the event is already being delivered again")]
    AlreadyPending,
}

/// A member as the ops API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberView {
    pub conn: ConnId,
    pub inflight: u32,
    pub max_inflight: u32,
}

/// A loaded group's live state, for the ops API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupView {
    pub key: GroupKey,
    pub cursor: u64,
    pub members: Vec<MemberView>,
    /// Events after the cursor that are done (acked out of order or
    /// dead-lettered), in seq order.
    pub done_above: Vec<u64>,
    /// The oldest event after the cursor that is not done, when the window
    /// holds it: (seq, ts).
    pub oldest_pending: Option<(u64, Millis)>,
    /// Dead letters being delivered again.
    pub replaying: usize,
    /// Events no connected member may read (semantics.md §2): pending
    /// until a member that may read them joins.
    pub blocked: usize,
    /// The oldest of them.
    pub oldest_blocked: Option<u64>,
    /// Bytes the group holds in the group buffer.
    pub buffered_bytes: usize,
    /// ACKs and deliveries since the group was loaded (throughput).
    pub acked: u64,
    pub delivered: u64,
    /// Events after the cursor that another hub holds (several hubs).
    pub held_elsewhere: usize,
}

/// The entry of `seq` in the window or among replays, through field
/// borrows only (so the group's other fields stay usable).
macro_rules! entry_mut {
    ($group:expr, $seq:expr) => {
        if $group.window.contains_key(&$seq) {
            $group.window.get_mut(&$seq)
        } else {
            $group.replays.get_mut(&$seq)
        }
    };
}

macro_rules! entry {
    ($group:expr, $seq:expr) => {
        $group
            .window
            .get(&$seq)
            .or_else(|| $group.replays.get(&$seq))
    };
}

/// An `ACK`, `NACK` or `WORKING` as the group sees it: who sent it and
/// which delivery it names. It acts only on a delivery that connection
/// holds (semantics.md §4), found by `seq` when the frame carried one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settle<'a> {
    pub conn: ConnId,
    pub id: &'a str,
    pub seq: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Ready,
    /// No connected member may read it (ACL): pending until one may.
    Blocked,
    Delayed {
        due: u64,
    },
    Inflight {
        conn: ConnId,
        due: u64,
    },
    Done,
    /// Being claimed for this hub (several hubs share the group).
    Claiming,
    /// Another hub holds it (several hubs share the group).
    Elsewhere,
}

/// One event after the cursor (or a replayed dead letter).
#[derive(Debug)]
struct Entry {
    id: Arc<str>,
    topic: Topic,
    ts: Millis,
    /// Bytes of the event's JSON: what a delivery costs in the group buffer.
    size: usize,
    /// The event, while the group holds it for its next delivery (counted
    /// in the group buffer); `None` once it went out, or while blocked.
    body: Option<Arc<Committed>>,
    /// Deliveries so far.
    attempts: u32,
    state: EntryState,
    /// A dead letter replayed by the ops API: its dead-letter record is
    /// removed when it is acknowledged (and replaced if it dies again).
    replay: bool,
    /// A delivery of it failed (NACK, deadline, disconnect): its attempts
    /// are part of the group's durable state until it is done.
    failed: bool,
    /// This hub holds its delivery claim (see `claims.rs`; always treated
    /// as held when the group is this hub's alone).
    claimed: bool,
}

impl Entry {
    fn new(event: &Committed, attempts: u32) -> Self {
        Entry {
            id: Arc::clone(&event.id),
            topic: event.topic.clone(),
            ts: event.ts,
            size: event.json.get().len(),
            body: None,
            attempts,
            state: EntryState::Ready,
            replay: false,
            failed: attempts > 0,
            claimed: false,
        }
    }
}

/// Where the group gets its next events from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Caught up: live commits are appended as they come.
    Live,
    /// Events after `fetched_upto` must be read from the store.
    Behind,
    /// A store read is in flight.
    Fetching,
}

/// Longest NACK delay honoured (a client cannot park an event for ever).
const MAX_NACK_DELAY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug)]
pub(crate) struct GroupState {
    pub id: GroupId,
    pub key: GroupKey,
    pub pattern: Pattern,
    pub name: GroupName,
    defaults: Arc<GroupDefaults>,
    /// Every event with `seq <= cursor` is done.
    cursor: u64,
    /// Every event with `seq <= fetched_upto` has been examined (put in the
    /// window if it matches and is not done).
    fetched_upto: u64,
    source: Source,
    window: BTreeMap<u64, Entry>,
    /// Replayed dead letters the window does not hold (at or below the
    /// cursor, or skipped as done after a restart). They never hold the
    /// cursor back.
    replays: BTreeMap<u64, Entry>,
    /// Entries waiting for a member, in `seq` order.
    ready: BTreeSet<u64>,
    /// Entries no member may read now.
    blocked: BTreeSet<u64>,
    /// Inflight entries by event id, for ACK / NACK / WORKING.
    inflight_ids: HashMap<Arc<str>, u64>,
    members: Vec<Member>,
    /// Round-robin position for load sharing.
    next_member: usize,
    /// Bytes this group holds in the group buffer (bodies, deliveries,
    /// reservations for reads in flight).
    held: usize,
    /// Of which deliveries not yet settled.
    inflight_bytes: usize,
    /// Of which reserved for the store read in flight.
    reserved: usize,
    /// The next ready entry has no body: read it from the store.
    wants_bodies: bool,
    /// Bodies being read from the store (their seqs and reserved bytes).
    loading: Option<(Vec<u64>, usize)>,
    /// Done marks above the cursor loaded from the store: these events are
    /// skipped when read again.
    restored_done: BTreeSet<u64>,
    /// Attempts used by failed events above the cursor, loaded from the
    /// store and not read into the window yet.
    restored_attempts: BTreeMap<u64, u32>,
    /// Attempts to record (`> 0`) or forget (`0`) at the next flush.
    attempt_changes: BTreeMap<u64, u32>,
    /// Done marks above the cursor not yet made durable.
    new_marks: Vec<u64>,
    dead_letters: Vec<DeadLetter>,
    /// Replayed dead letters acknowledged since the last flush.
    removed_dead_letters: Vec<DeadLetterRef>,
    /// ACKs and deliveries since loaded, for the ops API's throughput.
    acked: u64,
    delivered: u64,
    dirty: bool,
    /// Delivery claims, when members on other hubs share the group.
    claims: ClaimState,
}

impl GroupState {
    /// A group as stored (or just created with `cursor`).
    pub fn new(
        id: GroupId,
        pattern: Pattern,
        name: GroupName,
        record: GroupRecord,
        defaults: Arc<GroupDefaults>,
        shared_by_hubs: bool,
    ) -> Self {
        let cursor = record.cursor;
        GroupState {
            id,
            key: record.key,
            pattern,
            name,
            defaults,
            cursor,
            fetched_upto: cursor,
            source: Source::Behind,
            window: BTreeMap::new(),
            replays: BTreeMap::new(),
            ready: BTreeSet::new(),
            blocked: BTreeSet::new(),
            inflight_ids: HashMap::new(),
            members: Vec::new(),
            next_member: 0,
            held: 0,
            inflight_bytes: 0,
            reserved: 0,
            wants_bodies: false,
            loading: None,
            restored_done: record
                .done_above
                .into_iter()
                .filter(|&seq| seq > cursor)
                .collect(),
            restored_attempts: record
                .attempts_above
                .into_iter()
                .filter(|&(seq, _)| seq > cursor)
                .collect(),
            attempt_changes: BTreeMap::new(),
            new_marks: Vec::new(),
            dead_letters: Vec::new(),
            removed_dead_letters: Vec::new(),
            acked: 0,
            delivered: 0,
            dirty: false,
            claims: if shared_by_hubs {
                ClaimState::enabled()
            } else {
                ClaimState::default()
            },
        }
    }

    /// The group's live state for the ops API.
    pub fn view(&self) -> GroupView {
        let cursor = self.cursor;
        let mut done_above: Vec<u64> = self
            .window
            .iter()
            .filter(|&(&seq, e)| seq > cursor && e.state == EntryState::Done)
            .map(|(&seq, _)| seq)
            .chain(self.restored_done.range(cursor + 1..).copied())
            .collect();
        done_above.sort_unstable();
        done_above.dedup();
        GroupView {
            key: self.key.clone(),
            cursor,
            members: self
                .members
                .iter()
                .map(|m| MemberView {
                    conn: m.conn,
                    inflight: m.inflight,
                    max_inflight: m.opts.max_inflight,
                })
                .collect(),
            done_above,
            oldest_pending: self
                .window
                .iter()
                .find(|(_, e)| e.state != EntryState::Done)
                .map(|(&seq, e)| (seq, e.ts)),
            replaying: self.replays.len() + self.window.values().filter(|e| e.replay).count(),
            blocked: self.blocked.len(),
            oldest_blocked: self.blocked.first().copied(),
            buffered_bytes: self.held,
            acked: self.acked,
            delivered: self.delivered,
            held_elsewhere: self.held_elsewhere(),
        }
    }

    /// Delivers a dead-lettered event again (the ops API's replay), with
    /// attempts counted from 1.
    pub fn replay(
        &mut self,
        event: Arc<Committed>,
        fx: &mut Effects<'_>,
    ) -> Result<(), ReplayRefused> {
        if self.members.is_empty() {
            return Err(ReplayRefused::NoMembers);
        }
        let seq = event.seq;
        if let Some(entry) = self.window.get_mut(&seq) {
            // Dead-lettered but the cursor has not passed it yet.
            if entry.state != EntryState::Done || entry.replay {
                return Err(ReplayRefused::AlreadyPending);
            }
            entry.state = EntryState::Ready;
            entry.attempts = 0;
            entry.replay = true;
            entry.failed = false;
            // The operator's replay is this hub's to deliver.
            entry.claimed = true;
        } else {
            match self.replays.entry(seq) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    return Err(ReplayRefused::AlreadyPending);
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    let mut entry = Entry::new(&event, 0);
                    entry.replay = true;
                    entry.claimed = true;
                    slot.insert(entry);
                }
            }
        }
        // The operator's event is at hand: hold it (a replay is not refused
        // for want of room).
        let body = fx.budget.hold_body(self.id, &mut self.held, &event, true);
        if let Some(entry) = entry_mut!(self, seq) {
            entry.body = body;
        }
        fx.counters.replays.inc();
        self.ready.insert(seq);
        self.pump(fx);
        Ok(())
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    pub fn is_member(&self, conn: ConnId) -> bool {
        self.members.iter().any(|m| m.conn == conn)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// True while a store read for this group is in flight.
    pub fn is_reading(&self) -> bool {
        self.source == Source::Fetching || self.loading.is_some() || self.claims.busy()
    }

    /// Adds a member, or updates the options and policy of an existing one.
    pub fn add_member(&mut self, member: Member, fx: &mut Effects<'_>) {
        match self.members.iter_mut().find(|m| m.conn == member.conn) {
            Some(existing) => {
                existing.opts = member.opts;
                existing.policy = member.policy;
                existing.send_queue = member.send_queue;
            }
            None => self.members.push(member),
        }
        // The newcomer may read what nobody could.
        self.unblock();
        self.pump(fx);
    }

    /// Removes a member (unsubscribe or disconnect); its inflight events go
    /// back to the others with their attempt counted.
    pub fn remove_member(&mut self, conn: ConnId, fx: &mut Effects<'_>) {
        let Some(index) = self.members.iter().position(|m| m.conn == conn) else {
            return;
        };
        let member = self.members.remove(index);
        if self.next_member > index {
            self.next_member -= 1;
        }
        let held: Vec<u64> = self
            .window
            .iter()
            .chain(self.replays.iter())
            .filter(|(_, e)| matches!(e.state, EntryState::Inflight { conn: c, .. } if c == conn))
            .map(|(&seq, _)| seq)
            .collect();
        for seq in held {
            // `release` no longer finds the member: give its bytes back to
            // the connection here (its other groups go on).
            if let Some(entry) = entry!(self, seq) {
                member.remove_bytes(entry.size);
            }
            self.release(seq, fx);
            self.fail(seq, member.opts.max_deliver, "connection closed", fx);
        }
        if self.members.is_empty() {
            self.on_last_member_gone(fx);
        } else {
            self.pump(fx);
        }
    }

    pub fn set_policy(&mut self, conn: ConnId, policy: &Arc<Policy>, fx: &mut Effects<'_>) {
        if let Some(member) = self.members.iter_mut().find(|m| m.conn == conn) {
            member.policy = Arc::clone(policy);
            self.unblock();
            self.pump(fx);
        }
    }

    /// Blocked entries get another look (a member joined or its policy
    /// changed): the next pump blocks again those nobody may read.
    fn unblock(&mut self) {
        for seq in std::mem::take(&mut self.blocked) {
            if let Some(entry) = entry_mut!(self, seq)
                && entry.state == EntryState::Blocked
            {
                entry.state = EntryState::Ready;
                self.ready.insert(seq);
            }
        }
    }

    // ---------------------------------------------------------------
    // Delivery

    /// Hands ready events, lowest `seq` first, to members with room.
    pub fn pump(&mut self, fx: &mut Effects<'_>) {
        if self.members.is_empty() {
            return;
        }
        // Claims asked for in this pump become deliveries: at most what the
        // members have room for.
        let mut claim_room = if self.claims.enabled {
            self.members
                .iter()
                .map(|m| m.opts.max_inflight.saturating_sub(m.inflight) as usize)
                .sum::<usize>()
                .saturating_sub(self.claims.to_claim.len())
        } else {
            0
        };
        while let Some(&seq) = self.ready.first() {
            let Some(entry) = entry!(self, seq) else {
                self.ready.remove(&seq);
                continue;
            };
            let unclaimed = self.claims.enabled && !entry.claimed;
            let next_attempt = entry.attempts + 1;
            let topic = &entry.topic;
            let count = self.members.len();
            let mut chosen = None;
            let mut anyone_allowed = false;
            let mut held_by_bytes = false;
            for offset in 0..count {
                let index = (self.next_member + offset) % count;
                let member = &self.members[index];
                if !member
                    .policy
                    .allows(Action::Subscribe, topic, Some(self.name.as_str()))
                {
                    continue;
                }
                anyone_allowed = true;
                if member.inflight >= member.opts.max_inflight {
                    continue;
                }
                if member.over_byte_bound() {
                    held_by_bytes = true;
                    continue;
                }
                chosen = Some(index);
                break;
            }
            match chosen {
                // Another hub may want it: claim it first (in seq order, one
                // claim request at a time; see `claims.rs`).
                Some(_) if unclaimed => {
                    if !self.claims.can_claim() || claim_room == 0 {
                        break;
                    }
                    claim_room -= 1;
                    self.ready.remove(&seq);
                    if let Some(entry) = entry_mut!(self, seq) {
                        entry.state = EntryState::Claiming;
                    }
                    self.claims.to_claim.push((seq, next_attempt));
                }
                // Its body was given out with an earlier delivery: read it
                // again (in order: nothing after it goes first).
                Some(_) if entry.body.is_none() => {
                    self.wants_bodies = true;
                    break;
                }
                Some(index) => {
                    if !self.deliver(seq, index, fx) {
                        // The group buffer is full: wait for room.
                        break;
                    }
                    self.next_member = index + 1;
                }
                // semantics.md §2: no connected member may read it; it stays
                // pending (holding the cursor) until one that may joins.
                None if !anyone_allowed => {
                    self.ready.remove(&seq);
                    self.block(seq, fx);
                }
                // Everyone allowed is at max_inflight (or their byte
                // bound): wait for an ACK. The group lags, nothing is lost.
                None => {
                    if held_by_bytes {
                        COUNTERS.group_lagging();
                    }
                    break;
                }
            }
        }
        self.advance();
    }

    fn block(&mut self, seq: u64, fx: &mut Effects<'_>) {
        let Some(entry) = entry_mut!(self, seq) else {
            return;
        };
        entry.state = EntryState::Blocked;
        if entry.body.take().is_some() {
            fx.budget.release_body(&mut self.held, seq, entry.size);
        }
        self.blocked.insert(seq);
    }

    /// Sends a ready entry (with its body) to a member; false when the
    /// group buffer has no room for it.
    fn deliver(&mut self, seq: u64, member_index: usize, fx: &mut Effects<'_>) -> bool {
        let member = &mut self.members[member_index];
        // `pump` reads a missing body first.
        let Some(entry) = entry_mut!(self, seq).filter(|e| e.body.is_some()) else {
            return true;
        };
        if !fx.budget.start_delivery(
            self.id,
            &mut self.held,
            self.inflight_bytes,
            seq,
            entry.size,
        ) {
            return false;
        }
        let Some(body) = entry.body.take() else {
            return true;
        };
        self.inflight_bytes += entry.size;
        self.ready.remove(&seq);
        entry.attempts += 1;
        fx.counters.deliveries.inc();
        self.delivered += 1;
        if entry.attempts > 1 {
            fx.counters.redeliveries.inc();
        }
        let due = fx.now_mono + member.opts.ack_timeout_ms;
        entry.state = EntryState::Inflight {
            conn: member.conn,
            due,
        };
        fx.timers.insert((due, self.id, seq));
        self.inflight_ids.insert(Arc::clone(&entry.id), seq);
        member.inflight += 1;
        member.add_bytes(entry.size);
        let ctx = DeliveryCtx {
            attempt: entry.attempts,
            ack_deadline: Some(fx.now_wall + member.opts.ack_timeout_ms),
            snapshot: None,
        };
        let frame = encode_event_delivery(&self.pattern, Some(&self.name), &body.json, &ctx);
        // A closing connection drops the frame; its disconnect then puts the
        // event back.
        member.send_queue.push(frame);
        true
    }

    /// Takes an inflight entry back from its member (ACK, NACK, deadline,
    /// disconnect). Returns the holder.
    fn release(&mut self, seq: u64, fx: &mut Effects<'_>) -> Option<ConnId> {
        let entry = entry_mut!(self, seq)?;
        let EntryState::Inflight { conn, due } = entry.state else {
            return None;
        };
        fx.timers.remove(&(due, self.id, seq));
        if self.inflight_ids.get(&entry.id) == Some(&seq) {
            self.inflight_ids.remove(&entry.id);
        }
        entry.state = EntryState::Ready;
        self.inflight_bytes = self.inflight_bytes.saturating_sub(entry.size);
        fx.budget.end_delivery(&mut self.held, entry.size);
        if let Some(member) = self.members.iter_mut().find(|m| m.conn == conn) {
            member.inflight = member.inflight.saturating_sub(1);
            member.remove_bytes(entry.size);
        }
        Some(conn)
    }

    fn holder_max_deliver(&self, conn: ConnId) -> u32 {
        self.members
            .iter()
            .find(|m| m.conn == conn)
            .map_or(self.defaults.max_deliver, |m| m.opts.max_deliver)
    }

    /// A delivery failed (deadline, disconnect): redeliver now, or dead-letter
    /// once `max_deliver` attempts are used up.
    fn fail(&mut self, seq: u64, max_deliver: u32, reason: &str, fx: &mut Effects<'_>) {
        self.record_failure(seq);
        let Some(entry) = entry!(self, seq) else {
            return;
        };
        if entry.attempts >= max_deliver {
            self.dead_letter(seq, reason, fx);
        } else {
            self.ready.insert(seq);
        }
    }

    /// Makes a failed delivery's attempt count durable, so it survives the
    /// group being loaded again.
    fn record_failure(&mut self, seq: u64) {
        if let Some(entry) = self.window.get_mut(&seq) {
            entry.failed = true;
            self.attempt_changes.insert(seq, entry.attempts);
            self.dirty = true;
        }
    }

    fn dead_letter(&mut self, seq: u64, reason: &str, fx: &mut Effects<'_>) {
        let Some(entry) = entry!(self, seq) else {
            return;
        };
        tracing::info!(
            group = %self.name, pattern = %self.pattern, seq,
            attempts = entry.attempts, reason, "event dead-lettered"
        );
        self.dead_letters.push(DeadLetter {
            key: self.key.clone(),
            seq,
            event_id: entry.id.to_string(),
            reason: reason.to_owned(),
            attempts: entry.attempts,
            dead_at: fx.now_wall,
        });
        fx.counters.dead_letters.inc();
        self.dirty = true;
        self.ready.remove(&seq);
        // A replay that died again: the new record replaces the old one.
        self.finish_unacknowledged(seq, fx);
    }

    /// Marks an entry done without an ACK (dead-lettered, or gone from the
    /// store before its redelivery): a replayed dead letter keeps its record.
    fn finish_unacknowledged(&mut self, seq: u64, fx: &mut Effects<'_>) {
        if let Some(entry) = entry_mut!(self, seq) {
            entry.replay = false;
        }
        self.complete(seq, fx);
    }

    /// Marks an entry done (it stays in the window until the prefix before
    /// it is done too; a replay outside the window is dropped). An
    /// acknowledged replay removes its dead letter.
    fn complete(&mut self, seq: u64, fx: &mut Effects<'_>) {
        self.ready.remove(&seq);
        self.blocked.remove(&seq);
        let replayed = if let Some(entry) = self.window.get_mut(&seq) {
            entry.state = EntryState::Done;
            if std::mem::take(&mut entry.claimed) && self.claims.enabled {
                self.claims.finished.push(seq);
            }
            if entry.body.take().is_some() {
                fx.budget.release_body(&mut self.held, seq, entry.size);
            }
            self.new_marks.push(seq);
            self.dirty = true;
            if std::mem::take(&mut entry.failed) {
                self.attempt_changes.insert(seq, 0);
            }
            std::mem::take(&mut entry.replay)
        } else {
            match self.replays.remove(&seq) {
                Some(entry) => {
                    if entry.body.is_some() {
                        fx.budget.release_body(&mut self.held, seq, entry.size);
                    }
                    entry.replay
                }
                None => false,
            }
        };
        if replayed {
            self.removed_dead_letters.push(DeadLetterRef {
                key: self.key.clone(),
                seq,
            });
            self.dirty = true;
        }
    }

    /// Moves the cursor over the done prefix of the window.
    fn advance(&mut self) {
        while let Some(first) = self.window.first_entry() {
            if first.get().state != EntryState::Done {
                break;
            }
            first.remove();
        }
        let cursor = match self.window.first_key_value() {
            Some((&seq, _)) => seq.saturating_sub(1),
            None => self.fetched_upto,
        };
        if cursor > self.cursor {
            self.cursor = cursor;
            self.dirty = true;
            if self
                .restored_done
                .first()
                .is_some_and(|&first| first <= cursor)
            {
                self.restored_done = self.restored_done.split_off(&(cursor + 1));
            }
            if self
                .restored_attempts
                .first_key_value()
                .is_some_and(|(&first, _)| first <= cursor)
            {
                // Never read again (e.g. removed by retention): forget them.
                let kept = self.restored_attempts.split_off(&(cursor + 1));
                for (seq, _) in std::mem::replace(&mut self.restored_attempts, kept) {
                    self.attempt_changes.insert(seq, 0);
                }
            }
        }
    }
}

mod answers;
mod claims;
mod fill;
mod member;
pub(crate) use fill::FETCH_SCAN_LIMIT;
pub(crate) use member::{Member, MemberOpts};

#[cfg(test)]
mod tests;
