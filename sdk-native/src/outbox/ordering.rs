//! Per-key order with many drainers, the one rule both stores apply.
//!
//! A record with a key may be claimed only together with every older
//! unsent record of that key: the claim takes the key's *head* (its oldest
//! record that is `pending` or `claimed`) and the due records of the key
//! right behind it, and no drainer can take a later record while an older
//! one is unsent. A `claimed` head whose lease is live is not due, so its
//! key is blocked until the owner marks it sent (or its lease expires and
//! the whole run is claimed again, oldest first). Records without a key
//! have no order constraint. A `dead` record does not block its key (it is
//! parked; replaying it publishes it after the newer ones).

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
/// every keyless one, and for each key its head followed by the key's next
/// candidates up to the first one missing.
pub(crate) fn claimable<Id: Clone + Eq>(
    candidates: &[Candidate<Id>],
    heads: &HashMap<String, Id>,
    limit: usize,
) -> Vec<Id> {
    // A key is open while its run continues from the head.
    let mut open: HashMap<&str, bool> = HashMap::new();
    let mut chosen = Vec::new();
    for candidate in candidates {
        if chosen.len() == limit {
            break;
        }
        let take = match &candidate.key {
            None => true,
            Some(key) => {
                let state = open
                    .entry(key.as_str())
                    .or_insert_with(|| heads.get(key.as_str()) == Some(&candidate.id));
                *state
            }
        };
        if take {
            chosen.push(candidate.id.clone());
        }
    }
    chosen
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
    fn takes_each_keys_run_from_its_head_and_every_keyless_record() {
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
        assert_eq!(claimable(&candidates, &heads, 10), vec![1, 3, 4]);
        assert_eq!(claimable(&candidates, &heads, 2), vec![1, 3]);
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
