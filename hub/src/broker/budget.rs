//! The group buffer (`limits.group_buffer_bytes`, semantics.md §4a): one
//! byte budget for the event data every consumer group holds in memory —
//! events read ahead for a delivery, and deliveries not yet acknowledged.
//!
//! A group keeps per-event metadata (seq, id, topic, size, state, attempts)
//! for the events after its cursor; an event's body is held only from the
//! moment the group reads it for a delivery until the delivery is settled.
//! Bodies read ahead are shared: the budget keeps one copy per seq however
//! many groups hold it, and counts it once. A delivery counts its size until
//! it is settled (the frame may still sit in the connection's queue).
//!
//! Sharing, so that one group (or one slow member) cannot starve the
//! others:
//! - a group that holds nothing may always take one event, whatever the
//!   budget says, so every group makes progress (the buffer can therefore
//!   exceed its bound by at most one event per group with a member);
//! - otherwise bytes are granted while the total stays within the bound and,
//!   when other groups are waiting, while the group stays within its fair
//!   share (the bound divided by the groups holding or waiting);
//! - a refused group waits in a FIFO queue (counted as
//!   `promhub_refusals_total{what="group_budget_wait"}`) and is woken, in
//!   order, when bytes come back. Nothing is dropped: a waiting group lags.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::committed::Committed;
use super::group::GroupId;
use crate::refusals::{self, Refusal};

/// One body held by one or more groups.
#[derive(Debug)]
struct SharedBody {
    body: Arc<Committed>,
    holders: u32,
}

#[derive(Debug)]
pub(crate) struct GroupBudget {
    limit: usize,
    /// Bytes counted: shared bodies once each, deliveries and reservations.
    used: usize,
    /// Bodies held for deliveries, by seq.
    bodies: HashMap<u64, SharedBody>,
    /// Groups that hold bytes.
    holding: usize,
    waiting: VecDeque<GroupId>,
    waiting_set: HashSet<GroupId>,
    /// Bytes came back while groups were waiting.
    freed: bool,
}

impl GroupBudget {
    pub fn new(limit: usize) -> Self {
        GroupBudget {
            limit: limit.max(1),
            used: 0,
            bodies: HashMap::new(),
            holding: 0,
            waiting: VecDeque::new(),
            waiting_set: HashSet::new(),
            freed: false,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes counted now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Bodies held for deliveries (one per seq).
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// The share of a group while others wait.
    fn fair_share(&self) -> usize {
        self.limit / (self.holding + self.waiting.len()).max(1)
    }

    /// Whether others than `gid` are waiting.
    fn contended(&self, gid: GroupId) -> bool {
        match self.waiting.len() {
            0 => false,
            1 => !self.waiting_set.contains(&gid),
            _ => true,
        }
    }

    /// May a group that holds `held` bytes take `bytes` more? When not, the
    /// group is queued to be woken when bytes come back.
    fn admits(&mut self, gid: GroupId, held: usize, bytes: usize) -> bool {
        if held == 0 {
            return true;
        }
        let fits = self.used.saturating_add(bytes) <= self.limit;
        let fair = !self.contended(gid) || held.saturating_add(bytes) <= self.fair_share();
        if fits && fair {
            return true;
        }
        self.wait(gid);
        false
    }

    fn wait(&mut self, gid: GroupId) {
        if self.waiting_set.insert(gid) {
            self.waiting.push_back(gid);
            refusals::count(Refusal::GroupBudgetWait);
        }
    }

    fn add(&mut self, held: &mut usize, bytes: usize) {
        if *held == 0 && bytes > 0 {
            self.holding += 1;
        }
        *held += bytes;
    }

    fn sub(&mut self, held: &mut usize, bytes: usize) {
        let bytes = bytes.min(*held);
        *held -= bytes;
        if *held == 0 && bytes > 0 {
            self.holding = self.holding.saturating_sub(1);
        }
    }

    fn give_back(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
        if bytes > 0 && !self.waiting.is_empty() {
            self.freed = true;
        }
    }

    /// Holds the body of an event for a group (`held` is the group's own
    /// count): free when another group holds it already, else within the
    /// budget, or in any case when `force` (bytes already reserved). Returns
    /// the copy to keep, `None` when refused.
    pub fn hold_body(
        &mut self,
        gid: GroupId,
        held: &mut usize,
        body: &Arc<Committed>,
        force: bool,
    ) -> Option<Arc<Committed>> {
        let size = body.json.get().len();
        let kept = if let Some(shared) = self.bodies.get_mut(&body.seq) {
            shared.holders += 1;
            Arc::clone(&shared.body)
        } else {
            if !force && !self.admits(gid, *held, size) {
                return None;
            }
            self.bodies.insert(
                body.seq,
                SharedBody {
                    body: Arc::clone(body),
                    holders: 1,
                },
            );
            self.used += size;
            Arc::clone(body)
        };
        self.add(held, size);
        Some(kept)
    }

    /// A group lets go of a body it held (`size` bytes).
    pub fn release_body(&mut self, held: &mut usize, seq: u64, size: usize) {
        self.sub(held, size);
        if let MapEntry::Occupied(mut shared) = self.bodies.entry(seq) {
            shared.get_mut().holders = shared.get().holders.saturating_sub(1);
            if shared.get().holders == 0 {
                shared.remove();
                self.give_back(size);
            }
        }
    }

    /// A held body goes out as a delivery: its bytes count until the
    /// delivery is settled ([`GroupBudget::end_delivery`]). A body no other
    /// group holds changes nothing; a shared one adds a copy (the frame),
    /// which needs room unless the group has nothing in flight (`inflight`).
    pub fn start_delivery(
        &mut self,
        gid: GroupId,
        held: &mut usize,
        inflight: usize,
        seq: u64,
        size: usize,
    ) -> bool {
        let shared = self.bodies.get(&seq).is_some_and(|b| b.holders > 1);
        if shared && inflight > 0 && !self.admits(gid, *held, size) {
            return false;
        }
        self.used += size;
        self.add(held, size);
        self.release_body(held, seq, size);
        true
    }

    /// A delivery was settled or taken back.
    pub fn end_delivery(&mut self, held: &mut usize, size: usize) {
        self.sub(held, size);
        self.give_back(size);
    }

    /// Reserves up to `want` bytes for a read of unknown size: what fits
    /// (within the fair share when others wait), at least 1 byte (one
    /// event) for a group that holds nothing. `None`: the group waits.
    pub fn reserve(&mut self, gid: GroupId, held: &mut usize, want: usize) -> Option<usize> {
        let free = self.limit.saturating_sub(self.used);
        let room = if self.contended(gid) {
            free.min(self.fair_share().saturating_sub(*held))
        } else {
            free
        };
        let grant = match want.min(room) {
            0 if *held == 0 => 1,
            0 => {
                self.wait(gid);
                return None;
            }
            grant => grant,
        };
        self.used += grant;
        self.add(held, grant);
        Some(grant)
    }

    /// Reserves exactly `bytes` (a body of known size) if admitted.
    pub fn reserve_exact(&mut self, gid: GroupId, held: &mut usize, bytes: usize) -> bool {
        if !self.admits(gid, *held, bytes) {
            return false;
        }
        self.used += bytes;
        self.add(held, bytes);
        true
    }

    /// Gives back a reservation (what a read brought is held by now).
    pub fn unreserve(&mut self, held: &mut usize, bytes: usize) {
        self.end_delivery(held, bytes);
    }

    /// True once after bytes came back while groups were waiting.
    pub fn take_freed(&mut self) -> bool {
        std::mem::take(&mut self.freed)
    }

    /// The next group to wake, while there is room.
    pub fn next_waiter(&mut self) -> Option<GroupId> {
        if self.used >= self.limit {
            return None;
        }
        let gid = self.waiting.pop_front()?;
        self.waiting_set.remove(&gid);
        Some(gid)
    }

    /// Groups waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A group left memory.
    pub fn forget(&mut self, gid: GroupId) {
        if self.waiting_set.remove(&gid) {
            self.waiting.retain(|&g| g != gid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use promhub_core::Topic;
    use promhub_core::frames::{Event, to_payload};

    fn body(seq: u64, bytes: usize) -> Arc<Committed> {
        let event = Event {
            id: format!("e{seq}"),
            seq,
            topic: Topic::parse("t").unwrap(),
            ts: 1,
            key: None,
            payload: to_payload(&"x".repeat(bytes)).unwrap(),
            headers: None,
            tags: None,
            caused_by: None,
            sid: None,
        };
        Committed::from_event(&event)
    }

    fn size(b: &Arc<Committed>) -> usize {
        b.json.get().len()
    }

    #[test]
    fn a_shared_body_counts_once_and_goes_when_its_last_holder_lets_go() {
        let mut budget = GroupBudget::new(1 << 20);
        let b = body(1, 100);
        let (mut held_a, mut held_b) = (0, 0);
        let a_copy = budget.hold_body(1, &mut held_a, &b, false).unwrap();
        // Another group's copy of the same seq (read from the store) is
        // replaced by the one already held.
        let other_read = body(1, 100);
        let b_copy = budget
            .hold_body(2, &mut held_b, &other_read, false)
            .unwrap();
        assert!(Arc::ptr_eq(&a_copy, &b_copy));
        assert_eq!(budget.used(), size(&b));
        assert_eq!((held_a, held_b), (size(&b), size(&b)));
        budget.release_body(&mut held_a, 1, size(&b));
        assert_eq!(budget.used(), size(&b));
        budget.release_body(&mut held_b, 1, size(&b));
        assert_eq!((budget.used(), budget.body_count(), held_b), (0, 0, 0));
    }

    #[test]
    fn a_group_holding_nothing_always_gets_one_event_and_others_wait_in_order() {
        let big = body(1, 1000);
        let limit = size(&big) + 10;
        let mut budget = GroupBudget::new(limit);
        let (mut a, mut b, mut c) = (0, 0, 0);
        assert!(budget.hold_body(1, &mut a, &big, false).is_some());
        // Over the bound, but group 2 holds nothing: one event goes.
        assert!(budget.hold_body(2, &mut b, &body(2, 1000), false).is_some());
        assert!(budget.used() > limit);
        // Group 1 wants more: it waits; so does group 2.
        let waits = refusals::total(Refusal::GroupBudgetWait);
        assert!(budget.hold_body(1, &mut a, &body(3, 10), false).is_none());
        assert!(budget.hold_body(2, &mut b, &body(4, 10), false).is_none());
        assert!(budget.hold_body(2, &mut b, &body(4, 10), false).is_none());
        assert!(refusals::total(Refusal::GroupBudgetWait) >= waits + 2);
        assert_eq!(budget.waiting(), 2, "a group waits once");
        assert!(
            budget.reserve(3, &mut c, 4096) == Some(1),
            "one event's read"
        );
        assert!(!budget.take_freed());
        assert_eq!(budget.next_waiter(), None, "no room yet");
        budget.release_body(&mut a, 1, size(&big));
        budget.unreserve(&mut c, 1);
        assert!(budget.take_freed());
        budget.release_body(&mut b, 2, size(&big));
        assert_eq!(budget.next_waiter(), Some(1));
        assert_eq!(budget.next_waiter(), Some(2));
        assert_eq!(budget.next_waiter(), None);
    }

    #[test]
    fn while_others_wait_a_group_is_held_to_its_fair_share() {
        let mut budget = GroupBudget::new(1000);
        let (mut a, mut b) = (0, 0);
        // Uncontended: group 1 may take the whole buffer.
        assert_eq!(budget.reserve(1, &mut a, 600), Some(600));
        assert_eq!(budget.reserve(2, &mut b, 100), Some(100));
        assert!(!budget.reserve_exact(2, &mut b, 400), "over the bound");
        assert_eq!(budget.waiting(), 1);
        // Group 1 is over its share (1000 / 3) while group 2 waits.
        budget.unreserve(&mut a, 500);
        assert_eq!(a, 100);
        assert_eq!(budget.reserve(1, &mut a, 600), Some(233), "up to its share");
        assert_eq!(budget.next_waiter(), Some(2));
        assert!(budget.reserve_exact(2, &mut b, 200));
    }

    #[test]
    fn deliveries_count_until_settled_and_a_shared_body_adds_its_frame() {
        let mut budget = GroupBudget::new(1 << 20);
        let b = body(7, 50);
        let n = size(&b);
        let (mut a, mut c) = (0, 0);
        budget.hold_body(1, &mut a, &b, false).unwrap();
        budget.hold_body(2, &mut c, &b, false).unwrap();
        assert!(budget.start_delivery(1, &mut a, 0, 7, n));
        assert_eq!((budget.used(), a), (2 * n, n), "body for group 2 + frame");
        assert!(budget.start_delivery(2, &mut c, 0, 7, n));
        assert_eq!((budget.used(), budget.body_count()), (2 * n, 0));
        budget.end_delivery(&mut a, n);
        budget.end_delivery(&mut c, n);
        assert_eq!((budget.used(), a, c), (0, 0, 0));
    }
}
