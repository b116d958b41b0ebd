//! The registry of subscriptions: what to resubscribe after a reconnect and
//! where each `EVENT` goes.
//!
//! The hub echoes an `EVENT`'s `topic` and `group` exactly as they were
//! subscribed, so `(pattern, group)` — the protocol's `topic::group` — finds
//! the subscription. The pair is kept as a tuple rather than the joined
//! string: both halves may contain `::`, so joined keys could collide.

use std::collections::HashMap;

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
    /// Sorted by id: creation order, which is also the resubscribe order.
    /// A sorted `Vec` rather than a `BTreeMap`: ids only grow and there are
    /// few subscriptions, and the B-tree's code weighs on the browser SDK's
    /// wasm size budget.
    by_id: Vec<(SubscriptionId, Subscription)>,
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
        match self.position(id) {
            Ok(index) => self.by_id[index].1 = sub,
            Err(index) => self.by_id.insert(index, (id, sub)),
        }
    }

    pub(crate) fn remove(&mut self, id: SubscriptionId) -> Option<Subscription> {
        let index = self.position(id).ok()?;
        let (_, sub) = self.by_id.remove(index);
        self.by_key
            .remove(&(sub.pattern.clone(), sub.group.clone()));
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

    pub(crate) fn ids(&self) -> Vec<SubscriptionId> {
        self.by_id.iter().map(|(id, _)| *id).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn position(&self, id: SubscriptionId) -> Result<usize, usize> {
        self.by_id.binary_search_by_key(&id, |(id, _)| *id)
    }
}
