//! The registry of subscriptions: what to resubscribe after a reconnect and
//! where each `EVENT` goes.
//!
//! The hub echoes an `EVENT`'s `topic` and `group` exactly as they were
//! subscribed, so `(pattern, group)` — the protocol's `topic::group` — finds
//! the subscription. The pair is kept as a tuple rather than the joined
//! string: both halves may contain `::`, so joined keys could collide.

use std::cmp::Ordering;

use super::events::{Gap, SubscriptionId};
use super::held::{HeldDeliveries, MAX_INFLIGHT_LIMIT};
use crate::frames::{Group, StartFrom, SubscribeOpts};
use crate::topic::Pattern;

#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) pattern: Pattern,
    pub(crate) group: Option<Group>,
    /// The options as the application gave them.
    pub(crate) opts: SubscribeOpts,
    /// The rid of the `SUBSCRIBE` waiting for its `SUBACK`, if any.
    pub(crate) pending_rid: Option<u64>,
    /// Durable groups: the deliveries the current connection holds.
    pub(crate) held: HeldDeliveries,
    /// Live subscriptions: where the live sequence stands (gapless resume).
    pub(crate) resume: Resume,
}

impl Subscription {
    pub(crate) fn new(pattern: Pattern, group: Option<Group>, opts: SubscribeOpts) -> Self {
        Subscription {
            pattern,
            group,
            opts,
            pending_rid: None,
            held: HeldDeliveries::default(),
            resume: Resume::default(),
        }
    }

    /// The most deliveries of this subscription the table keeps (see
    /// `held`): the `max_inflight` asked for, else the hub's largest.
    pub(crate) fn held_cap(&self) -> usize {
        self.opts
            .max_inflight
            .map_or(MAX_INFLIGHT_LIMIT, |n| n as usize)
    }

    /// The options of the next `SUBSCRIBE`. A live subscription that has
    /// been confirmed before resumes where it stands: `from` the next seq
    /// it has not delivered, and without `snapshot` (that was delivered
    /// already); the seq asked for is remembered to tell a gap.
    pub(crate) fn next_subscribe_opts(&mut self) -> SubscribeOpts {
        let opts = match (&self.group, self.resume.next) {
            (None, Some(next)) => SubscribeOpts {
                from: Some(StartFrom::Seq(next)),
                snapshot: None,
                ..self.opts.clone()
            },
            _ => self.opts.clone(),
        };
        self.resume.requested = match (&self.group, &opts.from) {
            (None, Some(StartFrom::Seq(from))) => Some(*from),
            _ => None,
        };
        opts
    }
}

/// Gapless resume of a live subscription (semantics.md §4): the hub sends
/// an ephemeral subscription with `from` = N the stored events from N on,
/// then live ones, and answers `SUBACK.from_seq` = the first seq it will
/// deliver.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    /// The seq to resume from: one past the last event delivered, or the
    /// `from_seq` of the last `SUBACK` when nothing newer was delivered.
    /// `None` until the first `SUBACK` or event.
    pub(crate) next: Option<u64>,
    /// The `from` the `SUBSCRIBE` on the wire asked for, as a seq.
    requested: Option<u64>,
    /// A gap not yet handed out with a delivery.
    pending_gap: Option<Gap>,
}

impl Resume {
    /// A `SUBACK` says the hub starts at `from_seq`: the gap, if it starts
    /// later than asked.
    pub(crate) fn confirmed(&mut self, from_seq: u64) -> Option<Gap> {
        let gap = self
            .requested
            .take()
            .filter(|&requested| from_seq > requested)
            .map(|requested| Gap {
                from: requested,
                to: from_seq - 1,
            });
        if let Some(gap) = gap {
            self.pending_gap = Some(match self.pending_gap {
                Some(pending) => pending.merge(gap),
                None => gap,
            });
        }
        self.next = Some(self.next.map_or(from_seq, |next| next.max(from_seq)));
        gap
    }

    /// An event of the live sequence arrived: `None` when it was delivered
    /// already (a duplicate of the resume), else the gap to hand out with
    /// it, if any.
    pub(crate) fn deliver(&mut self, seq: u64) -> Option<Option<Gap>> {
        if self.next.is_some_and(|next| seq < next) {
            return None;
        }
        self.next = Some(seq.saturating_add(1));
        Some(self.pending_gap.take())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Sorted by id: creation order, which is also the resubscribe order.
    /// A sorted `Vec` rather than a `BTreeMap`: ids only grow and there are
    /// few subscriptions, and the B-tree's code weighs on the browser SDK's
    /// wasm size budget.
    by_id: Vec<(SubscriptionId, Subscription)>,
    /// Sorted by `(pattern, group)` text, searched by halves: `O(log n)`
    /// per `EVENT` like a hash map, without a hasher's code in the wasm.
    by_key: Vec<(Pattern, Option<Group>, SubscriptionId)>,
}

/// The order of `by_key`: pattern text, then group (none first).
fn key_order(
    (pattern, group): (&Pattern, Option<&Group>),
    (other_pattern, other_group): (&Pattern, Option<&Group>),
) -> Ordering {
    pattern.as_str().cmp(other_pattern.as_str()).then_with(|| {
        group
            .map(Group::as_str)
            .cmp(&other_group.map(Group::as_str))
    })
}

impl Registry {
    pub(crate) fn find(&self, pattern: &Pattern, group: Option<&Group>) -> Option<SubscriptionId> {
        let index = self.key_position(pattern, group).ok()?;
        Some(self.by_key[index].2)
    }

    pub(crate) fn insert(&mut self, id: SubscriptionId, sub: Subscription) {
        match self.key_position(&sub.pattern, sub.group.as_ref()) {
            Ok(index) => self.by_key[index].2 = id,
            Err(index) => self
                .by_key
                .insert(index, (sub.pattern.clone(), sub.group.clone(), id)),
        }
        match self.position(id) {
            Ok(index) => self.by_id[index].1 = sub,
            Err(index) => self.by_id.insert(index, (id, sub)),
        }
    }

    pub(crate) fn remove(&mut self, id: SubscriptionId) -> Option<Subscription> {
        let index = self.position(id).ok()?;
        let (_, sub) = self.by_id.remove(index);
        if let Ok(index) = self.key_position(&sub.pattern, sub.group.as_ref()) {
            self.by_key.remove(index);
        }
        Some(sub)
    }

    pub(crate) fn get(&self, id: SubscriptionId) -> Option<&Subscription> {
        let index = self.position(id).ok()?;
        Some(&self.by_id[index].1)
    }

    pub(crate) fn get_mut(&mut self, id: SubscriptionId) -> Option<&mut Subscription> {
        let index = self.position(id).ok()?;
        Some(&mut self.by_id[index].1)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Subscription> {
        self.by_id.iter_mut().map(|(_, sub)| sub)
    }

    pub(crate) fn ids(&self) -> Vec<SubscriptionId> {
        self.by_id.iter().map(|(id, _)| *id).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn position(&self, id: SubscriptionId) -> Result<usize, usize> {
        self.by_id.binary_search_by_key(&id, |(id, _)| *id)
    }

    fn key_position(&self, pattern: &Pattern, group: Option<&Group>) -> Result<usize, usize> {
        self.by_key
            .binary_search_by(|(p, g, _)| key_order((p, g.as_ref()), (pattern, group)))
    }
}
