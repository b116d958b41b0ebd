//! The table of requests waiting for an answer, each with its own deadline.
//!
//! Keyed by the numeric rid; a min-heap of deadlines makes "the next
//! deadline" O(1) and "everything due" O(log n), so the driver can ask for
//! [`ClientCore::poll_timeout`](super::ClientCore::poll_timeout) after every
//! input without scanning thousands of in-flight publishes.
//!
//! A sorted `VecDeque` and a `BinaryHeap` rather than `BTreeMap`s: rids only
//! grow, so inserts append and answers (which mostly come in order) remove
//! from the front, and the two collections cost a fraction of the B-tree's
//! code in the browser SDK's wasm, which has a size budget.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::events::SubscriptionId;

/// What a pending request is for, so its answer or failure reaches the
/// right event.
#[derive(Debug)]
pub(crate) enum Pending {
    Publish {
        /// The encoded `PUBLISH` frame, rid included, ready to (re)send
        /// (after a reconnect, or after `rate_limited`).
        text: String,
        /// Has `opts.id`: safe to re-send after a reconnect, the hub
        /// de-duplicates.
        has_event_id: bool,
        /// On the wire (false while in the outbound queue).
        sent: bool,
    },
    Subscribe {
        sub: SubscriptionId,
    },
    /// A `SUBSCRIBE` whose subscription was removed before the answer: the
    /// answer is consumed silently.
    CancelledSubscribe,
    Unsubscribe {
        sub: SubscriptionId,
    },
    Ping,
}

#[derive(Debug)]
struct Entry {
    rid: u64,
    deadline: u64,
    pending: Pending,
}

#[derive(Debug, Default)]
pub(crate) struct RequestTable {
    /// Sorted by rid (= send order).
    entries: VecDeque<Entry>,
    /// `(deadline, rid)` of every entry, earliest on top. Removing an entry
    /// leaves its heap item behind ("stale"); stale items are dropped when
    /// they reach the top, so the top is always a live entry's deadline.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
}

/// Where `key` is (`Ok`) or would go (`Err`) in `entries`, sorted by
/// `key_of`, like `binary_search_by_key`, with a fast path for the common
/// cases of the tables that keep entries in the order they are made: a new
/// (largest) key, and the oldest entry.
pub(crate) fn sorted_position<T>(
    entries: &VecDeque<T>,
    key: u64,
    key_of: fn(&T) -> u64,
) -> Result<usize, usize> {
    match (entries.front(), entries.back()) {
        (None, _) => return Err(0),
        (_, Some(last)) if key > key_of(last) => return Err(entries.len()),
        (Some(first), _) if key == key_of(first) => return Ok(0),
        _ => {}
    }
    entries.binary_search_by_key(&key, key_of)
}

impl RequestTable {
    fn position(&self, rid: u64) -> Result<usize, usize> {
        sorted_position(&self.entries, rid, |entry| entry.rid)
    }

    pub(crate) fn insert(&mut self, rid: u64, deadline: u64, pending: Pending) {
        let entry = Entry {
            rid,
            deadline,
            pending,
        };
        match self.position(rid) {
            Ok(index) => self.entries[index] = entry,
            Err(index) => self.entries.insert(index, entry),
        }
        self.deadlines.push(Reverse((deadline, rid)));
        self.drop_stale();
    }

    pub(crate) fn remove(&mut self, rid: u64) -> Option<Pending> {
        let index = self.position(rid).ok()?;
        let entry = self.entries.remove(index)?;
        self.drop_stale();
        Some(entry.pending)
    }

    pub(crate) fn get_mut(&mut self, rid: u64) -> Option<&mut Pending> {
        let index = self.position(rid).ok()?;
        Some(&mut self.entries[index].pending)
    }

    pub(crate) fn deadline(&self, rid: u64) -> Option<u64> {
        let index = self.position(rid).ok()?;
        Some(self.entries[index].deadline)
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines
            .peek()
            .map(|Reverse((deadline, _))| *deadline)
    }

    /// Removes and returns one request whose deadline is at or before `now`.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, Pending)> {
        let &Reverse((deadline, rid)) = self.deadlines.peek()?;
        if deadline > now {
            return None;
        }
        self.remove(rid).map(|pending| (rid, pending))
    }

    /// Removes every request, in rid (= send) order.
    pub(crate) fn drain(&mut self) -> Vec<(u64, Pending)> {
        self.deadlines.clear();
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|entry| (entry.rid, entry.pending))
            .collect()
    }

    /// The rids of the requests `select` picks, in rid (= send) order.
    pub(crate) fn rids(&self, mut select: impl FnMut(&Pending) -> bool) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|entry| select(&entry.pending))
            .map(|entry| entry.rid)
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Restores the heap's invariant (a live top) and bounds its stale
    /// items: answers that come out of deadline order leave them below the
    /// top, so the heap is rebuilt once they outnumber the live ones.
    fn drop_stale(&mut self) {
        if self.deadlines.len() > 2 * self.entries.len() + 32 {
            self.deadlines = self
                .entries
                .iter()
                .map(|entry| Reverse((entry.deadline, entry.rid)))
                .collect();
            return;
        }
        while let Some(&Reverse((deadline, rid))) = self.deadlines.peek() {
            let live = self
                .position(rid)
                .is_ok_and(|index| self.entries[index].deadline == deadline);
            if live {
                break;
            }
            self.deadlines.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Pending, RequestTable};

    #[test]
    fn deadlines_follow_removals_in_any_order() {
        let mut table = RequestTable::default();
        for rid in 1..=100 {
            // Deadlines out of rid order: 1 → 1100, 2 → 1099, …
            table.insert(rid, 1101 - rid, Pending::Ping);
        }
        assert_eq!(table.next_deadline(), Some(1001));
        // Remove the soonest-due requests out of their deadline order.
        for rid in (51..=100).step_by(2).chain((52..=100).step_by(2)) {
            assert!(table.remove(rid).is_some());
        }
        assert_eq!(table.len(), 50);
        assert_eq!(table.next_deadline(), Some(1051));
        assert!(table.deadlines.len() <= 2 * table.len() + 32);
        assert!(table.pop_due(1050).is_none());
        let due: Vec<u64> =
            std::iter::from_fn(|| table.pop_due(1060).map(|(rid, _)| rid)).collect();
        assert_eq!(due, (41..=50).rev().collect::<Vec<_>>());
        assert_eq!(table.rids(|_| true), (1..=40).collect::<Vec<_>>());
        assert!(table.get_mut(45).is_none());
        assert!(table.get_mut(40).is_some());
        let drained: Vec<u64> = table.drain().into_iter().map(|(rid, _)| rid).collect();
        assert_eq!(drained, (1..=40).collect::<Vec<_>>());
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn reinserting_a_rid_moves_its_deadline() {
        let mut table = RequestTable::default();
        table.insert(1, 10, Pending::Ping);
        table.insert(2, 20, Pending::Ping);
        table.insert(1, 30, Pending::Ping);
        assert_eq!(table.len(), 2);
        assert_eq!(table.next_deadline(), Some(20));
        assert_eq!(table.pop_due(25).map(|(rid, _)| rid), Some(2));
        assert_eq!(table.next_deadline(), Some(30));
        assert!(table.pop_due(29).is_none());
        assert_eq!(table.pop_due(30).map(|(rid, _)| rid), Some(1));
        assert_eq!(table.next_deadline(), None);
    }
}
