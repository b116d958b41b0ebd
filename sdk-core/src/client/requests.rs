//! The table of requests waiting for an answer, each with its own deadline.
//!
//! Keyed by the numeric rid; a second index ordered by deadline makes "the
//! next deadline" and "everything due" O(log n), so the driver can ask for
//! [`ClientCore::poll_timeout`](super::ClientCore::poll_timeout) after every
//! input without scanning thousands of in-flight publishes.

use std::collections::{BTreeMap, BTreeSet};

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

#[derive(Debug, Default)]
pub(crate) struct RequestTable {
    entries: BTreeMap<u64, (u64, Pending)>,
    by_deadline: BTreeSet<(u64, u64)>,
}

impl RequestTable {
    pub(crate) fn insert(&mut self, rid: u64, deadline: u64, pending: Pending) {
        if let Some((old_deadline, _)) = self.entries.insert(rid, (deadline, pending)) {
            self.by_deadline.remove(&(old_deadline, rid));
        }
        self.by_deadline.insert((deadline, rid));
    }

    pub(crate) fn remove(&mut self, rid: u64) -> Option<Pending> {
        let (deadline, pending) = self.entries.remove(&rid)?;
        self.by_deadline.remove(&(deadline, rid));
        Some(pending)
    }

    pub(crate) fn get_mut(&mut self, rid: u64) -> Option<&mut Pending> {
        self.entries.get_mut(&rid).map(|(_, pending)| pending)
    }

    pub(crate) fn deadline(&self, rid: u64) -> Option<u64> {
        self.entries.get(&rid).map(|&(deadline, _)| deadline)
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|&(deadline, _)| deadline)
    }

    /// Removes and returns one request whose deadline is at or before `now`.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, Pending)> {
        let &(deadline, rid) = self.by_deadline.first()?;
        if deadline > now {
            return None;
        }
        self.remove(rid).map(|pending| (rid, pending))
    }

    /// Removes every request, in rid (= send) order.
    pub(crate) fn drain(&mut self) -> Vec<(u64, Pending)> {
        self.by_deadline.clear();
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|(rid, (_, pending))| (rid, pending))
            .collect()
    }

    /// The rids of the requests `select` picks, in rid (= send) order.
    pub(crate) fn rids(&self, mut select: impl FnMut(&Pending) -> bool) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, (_, pending))| select(pending))
            .map(|(&rid, _)| rid)
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
