//! The consumer groups that follow live commits (the ones with members),
//! indexed by pattern like the live index: exact topics in a hash map,
//! wildcard patterns matched per event. A commit costs O(matching groups +
//! distinct wildcard patterns), not O(all groups); groups without members
//! are not in the index and never touched by a commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use promhub_core::{Pattern, Topic};

use super::committed::Committed;
use super::group::GroupId;

#[derive(Debug)]
struct PatternGroups {
    pattern: Pattern,
    groups: Vec<GroupId>,
}

#[derive(Debug, Default)]
pub(crate) struct GroupIndex {
    /// Concrete patterns, by topic: one hash lookup per event.
    exact: HashMap<String, Vec<GroupId>>,
    /// Wildcard patterns, each matched against every event.
    wildcard: HashMap<String, PatternGroups>,
    indexed: HashSet<GroupId>,
}

impl GroupIndex {
    /// Groups in the index.
    pub fn len(&self) -> usize {
        self.indexed.len()
    }

    /// Adds a group (once; cheap when it is in already).
    pub fn insert(&mut self, gid: GroupId, pattern: &Pattern) {
        if !self.indexed.insert(gid) {
            return;
        }
        let groups = if pattern.is_concrete() {
            self.exact.entry(pattern.as_str().to_owned()).or_default()
        } else {
            &mut self
                .wildcard
                .entry(pattern.as_str().to_owned())
                .or_insert_with(|| PatternGroups {
                    pattern: pattern.clone(),
                    groups: Vec::new(),
                })
                .groups
        };
        groups.push(gid);
    }

    /// Removes a group (cheap when it is not in).
    pub fn remove(&mut self, gid: GroupId, pattern: &Pattern) {
        if !self.indexed.remove(&gid) {
            return;
        }
        let key = pattern.as_str();
        let empty = if pattern.is_concrete() {
            self.exact.get_mut(key).is_some_and(|groups| {
                take(groups, gid);
                groups.is_empty()
            })
        } else {
            self.wildcard.get_mut(key).is_some_and(|entry| {
                take(&mut entry.groups, gid);
                entry.groups.is_empty()
            })
        };
        if empty {
            if pattern.is_concrete() {
                self.exact.remove(key);
            } else {
                self.wildcard.remove(key);
            }
        }
    }

    /// Whether any indexed group's pattern matches `topic`: one hash
    /// lookup, then the wildcard patterns until the first match.
    pub fn wants(&self, topic: &Topic) -> bool {
        self.exact.contains_key(topic.as_str())
            || self.wildcard.values().any(|p| p.pattern.matches(topic))
    }

    /// The events of a committed batch (in seq order) that each indexed
    /// group's pattern matches, per group, in seq order.
    pub fn matching(&self, events: &[Arc<Committed>]) -> HashMap<GroupId, Vec<Arc<Committed>>> {
        let mut out: HashMap<GroupId, Vec<Arc<Committed>>> = HashMap::new();
        for event in events {
            let exact = self.exact.get(event.topic.as_str()).into_iter().flatten();
            let wildcard = self
                .wildcard
                .values()
                .filter(|p| p.pattern.matches(&event.topic))
                .flat_map(|p| p.groups.iter());
            for &gid in exact.chain(wildcard) {
                out.entry(gid).or_default().push(Arc::clone(event));
            }
        }
        out
    }
}

fn take(groups: &mut Vec<GroupId>, gid: GroupId) {
    if let Some(index) = groups.iter().position(|&g| g == gid) {
        groups.swap_remove(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::committed::test_committed;

    fn seqs(events: Option<&Vec<Arc<Committed>>>) -> Vec<u64> {
        events.map_or_else(Vec::new, |e| e.iter().map(|c| c.seq).collect())
    }

    #[test]
    fn each_group_gets_the_events_its_pattern_matches_in_order() {
        let mut index = GroupIndex::default();
        let exact = Pattern::parse("orders.eu").unwrap();
        let wild = Pattern::parse("orders.*").unwrap();
        let all = Pattern::parse("**").unwrap();
        index.insert(1, &exact);
        index.insert(2, &exact);
        index.insert(3, &wild);
        index.insert(4, &all);
        index.insert(4, &all);
        assert_eq!(index.len(), 4);
        let events = [
            test_committed(1, "orders.eu"),
            test_committed(2, "orders.us"),
            test_committed(3, "audit"),
            test_committed(4, "orders.eu"),
        ];
        let got = index.matching(&events);
        assert_eq!(seqs(got.get(&1)), [1, 4]);
        assert_eq!(seqs(got.get(&2)), [1, 4]);
        assert_eq!(seqs(got.get(&3)), [1, 2, 4]);
        assert_eq!(seqs(got.get(&4)), [1, 2, 3, 4]);
        index.remove(1, &exact);
        index.remove(3, &wild);
        index.remove(3, &wild);
        assert_eq!(index.len(), 2);
        let got = index.matching(&events);
        assert!(!got.contains_key(&1) && !got.contains_key(&3));
        assert_eq!(seqs(got.get(&2)), [1, 4]);
        assert!(index.wants(&Topic::parse("orders.eu").unwrap()));
        assert!(
            index.wants(&Topic::parse("audit").unwrap()),
            "matched by **"
        );
        index.remove(2, &exact);
        index.remove(4, &all);
        assert!(index.matching(&events).is_empty());
        assert!(!index.wants(&Topic::parse("orders.eu").unwrap()));
        assert!(!index.wants(&Topic::parse("audit").unwrap()));
        assert!(index.exact.is_empty() && index.wildcard.is_empty());
    }
}
