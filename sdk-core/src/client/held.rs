//! The deliveries of one durable subscription that the current connection
//! holds: what an `ACK`, `NACK` or `WORKING` may name (the stale-delivery
//! guard).
//!
//! The hub settles only deliveries the sending connection holds, and finds
//! them by seq (semantics.md §4). Two answers would still go wrong without
//! this table: one for a delivery of a connection that has closed (the hub
//! ignores it, so sending it is pointless), and a late `NACK`/`WORKING` for
//! a delivery the hub has since made again with the same seq (after a
//! reconnect, or after its ack deadline on the same connection): the hub
//! would take it for the new delivery. Each delivery gets a
//! [`DeliveryTag`]; a newer delivery of the same seq replaces the older
//! tag, and every tag is forgotten when the connection closes.
//!
//! # Bound
//!
//! The hub hands one connection at most `max_inflight` unacknowledged
//! events per subscription (flow control), and a redelivery of a held seq
//! replaces its entry, so a hub that keeps to it never makes the table
//! grow past that. The table is still capped, at the subscription's
//! requested `max_inflight`, else at [`MAX_INFLIGHT_LIMIT`] (the largest
//! the hub accepts, which covers any hub-side default): past the cap the
//! lowest seq is forgotten, and an answer for it is refused like any
//! stale one (the hub delivers that event again after its ack deadline).
//!
//! A `VecDeque` sorted by seq rather than a hash map: the hub delivers in
//! seq order and answers mostly come in that order, so inserts append and
//! settlements take from the front, and it costs the browser SDK's wasm
//! (which has a size budget) far less code.

use std::collections::VecDeque;

use super::events::DeliveryTag;
use super::requests::sorted_position;

/// The largest `max_inflight` the hub accepts (hub `MAX_INFLIGHT_LIMIT`).
pub const MAX_INFLIGHT_LIMIT: usize = 10_000;

#[derive(Debug)]
struct Held {
    seq: u64,
    /// The tag of the latest delivery of this seq.
    tag: DeliveryTag,
    id: String,
}

#[derive(Debug, Default)]
pub(crate) struct HeldDeliveries {
    /// Sorted by seq, one entry per seq.
    entries: VecDeque<Held>,
}

impl HeldDeliveries {
    fn position(&self, seq: u64) -> Result<usize, usize> {
        sorted_position(&self.entries, seq, |held| held.seq)
    }

    /// Records a delivery (replacing an earlier delivery of the same seq);
    /// forgets the lowest seq when `cap` are held already.
    pub(crate) fn insert(&mut self, cap: usize, seq: u64, id: &str, tag: DeliveryTag) {
        let held = Held {
            seq,
            tag,
            id: id.to_owned(),
        };
        match self.position(seq) {
            Ok(index) => self.entries[index] = held,
            Err(index) => {
                self.entries.insert(index, held);
                while self.entries.len() > cap.max(1) {
                    self.entries.pop_front();
                }
            }
        }
    }

    /// Is this exact delivery held?
    pub(crate) fn holds(&self, seq: u64, id: &str, tag: DeliveryTag) -> bool {
        self.find(seq, id, tag).is_some()
    }

    /// Forgets this exact delivery; false (and nothing changed) when it is
    /// not held.
    pub(crate) fn remove(&mut self, seq: u64, id: &str, tag: DeliveryTag) -> bool {
        match self.find(seq, id, tag) {
            Some(index) => {
                self.entries.remove(index);
                true
            }
            None => false,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    fn find(&self, seq: u64, id: &str, tag: DeliveryTag) -> Option<usize> {
        let index = self.position(seq).ok()?;
        let held = &self.entries[index];
        (held.tag == tag && held.id == id).then_some(index)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{DeliveryTag, HeldDeliveries};

    #[test]
    fn only_the_latest_delivery_of_a_seq_is_held() {
        let mut held = HeldDeliveries::default();
        held.insert(10, 5, "e5", DeliveryTag(1));
        held.insert(10, 5, "e5", DeliveryTag(2));
        assert!(!held.holds(5, "e5", DeliveryTag(1)));
        assert!(held.holds(5, "e5", DeliveryTag(2)));
        assert!(!held.holds(5, "other", DeliveryTag(2)));
        assert!(!held.remove(5, "e5", DeliveryTag(1)));
        assert!(held.remove(5, "e5", DeliveryTag(2)));
        assert!(!held.remove(5, "e5", DeliveryTag(2)));
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn past_the_cap_the_lowest_seq_is_forgotten() {
        let mut held = HeldDeliveries::default();
        for n in 1..=10_000u64 {
            held.insert(3, n, "e", DeliveryTag(n));
            // Redeliveries replace the entry in place.
            held.insert(3, n, "e", DeliveryTag(n + 1_000_000));
            assert!(held.len() <= 3);
        }
        assert!(held.holds(10_000, "e", DeliveryTag(1_010_000)));
        assert!(held.holds(9_998, "e", DeliveryTag(1_009_998)));
        assert!(!held.holds(9_997, "e", DeliveryTag(1_009_997)));
        held.clear();
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn a_long_held_delivery_survives_many_later_ones() {
        let mut held = HeldDeliveries::default();
        // The first delivery stays unanswered (a long job) while thousands
        // of later ones come and go: it stays held, memory stays bounded.
        held.insert(100, 1, "long", DeliveryTag(1));
        for seq in 2..5_000 {
            held.insert(100, seq, "e", DeliveryTag(seq));
            assert!(held.remove(seq, "e", DeliveryTag(seq)));
        }
        assert!(held.holds(1, "long", DeliveryTag(1)));
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn out_of_order_deliveries_and_answers_keep_the_table_sorted() {
        let mut held = HeldDeliveries::default();
        for seq in [5, 1, 9, 3, 7] {
            held.insert(10, seq, "e", DeliveryTag(seq));
        }
        let seqs: Vec<u64> = held.entries.iter().map(|h| h.seq).collect();
        assert_eq!(seqs, vec![1, 3, 5, 7, 9]);
        for seq in [7, 1, 9] {
            assert!(held.remove(seq, "e", DeliveryTag(seq)));
        }
        assert!(held.holds(3, "e", DeliveryTag(3)));
        assert!(held.holds(5, "e", DeliveryTag(5)));
        assert_eq!(held.len(), 2);
        // A lower seq than every held one, past the cap: it is the lowest,
        // so it goes at once.
        held.insert(2, 0, "e", DeliveryTag(0));
        assert!(!held.holds(0, "e", DeliveryTag(0)));
        assert_eq!(held.len(), 2);
    }
}
