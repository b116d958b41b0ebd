//! The claim's queries, shared by the store and its `explain` test (what
//! the test explains is what the store runs).

use mongodb::bson::{Document, doc};
use promhub_core::frames::Millis;

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

/// The oldest unsent record of each of `keys`: `{_id: key, head: id}`.
pub fn key_heads(keys: &[String]) -> Vec<Document> {
    vec![
        doc! { "$match": { "key": { "$in": keys }, "status": { "$in": ["pending", "claimed"] } } },
        doc! { "$sort": { "key": 1, "created_at": 1, "_id": 1 } },
        doc! { "$group": { "_id": "$key", "head": { "$first": "$_id" } } },
    ]
}
