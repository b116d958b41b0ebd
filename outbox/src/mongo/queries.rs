//! The claim's queries, shared by the store and its `explain` test (what
//! the test explains is what the store runs).

use crate::Millis;
use mongodb::bson::{Bson, Document, doc};

use super::codec::date;

/// `pending` and due, or `claimed` with an expired lease.
pub fn due(now: Millis) -> Document {
    doc! {
        "$or": [
            { "status": "pending", "next_attempt_at": { "$lte": date(now) } },
            { "status": "claimed", "lease_until": { "$lte": date(now) } },
        ]
    }
}

/// Creation order (ties broken by `_id`).
pub fn creation_order() -> Document {
    doc! { "created_at": 1, "_id": 1 }
}

/// The unsent records of `keys` created up to `newest`, in creation order:
/// the first one of a key is its head. (FerretDB has no `$group` with
/// `$first`, so this is a plain, limited find; a key missing from a
/// truncated answer is just not claimed this time.)
pub fn key_heads(keys: &[String], newest: &Bson) -> Document {
    doc! {
        "key": { "$in": keys },
        "status": { "$in": ["pending", "claimed"] },
        "created_at": { "$lte": newest.clone() },
    }
}
