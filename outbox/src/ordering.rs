//! Per-key order with many drainers, the one rule both stores apply.
//!
//! A record with a key is claimable only while it is its key's *head*: the
//! oldest record of the key that is `pending` or `claimed`. So no drainer
//! can take a later record while an older one is unsent: a `claimed` head
//! whose lease is live is not due, which blocks its key until the owner
//! marks it sent (or its lease expires and it is claimed again); a head in
//! backoff blocks its key until it is due. Records without a key have no
//! order constraint. A `dead` record does not block its key (it is parked;
//! replaying it publishes it after the newer ones).
//!
//! The price: one record per key per claim, so a single hot key drains at
//! one record per claim round trip; throughput comes from many keys (or
//! keyless records) per batch. Runs of a key in one batch would need the
//! claim to prove that no unsent record of the key lies between the head
//! and the run, which the due-record query alone cannot.

use std::collections::{HashMap, HashSet};

/// A due record, in creation order, as the claim's first query found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate<Id> {
    pub id: Id,
    pub key: Option<String>,
}

/// The keys of `candidates` (to look their heads up).
pub(crate) fn keys_of<Id>(candidates: &[Candidate<Id>]) -> Vec<String> {
    let mut seen = HashSet::new();
    candidates
        .iter()
        .filter_map(|c| c.key.as_ref())
        .filter(|key| seen.insert(*key))
        .cloned()
        .collect()
}

/// The candidates that may be claimed, in creation order, at most `limit`:
/// every keyless one and every key's head.
pub(crate) fn claimable<Id: Clone + Eq>(
    candidates: &[Candidate<Id>],
    heads: &HashMap<String, Id>,
    limit: usize,
) -> Vec<Id> {
    candidates
        .iter()
        .filter(|candidate| match &candidate.key {
            None => true,
            Some(key) => heads.get(key.as_str()) == Some(&candidate.id),
        })
        .take(limit)
        .map(|candidate| candidate.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u32, key: Option<&str>) -> Candidate<u32> {
        Candidate {
            id,
            key: key.map(str::to_owned),
        }
    }

    #[test]
    fn takes_each_keys_head_and_every_keyless_record() {
        let candidates = [
            c(1, Some("a")),
            c(2, Some("b")),
            c(3, None),
            c(4, Some("a")),
            c(5, Some("b")),
        ];
        // "b"'s head (0) is not among the candidates: it is in backoff or
        // claimed by another drainer, so "b" is blocked.
        let heads = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 0)]);
        assert_eq!(claimable(&candidates, &heads, 10), vec![1, 3]);
        assert_eq!(claimable(&candidates, &heads, 1), vec![1]);
    }

    #[test]
    fn a_key_without_a_known_head_is_blocked() {
        let candidates = [c(7, Some("k"))];
        assert!(claimable(&candidates, &HashMap::new(), 10).is_empty());
        assert_eq!(
            keys_of(&[c(1, Some("x")), c(2, Some("x")), c(3, None)]),
            ["x"]
        );
    }
}
