//! One durable consumer group (semantics.md §4), as a plain state machine
//! owned by the broker task: no IO here except pushing frames into member
//! send queues, so every rule can be followed in one place.
//!
//! State: a `cursor` (every event with `seq <= cursor` is done), and a
//! window of the matching events after it, each `Ready`, `Delayed` (NACKed,
//! waiting for its redelivery time), `Inflight` (held by one member until
//! its ack deadline) or `Done` (acknowledged, dead-lettered or skipped by the
//! ACL). The cursor moves only over a fully done prefix. The window is
//! filled from live commits while the group is caught up, and from store
//! pages when it is behind (new group from `earliest`, restart, or a full
//! window).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use promhub_core::frames::{DeliveryCtx, Group as GroupName, encode_event_delivery};
use promhub_core::{Action, Pattern, Policy};

use super::committed::Committed;
use crate::config::GroupDefaults;
use crate::limits::COUNTERS;
use crate::metrics::GroupCounters;
use crate::send_queue::SendQueue;
use crate::store::writer::GroupUpdate;
use crate::store::{DeadLetter, DeadLetterRef, GroupKey, GroupProgress, GroupRecord};
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
    /// Events after the cursor that are done (acked out of order,
    /// dead-lettered, hidden by the ACL), in seq order.
    pub done_above: Vec<u64>,
    /// The oldest event after the cursor that is not done, when the window
    /// holds it: (seq, ts).
    pub oldest_pending: Option<(u64, Millis)>,
    /// Dead letters being delivered again.
    pub replaying: usize,
    /// ACKs and deliveries since the group was loaded (throughput).
    pub acked: u64,
    pub delivered: u64,
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

/// Per-member limits (from SUBSCRIBE opts, else the group defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberOpts {
    pub max_inflight: u32,
    pub ack_timeout_ms: u64,
    pub max_deliver: u32,
    /// Bound on the bytes of unacknowledged group deliveries of the
    /// member's connection (the group default `max_inflight_bytes`; not a
    /// SUBSCRIBE option).
    pub max_inflight_bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Member {
    pub conn: ConnId,
    pub send_queue: Arc<SendQueue>,
    pub policy: Arc<Policy>,
    pub opts: MemberOpts,
    inflight: u32,
    /// Event bytes of the unacknowledged deliveries of the connection,
    /// shared by its members of every group (only the broker task touches
    /// it; atomic because it is shared).
    inflight_bytes: Arc<AtomicUsize>,
}

impl Member {
    pub fn new(
        conn: ConnId,
        send_queue: Arc<SendQueue>,
        policy: Arc<Policy>,
        opts: MemberOpts,
    ) -> Self {
        Member {
            conn,
            send_queue,
            policy,
            opts,
            inflight: 0,
            inflight_bytes: Arc::default(),
        }
    }

    /// Counts this member's unacknowledged bytes in the connection's
    /// counter, which its other group subscriptions share.
    pub fn sharing_bytes(mut self, connection_bytes: Arc<AtomicUsize>) -> Self {
        self.inflight_bytes = connection_bytes;
        self
    }

    fn add_bytes(&self, bytes: usize) {
        self.inflight_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove_bytes(&self, bytes: usize) {
        // Saturating: a miscount must not wrap into "never again".
        let _ = self
            .inflight_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(bytes))
            });
    }

    /// Held back by the connection's byte bound. With nothing in flight a
    /// member always gets one delivery (however large, and whatever its
    /// connection's other groups hold), so it can never stall.
    fn over_byte_bound(&self) -> bool {
        self.inflight > 0
            && self.inflight_bytes.load(Ordering::Relaxed) >= self.opts.max_inflight_bytes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Ready,
    Delayed { due: u64 },
    Inflight { conn: ConnId, due: u64 },
    Done,
}

#[derive(Debug)]
struct Entry {
    event: Arc<Committed>,
    /// Deliveries so far.
    attempts: u32,
    state: EntryState,
    /// A dead letter replayed by the ops API: its dead-letter record is
    /// removed when it is acknowledged (and replaced if it dies again).
    replay: bool,
    /// A delivery of it failed (NACK, deadline, disconnect): its attempts
    /// are part of the group's durable state until it is done.
    failed: bool,
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

/// A page to read from the store for a group that is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FetchRequest {
    pub after: u64,
    pub limit: usize,
}

/// Events read per store page, and rows a sparse pattern may scan per page.
const FETCH_PAGE: usize = 1000;
pub(crate) const FETCH_SCAN_LIMIT: usize = 20_000;

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
    /// Inflight entries by event id, for ACK / NACK / WORKING.
    inflight_ids: HashMap<Arc<str>, u64>,
    members: Vec<Member>,
    /// Round-robin position for load sharing.
    next_member: usize,
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
}

impl GroupState {
    /// A group as stored (or just created with `cursor`).
    pub fn new(
        id: GroupId,
        pattern: Pattern,
        name: GroupName,
        record: GroupRecord,
        defaults: Arc<GroupDefaults>,
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
            inflight_ids: HashMap::new(),
            members: Vec::new(),
            next_member: 0,
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
                .values()
                .find(|e| e.state != EntryState::Done)
                .map(|e| (e.event.seq, e.event.ts)),
            replaying: self.replays.len() + self.window.values().filter(|e| e.replay).count(),
            acked: self.acked,
            delivered: self.delivered,
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
        } else {
            match self.replays.entry(seq) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    return Err(ReplayRefused::AlreadyPending);
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(Entry {
                        event,
                        attempts: 0,
                        state: EntryState::Ready,
                        replay: true,
                        failed: false,
                    });
                }
            }
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
    pub fn is_fetching(&self) -> bool {
        self.source == Source::Fetching
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
            .filter(|(_, e)| matches!(e.state, EntryState::Inflight { conn: c, .. } if c == conn))
            .map(|(&seq, _)| seq)
            .collect();
        for seq in held {
            // `release` no longer finds the member: give its bytes back to
            // the connection here (its other groups go on).
            if let Some(entry) = self.window.get(&seq) {
                member.remove_bytes(entry.event.json.get().len());
            }
            self.release(seq, fx);
            self.fail(seq, member.opts.max_deliver, "connection closed", fx);
        }
        self.pump(fx);
    }

    pub fn set_policy(&mut self, conn: ConnId, policy: &Arc<Policy>, fx: &mut Effects<'_>) {
        if let Some(member) = self.members.iter_mut().find(|m| m.conn == conn) {
            member.policy = Arc::clone(policy);
            self.pump(fx);
        }
    }

    // ---------------------------------------------------------------
    // Filling the window

    /// Appends live commits (in `seq` order) while caught up.
    pub fn on_live(&mut self, events: &[Arc<Committed>], fx: &mut Effects<'_>) {
        if self.source != Source::Live {
            return;
        }
        // Without members nobody needs the events now; read them from the
        // store when someone subscribes instead of holding them in memory.
        if self.members.is_empty() {
            self.source = Source::Behind;
            return;
        }
        for event in events {
            if event.seq <= self.fetched_upto {
                continue;
            }
            if self.window.len() >= self.defaults.window {
                self.source = Source::Behind;
                break;
            }
            self.examine(event);
        }
        self.advance();
        self.pump(fx);
    }

    /// Puts one examined event in the window when it matches and is not
    /// already done.
    fn examine(&mut self, event: &Arc<Committed>) {
        self.fetched_upto = event.seq;
        if !self.pattern.matches(&event.topic)
            || self.restored_done.contains(&event.seq)
            || self.replays.contains_key(&event.seq)
        {
            return;
        }
        // A failed event of a group loaded again counts its attempts on.
        let attempts = self.restored_attempts.remove(&event.seq).unwrap_or(0);
        self.window.insert(
            event.seq,
            Entry {
                event: Arc::clone(event),
                attempts,
                state: EntryState::Ready,
                replay: false,
                failed: attempts > 0,
            },
        );
        self.ready.insert(event.seq);
    }

    /// The next store page to read, if the group is behind, has members and
    /// room in its window. Marks the group as fetching.
    pub fn start_fetch(&mut self) -> Option<FetchRequest> {
        if self.source != Source::Behind || self.members.is_empty() {
            return None;
        }
        let room = self.defaults.window.saturating_sub(self.window.len());
        if room == 0 {
            return None;
        }
        self.source = Source::Fetching;
        Some(FetchRequest {
            after: self.fetched_upto,
            limit: room.min(FETCH_PAGE),
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
        for event in events {
            if event.seq > self.fetched_upto {
                self.examine(event);
            }
        }
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
    pub fn on_fetch_failed(&mut self) {
        self.source = Source::Behind;
    }

    // ---------------------------------------------------------------
    // Delivery

    /// Hands ready events, lowest `seq` first, to members with room.
    pub fn pump(&mut self, fx: &mut Effects<'_>) {
        if self.members.is_empty() {
            return;
        }
        while let Some(&seq) = self.ready.first() {
            let Some(entry) = entry!(self, seq) else {
                self.ready.remove(&seq);
                continue;
            };
            let topic = &entry.event.topic;
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
                Some(index) => {
                    self.next_member = index + 1;
                    self.deliver(seq, index, fx);
                }
                // semantics.md §2: an event no member may see counts as
                // acknowledged for this subscription.
                None if !anyone_allowed => {
                    self.ready.remove(&seq);
                    self.finish_unacknowledged(seq);
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

    fn deliver(&mut self, seq: u64, member_index: usize, fx: &mut Effects<'_>) {
        let member = &mut self.members[member_index];
        let Some(entry) = entry_mut!(self, seq) else {
            return;
        };
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
        self.inflight_ids.insert(Arc::clone(&entry.event.id), seq);
        member.inflight += 1;
        member.add_bytes(entry.event.json.get().len());
        let ctx = DeliveryCtx {
            attempt: entry.attempts,
            ack_deadline: Some(fx.now_wall + member.opts.ack_timeout_ms),
            snapshot: None,
        };
        let frame = encode_event_delivery(&self.pattern, Some(&self.name), &entry.event.json, &ctx);
        // A closing connection drops the frame; its disconnect then puts the
        // event back.
        member.send_queue.push(frame);
    }

    /// Takes an inflight entry back from its member (ACK, NACK, deadline,
    /// disconnect). Returns the holder.
    fn release(&mut self, seq: u64, fx: &mut Effects<'_>) -> Option<ConnId> {
        let entry = entry_mut!(self, seq)?;
        let EntryState::Inflight { conn, due } = entry.state else {
            return None;
        };
        fx.timers.remove(&(due, self.id, seq));
        if self.inflight_ids.get(&entry.event.id) == Some(&seq) {
            self.inflight_ids.remove(&entry.event.id);
        }
        entry.state = EntryState::Ready;
        if let Some(member) = self.members.iter_mut().find(|m| m.conn == conn) {
            member.inflight = member.inflight.saturating_sub(1);
            member.remove_bytes(entry.event.json.get().len());
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
            event_id: entry.event.id.to_string(),
            reason: reason.to_owned(),
            attempts: entry.attempts,
            dead_at: fx.now_wall,
        });
        fx.counters.dead_letters.inc();
        self.dirty = true;
        self.ready.remove(&seq);
        // A replay that died again: the new record replaces the old one.
        self.finish_unacknowledged(seq);
    }

    /// Marks an entry done without an ACK (dead-lettered, or hidden from
    /// every member): a replayed dead letter keeps its record.
    fn finish_unacknowledged(&mut self, seq: u64) {
        if let Some(entry) = entry_mut!(self, seq) {
            entry.replay = false;
        }
        self.complete(seq);
    }

    /// Marks an entry done (it stays in the window until the prefix before
    /// it is done too; a replay outside the window is dropped). An
    /// acknowledged replay removes its dead letter.
    fn complete(&mut self, seq: u64) {
        let replayed = if let Some(entry) = self.window.get_mut(&seq) {
            entry.state = EntryState::Done;
            self.new_marks.push(seq);
            self.dirty = true;
            if std::mem::take(&mut entry.failed) {
                self.attempt_changes.insert(seq, 0);
            }
            std::mem::take(&mut entry.replay)
        } else {
            self.replays.remove(&seq).is_some_and(|e| e.replay)
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

    // ---------------------------------------------------------------
    // Client answers

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
            EntryState::Inflight { conn, .. }
                if conn == settle.conn && *entry.event.id == *settle.id =>
            {
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
        self.complete(seq);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send_queue::{Drained, SendQueueLimits};
    use promhub_core::frames::{Event, HubFrame};
    use promhub_core::{Topic, frames::to_payload};

    fn defaults() -> Arc<GroupDefaults> {
        Arc::new(GroupDefaults::default())
    }

    fn event(seq: u64, topic: &str) -> Arc<Committed> {
        Committed::from_event(&Event {
            id: format!("e{seq}"),
            seq,
            topic: Topic::parse(topic).unwrap(),
            ts: 1,
            key: None,
            payload: to_payload(&seq).unwrap(),
            headers: None,
            tags: None,
            caused_by: None,
            sid: None,
        })
    }

    struct Harness {
        group: GroupState,
        timers: BTreeSet<TimerKey>,
        counters: GroupCounters,
        now: u64,
    }

    fn send_queue() -> Arc<SendQueue> {
        Arc::new(SendQueue::new(SendQueueLimits {
            live_frames: 1000,
            live_bytes: 1 << 20,
        }))
    }

    fn opts(max_inflight: u32) -> MemberOpts {
        MemberOpts {
            max_inflight,
            ack_timeout_ms: 1000,
            max_deliver: 3,
            max_inflight_bytes: 1 << 20,
        }
    }

    impl Harness {
        fn new(cursor: u64) -> Self {
            let pattern = Pattern::parse("jobs.*").unwrap();
            let name = GroupName::parse("g").unwrap();
            let record = GroupRecord {
                key: GroupKey::new(&pattern, &name),
                cursor,
                done_above: vec![],
                attempts_above: Vec::new(),
            };
            let mut group = GroupState::new(0, pattern, name, record, defaults());
            group.source = Source::Live;
            Harness {
                group,
                timers: BTreeSet::new(),
                counters: GroupCounters::default(),
                now: 0,
            }
        }

        fn fx(&mut self) -> (&mut GroupState, Effects<'_>) {
            (
                &mut self.group,
                Effects {
                    now_mono: self.now,
                    now_wall: 1_000_000 + self.now,
                    timers: &mut self.timers,
                    counters: &self.counters,
                },
            )
        }

        fn join(&mut self, conn: ConnId, max_inflight: u32) -> Arc<SendQueue> {
            let out = send_queue();
            let member = Member::new(
                conn,
                Arc::clone(&out),
                Arc::new(Policy::allow_all()),
                opts(max_inflight),
            );
            let (group, mut fx) = self.fx();
            group.add_member(member, &mut fx);
            out
        }

        fn live(&mut self, events: &[Arc<Committed>]) {
            let (group, mut fx) = self.fx();
            group.on_live(events, &mut fx);
        }

        fn fire_due(&mut self) {
            let due: Vec<TimerKey> = self
                .timers
                .iter()
                .copied()
                .filter(|&(d, _, _)| d <= self.now)
                .collect();
            for (d, _, seq) in due {
                self.timers.remove(&(d, 0, seq));
                let (group, mut fx) = self.fx();
                group.on_timer(seq, d, &mut fx);
            }
        }
    }

    /// (event id, attempt) of each EVENT queued in a send queue.
    async fn deliveries(out: &SendQueue) -> Vec<(String, u32)> {
        let mut batch = Vec::new();
        if !out.has_frames() {
            return vec![];
        }
        assert!(matches!(out.drain(&mut batch).await, Drained::Frames(_)));
        batch
            .into_iter()
            .map(|m| match m {
                axum::extract::ws::Message::Text(t) => match HubFrame::decode(&t).unwrap() {
                    HubFrame::Event(e) => (e.event.id, e.ctx.attempt),
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// A settlement of `id` from the member that holds it (by id, as a
    /// client that sends no seq).
    fn holder<'a>(group: &GroupState, id: &'a str) -> Settle<'a> {
        let conn = group
            .inflight_ids
            .get(id)
            .and_then(|seq| group.window.get(seq).or_else(|| group.replays.get(seq)))
            .and_then(|e| match e.state {
                EntryState::Inflight { conn, .. } => Some(conn),
                _ => None,
            })
            .unwrap_or(0);
        Settle {
            conn,
            id,
            seq: None,
        }
    }

    fn ids(list: &[(String, u32)]) -> Vec<&str> {
        list.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[tokio::test]
    async fn members_share_events_in_order_and_cursor_moves_over_done_prefix() {
        let mut h = Harness::new(0);
        let a = h.join(1, 10);
        let b = h.join(2, 10);
        h.live(&[
            event(1, "jobs.x"),
            event(2, "other"),
            event(3, "jobs.y"),
            event(4, "jobs.z"),
        ]);
        let got_a = deliveries(&a).await;
        let got_b = deliveries(&b).await;
        assert_eq!(ids(&got_a), ["e1", "e4"]);
        assert_eq!(ids(&got_b), ["e3"]);
        // Ack out of order: the cursor waits for e1.
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e3"), &mut fx);
        assert_eq!(g.cursor(), 0);
        g.ack(holder(g, "e1"), &mut fx);
        assert_eq!(g.cursor(), 3);
        g.ack(holder(g, "e4"), &mut fx);
        assert_eq!(g.cursor(), 4);
        let update = g.take_update().unwrap();
        assert_eq!(update.progress.unwrap().cursor, 4);
    }

    #[tokio::test]
    async fn max_inflight_holds_back_until_ack() {
        let mut h = Harness::new(0);
        let a = h.join(1, 2);
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a"), event(3, "jobs.a")]);
        assert_eq!(ids(&deliveries(&a).await), ["e1", "e2"]);
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e2"), &mut fx);
        assert_eq!(ids(&deliveries(&a).await), ["e3"]);
    }

    #[tokio::test]
    async fn inflight_bytes_hold_a_member_back_and_the_group_lags_without_loss() {
        let mut h = Harness::new(0);
        let out = send_queue();
        let one_event = event(1, "jobs.a").json.get().len();
        // Room for two events' bytes, while max_inflight would allow ten.
        let member = Member::new(
            1,
            Arc::clone(&out),
            Arc::new(Policy::allow_all()),
            MemberOpts {
                max_inflight_bytes: 2 * one_event,
                ..opts(10)
            },
        );
        let (group, mut fx) = h.fx();
        group.add_member(member, &mut fx);
        let lagging_before = COUNTERS.snapshot().group_lagging;
        h.live(&[
            event(1, "jobs.a"),
            event(2, "jobs.a"),
            event(3, "jobs.a"),
            event(4, "jobs.a"),
        ]);
        assert_eq!(ids(&deliveries(&out).await), ["e1", "e2"]);
        assert!(COUNTERS.snapshot().group_lagging > lagging_before);
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e1"), &mut fx);
        assert_eq!(ids(&deliveries(&out).await), ["e3"]);
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e2"), &mut fx);
        g.ack(holder(g, "e3"), &mut fx);
        assert_eq!(ids(&deliveries(&out).await), ["e4"]);
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e4"), &mut fx);
        assert_eq!(g.cursor(), 4);
    }

    #[tokio::test]
    async fn a_connections_groups_share_its_byte_bound_and_get_bytes_back() {
        let mut h = Harness::new(0);
        let out = send_queue();
        let one = event(1, "jobs.a").json.get().len();
        // The connection's other groups already hold its whole allowance.
        let connection_bytes = Arc::new(AtomicUsize::new(10 * one));
        let member = Member::new(
            1,
            Arc::clone(&out),
            Arc::new(Policy::allow_all()),
            MemberOpts {
                max_inflight_bytes: 10 * one,
                ..opts(10)
            },
        )
        .sharing_bytes(Arc::clone(&connection_bytes));
        let (group, mut fx) = h.fx();
        group.add_member(member, &mut fx);
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a"), event(3, "jobs.a")]);
        // Nothing of this member is in flight: one delivery goes anyway.
        assert_eq!(ids(&deliveries(&out).await), ["e1"]);
        assert_eq!(connection_bytes.load(Ordering::Relaxed), 11 * one);
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e1"), &mut fx);
        assert_eq!(ids(&deliveries(&out).await), ["e2"]);
        // Leaving the group gives its bytes back to the connection.
        let (g, mut fx) = h.fx();
        g.remove_member(1, &mut fx);
        assert_eq!(connection_bytes.load(Ordering::Relaxed), 10 * one);
    }

    #[tokio::test]
    async fn one_delivery_goes_however_large() {
        let mut h = Harness::new(0);
        let out = send_queue();
        let member = Member::new(
            1,
            Arc::clone(&out),
            Arc::new(Policy::allow_all()),
            MemberOpts {
                max_inflight_bytes: 1,
                ..opts(10)
            },
        );
        let (group, mut fx) = h.fx();
        group.add_member(member, &mut fx);
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
        assert_eq!(ids(&deliveries(&out).await), ["e1"]);
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e1"), &mut fx);
        assert_eq!(ids(&deliveries(&out).await), ["e2"]);
    }

    #[tokio::test]
    async fn nack_redelivers_with_next_attempt_and_dead_letters_at_max_deliver() {
        let mut h = Harness::new(0);
        let a = h.join(1, 10);
        h.live(&[event(1, "jobs.a")]);
        assert_eq!(deliveries(&a).await, [("e1".to_owned(), 1)]);
        for attempt in 2..=3 {
            let (g, mut fx) = h.fx();
            g.nack(holder(g, "e1"), Some("boom"), Some(0), false, &mut fx);
            assert_eq!(deliveries(&a).await, [("e1".to_owned(), attempt)]);
        }
        let (g, mut fx) = h.fx();
        g.nack(holder(g, "e1"), Some("boom"), Some(0), false, &mut fx);
        assert!(deliveries(&a).await.is_empty());
        assert_eq!(g.cursor(), 1);
        let update = g.take_update().unwrap();
        assert_eq!(update.dead_letters.len(), 1);
        assert_eq!(update.dead_letters[0].attempts, 3);
        assert_eq!(update.dead_letters[0].reason, "boom");
    }

    #[tokio::test]
    async fn only_the_holder_settles_a_delivery_and_a_given_seq_must_match() {
        let mut h = Harness::new(0);
        let a = h.join(1, 10);
        let b = h.join(2, 10);
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
        assert_eq!(ids(&deliveries(&a).await), ["e1"]);
        assert_eq!(ids(&deliveries(&b).await), ["e2"]);
        let (g, mut fx) = h.fx();
        // Member 2 answers for e1, which member 1 holds: ignored, whether
        // by id or by seq, and whatever the answer.
        let foreign = |seq| Settle {
            conn: 2,
            id: "e1",
            seq,
        };
        g.nack(foreign(None), Some("x"), None, true, &mut fx);
        g.nack(foreign(Some(1)), Some("x"), None, true, &mut fx);
        g.ack(foreign(Some(1)), &mut fx);
        g.working(foreign(None), &mut fx);
        assert_eq!(g.cursor(), 0);
        assert!(g.dead_letters.is_empty());
        // The holder with a seq that names another event: ignored too.
        g.ack(
            Settle {
                conn: 1,
                id: "e1",
                seq: Some(2),
            },
            &mut fx,
        );
        assert_eq!(g.cursor(), 0);
        // By seq, from the holder: settled.
        g.ack(
            Settle {
                conn: 1,
                id: "e1",
                seq: Some(1),
            },
            &mut fx,
        );
        assert_eq!(g.cursor(), 1);
        g.ack(
            Settle {
                conn: 2,
                id: "e2",
                seq: Some(2),
            },
            &mut fx,
        );
        assert_eq!(g.cursor(), 2);
    }

    #[tokio::test]
    async fn nack_delay_and_ack_deadline_use_timers() {
        let mut h = Harness::new(0);
        let a = h.join(1, 10);
        h.live(&[event(1, "jobs.a")]);
        deliveries(&a).await;
        let (g, mut fx) = h.fx();
        g.nack(holder(g, "e1"), None, Some(500), false, &mut fx);
        h.now = 499;
        h.fire_due();
        assert!(deliveries(&a).await.is_empty());
        h.now = 500;
        h.fire_due();
        assert_eq!(deliveries(&a).await, [("e1".to_owned(), 2)]);
        // Not acknowledged within 1000 ms: delivered again.
        h.now = 1500;
        h.fire_due();
        assert_eq!(deliveries(&a).await, [("e1".to_owned(), 3)]);
        // WORKING pushes the deadline back.
        h.now = 2000;
        let (g, mut fx) = h.fx();
        g.working(holder(g, "e1"), &mut fx);
        h.now = 2600;
        h.fire_due();
        assert!(deliveries(&a).await.is_empty());
        h.now = 3000;
        h.fire_due();
        // Third attempt timed out with max_deliver 3: dead.
        assert!(deliveries(&a).await.is_empty());
        assert_eq!(h.group.cursor(), 1);
    }

    #[tokio::test]
    async fn disconnect_hands_inflight_events_to_other_members() {
        let mut h = Harness::new(0);
        let a = h.join(1, 10);
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
        assert_eq!(ids(&deliveries(&a).await), ["e1", "e2"]);
        let b = h.join(2, 10);
        let (g, mut fx) = h.fx();
        g.remove_member(1, &mut fx);
        assert_eq!(
            deliveries(&b).await,
            [("e1".to_owned(), 2), ("e2".to_owned(), 2)]
        );
    }

    #[tokio::test]
    async fn events_the_acl_hides_from_every_member_count_as_done() {
        let mut h = Harness::new(0);
        let out = send_queue();
        let member = Member::new(
            1,
            Arc::clone(&out),
            Arc::new(Policy::from_scope_str("subscribe:jobs.a").unwrap()),
            opts(10),
        );
        let (g, mut fx) = h.fx();
        g.add_member(member, &mut fx);
        h.live(&[event(1, "jobs.b"), event(2, "jobs.a")]);
        assert_eq!(ids(&deliveries(&out).await), ["e2"]);
        assert_eq!(h.group.cursor(), 1);
    }

    #[tokio::test]
    async fn restored_done_marks_are_skipped_and_fetch_pages_fill_the_window() {
        let pattern = Pattern::parse("jobs.*").unwrap();
        let name = GroupName::parse("g").unwrap();
        let record = GroupRecord {
            key: GroupKey::new(&pattern, &name),
            cursor: 1,
            done_above: vec![3],
            attempts_above: Vec::new(),
        };
        let mut timers = BTreeSet::new();
        let mut group = GroupState::new(0, pattern, name, record, defaults());
        let out = send_queue();
        let counters = GroupCounters::default();
        let mut fx = Effects {
            now_mono: 0,
            now_wall: 0,
            timers: &mut timers,
            counters: &counters,
        };
        group.add_member(
            Member::new(1, Arc::clone(&out), Arc::new(Policy::allow_all()), opts(10)),
            &mut fx,
        );
        let request = group.start_fetch().unwrap();
        assert_eq!(request.after, 1);
        assert!(group.start_fetch().is_none(), "one fetch at a time");
        group.on_fetched(
            &[event(2, "jobs.a"), event(3, "jobs.a"), event(4, "jobs.a")],
            10,
            12,
            &mut fx,
        );
        assert_eq!(ids(&deliveries(&out).await), ["e2", "e4"]);
        // Still behind (head 12 > 10): the next page starts after 10.
        assert_eq!(group.start_fetch().unwrap().after, 10);
        group.on_fetched(&[], 12, 12, &mut fx);
        group.ack(holder(&group, "e2"), &mut fx);
        group.ack(holder(&group, "e4"), &mut fx);
        assert_eq!(group.cursor(), 12);
        // Caught up: live events flow in.
        group.on_live(&[event(13, "jobs.q")], &mut fx);
        assert_eq!(ids(&deliveries(&out).await), ["e13"]);
    }

    #[tokio::test]
    async fn replayed_dead_letter_is_delivered_from_attempt_one_and_removed_on_ack() {
        let mut h = Harness::new(0);
        let a = h.join(1, 10);
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
        assert_eq!(ids(&deliveries(&a).await), ["e1", "e2"]);
        let (g, mut fx) = h.fx();
        g.nack(holder(g, "e1"), Some("bad"), None, true, &mut fx);
        g.ack(holder(g, "e2"), &mut fx);
        assert_eq!(g.cursor(), 2);
        assert_eq!(g.take_update().unwrap().dead_letters.len(), 1);
        // Replayed below the cursor: delivered again, attempt 1.
        g.replay(event(1, "jobs.a"), &mut fx).unwrap();
        assert_eq!(
            g.replay(event(1, "jobs.a"), &mut fx),
            Err(ReplayRefused::AlreadyPending)
        );
        assert_eq!(g.view().replaying, 1);
        assert_eq!(deliveries(&a).await, [("e1".to_owned(), 1)]);
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e1"), &mut fx);
        assert_eq!(g.cursor(), 2, "a replay never moves the cursor back");
        let update = g.take_update().unwrap();
        assert!(update.dead_letters.is_empty());
        assert_eq!(update.removed_dead_letters.len(), 1);
        assert_eq!(update.removed_dead_letters[0].seq, 1);
        assert_eq!(g.view().replaying, 0);
        assert_eq!(h.counters.replays.get(), 1);
        assert_eq!(h.counters.dead_letters.get(), 1);
    }

    #[tokio::test]
    async fn replay_that_dies_again_keeps_a_dead_letter_and_needs_a_member() {
        let mut h = Harness::new(0);
        let (g, mut fx) = h.fx();
        assert_eq!(
            g.replay(event(1, "jobs.a"), &mut fx),
            Err(ReplayRefused::NoMembers)
        );
        let a = h.join(1, 10);
        // Dead-lettered while e1 still holds the cursor: replayed in the window.
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
        deliveries(&a).await;
        let (g, mut fx) = h.fx();
        g.nack(holder(g, "e2"), None, None, true, &mut fx);
        assert_eq!(g.view().done_above, [2]);
        g.replay(event(2, "jobs.a"), &mut fx).unwrap();
        assert_eq!(deliveries(&a).await, [("e2".to_owned(), 1)]);
        let (g, mut fx) = h.fx();
        assert!(g.view().done_above.is_empty());
        g.nack(holder(g, "e2"), Some("still bad"), None, true, &mut fx);
        g.ack(holder(g, "e1"), &mut fx);
        assert_eq!(g.cursor(), 2);
        let update = g.take_update().unwrap();
        assert_eq!(update.dead_letters.len(), 2);
        assert_eq!(update.dead_letters[1].reason, "still bad");
        assert_eq!(update.dead_letters[1].attempts, 1);
        assert!(update.removed_dead_letters.is_empty());
    }

    /// The attempt changes a flush carries.
    fn attempts_in(update: &GroupUpdate) -> Vec<(u64, u32)> {
        update
            .progress
            .as_ref()
            .map(|p| p.attempt_changes.clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn failed_attempts_are_durable_and_a_reloaded_group_counts_on() {
        let mut h = Harness::new(0);
        let a = h.join(1, 10);
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a"), event(3, "jobs.a")]);
        assert_eq!(ids(&deliveries(&a).await), ["e1", "e2", "e3"]);
        // A plain ACK records nothing.
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e1"), &mut fx);
        assert_eq!(attempts_in(&g.take_update().unwrap()), []);
        // The member leaves holding e2 and e3 (a page closed before its ACK).
        g.remove_member(1, &mut fx);
        let update = g.take_update().unwrap();
        assert_eq!(attempts_in(&update), [(2, 1), (3, 1)]);
        assert_eq!(update.progress.as_ref().unwrap().cursor, 1);
        // A failed flush keeps them for the next one.
        g.restore_update(update);
        assert_eq!(attempts_in(&g.take_update().unwrap()), [(2, 1), (3, 1)]);

        // The group is loaded again (evicted while idle, or a restart).
        let pattern = Pattern::parse("jobs.*").unwrap();
        let name = GroupName::parse("g").unwrap();
        let record = GroupRecord {
            key: GroupKey::new(&pattern, &name),
            cursor: 1,
            done_above: vec![],
            attempts_above: vec![(2, 1), (3, 1)],
        };
        let mut reloaded = Harness::new(0);
        reloaded.group = GroupState::new(0, pattern, name, record, defaults());
        let b = reloaded.join(2, 10);
        let (g, mut fx) = reloaded.fx();
        let request = g.start_fetch().unwrap();
        assert_eq!(request.after, 1);
        g.on_fetched(&[event(2, "jobs.a")], 2, 3, &mut fx);
        // e2 fails again (2 attempts used; already out for its third).
        g.nack(holder(g, "e2"), None, Some(0), false, &mut fx);
        let update = g.take_update().unwrap();
        assert_eq!(attempts_in(&update), [(2, 2)]);
        g.start_fetch().unwrap();
        g.on_fetched(&[event(3, "jobs.a")], 3, 3, &mut fx);
        assert_eq!(
            deliveries(&b).await,
            [
                ("e2".to_owned(), 2),
                ("e2".to_owned(), 3),
                ("e3".to_owned(), 2)
            ]
        );
        // Done events are forgotten.
        g.ack(holder(g, "e2"), &mut fx);
        g.ack(holder(g, "e3"), &mut fx);
        let update = g.take_update().unwrap();
        assert_eq!(attempts_in(&update), [(2, 0), (3, 0)]);
        assert_eq!(update.progress.unwrap().cursor, 3);
    }

    #[tokio::test]
    async fn failed_flush_keeps_marks_and_dead_letters() {
        let mut h = Harness::new(0);
        let a = h.join(1, 10);
        h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
        deliveries(&a).await;
        let (g, mut fx) = h.fx();
        g.ack(holder(g, "e2"), &mut fx);
        g.nack(holder(g, "e1"), None, None, true, &mut fx);
        let update = g.take_update().unwrap();
        assert!(g.take_update().is_none());
        g.restore_update(update);
        let again = g.take_update().unwrap();
        assert_eq!(again.dead_letters.len(), 1);
        assert_eq!(again.progress.unwrap().cursor, 2);
    }
}
