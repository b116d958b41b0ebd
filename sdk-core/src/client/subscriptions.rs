//! The registry of subscriptions: what to resubscribe after a reconnect and
//! where each `EVENT` goes.
//!
//! The hub echoes an `EVENT`'s `topic` and `group` exactly as they were
//! subscribed, so `(pattern, group)` — the protocol's `topic::group` — finds
//! the subscription. The pair is kept as a tuple rather than the joined
//! string: both halves may contain `::`, so joined keys could collide.

use std::collections::{BTreeMap, HashMap};

use super::events::SubscriptionId;
use crate::frames::{Group, SubscribeOpts};
use crate::topic::Pattern;

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub(crate) pattern: Pattern,
    pub(crate) group: Option<Group>,
    pub(crate) opts: SubscribeOpts,
    /// The rid of the `SUBSCRIBE` waiting for its `SUBACK`, if any.
    pub(crate) pending_rid: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// In creation order, which is also the resubscribe order.
    by_id: BTreeMap<SubscriptionId, Subscription>,
    by_key: HashMap<(Pattern, Option<Group>), SubscriptionId>,
}

impl Registry {
    pub(crate) fn find(&self, pattern: &Pattern, group: Option<&Group>) -> Option<SubscriptionId> {
        // The tuple key needs owned parts; both are Arc-backed, so cloning
        // them is a reference-count bump.
        self.by_key.get(&(pattern.clone(), group.cloned())).copied()
    }

    pub(crate) fn insert(&mut self, id: SubscriptionId, sub: Subscription) {
        self.by_key
            .insert((sub.pattern.clone(), sub.group.clone()), id);
        self.by_id.insert(id, sub);
    }

    pub(crate) fn remove(&mut self, id: SubscriptionId) -> Option<Subscription> {
        let sub = self.by_id.remove(&id)?;
        self.by_key
            .remove(&(sub.pattern.clone(), sub.group.clone()));
        Some(sub)
    }

    pub(crate) fn get(&self, id: SubscriptionId) -> Option<&Subscription> {
        self.by_id.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: SubscriptionId) -> Option<&mut Subscription> {
        self.by_id.get_mut(&id)
    }

    pub(crate) fn ids(&self) -> Vec<SubscriptionId> {
        self.by_id.keys().copied().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}
