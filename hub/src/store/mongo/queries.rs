//! Collections, indexes and the shape of every query the MongoDB store runs
//! often. The store and the `explain` test both build their queries here,
//! so what the test explains is what the store runs.

use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;

/// Events by `_id` = seq.
pub(super) const EVENTS: &str = "events";
/// Latest event per (topic, key): `_id` = `topic NUL key`, `seq`.
pub(super) const LATEST: &str = "latest";
/// Publisher ids within the de-duplication window: `_id` = `topic NUL id`
/// (per-topic de-duplication), `topic`, `seq`, `stored_at`, `expire_at`.
pub(super) const DEDUP: &str = "dedup";
/// Consumer groups: `_id` = group id, `cursor`, `done` (marks above it).
pub(super) const GROUPS: &str = "groups";
pub(super) const DEAD_LETTERS: &str = "dead_letters";
/// Deliveries claimed by hubs (see `claims.rs`): `_id` = group id `/`
/// fixed-width seq, `seq`, `hub`, `attempts`, `done`.
pub(super) const GROUP_CLAIMS: &str = "group_claims";
/// Every topic with the seq of its newest event: `_id` = topic, `last`
/// (enumerates the topics a pattern matches without reading the log).
pub(super) const TOPICS: &str = "topics";
/// The seq counter (one document, `_id: "seq"`).
pub(super) const META: &str = "meta";
pub(super) const SEQ_COUNTER: &str = "seq";
/// Reserved seq ranges: `_id` = low, `high`, `writer`, `expires`, `done`
/// (the chain of reservations and the open ranges behind the horizon).
pub(super) const SEQ_RANGES: &str = "seq_ranges";
/// Marks a database whose `topics` collection lists every stored topic
/// (written once after filling it from the events of an older hub).
pub(super) const TOPICS_COMPLETE: &str = "topics";
/// Marks a database whose de-duplication entries are all keyed by topic
/// (written once after moving the entries of an older hub, keyed by id).
pub(super) const DEDUP_BY_TOPIC: &str = "dedup_by_topic";

/// Name of the TTL index that expires de-duplication entries.
pub(super) const DEDUP_EXPIRY_INDEX: &str = "expire_at_ttl";
/// The plain index used instead when the server has no TTL indexes.
pub(super) const DEDUP_EXPIRY_PLAIN_INDEX: &str = "expire_at";

/// The secondary indexes, per collection, besides `_id` (which serves every
/// by-seq, by-key and by-group query). The dedup expiry index is separate:
/// it depends on what the server supports.
pub(super) fn secondary_indexes() -> Vec<(&'static str, IndexModel)> {
    let named = |name: &str| IndexOptions::builder().name(name.to_owned()).build();
    vec![
        (
            EVENTS,
            // read_after for one concrete topic: equality on topic, range
            // and order on seq.
            IndexModel::builder()
                .keys(doc! { "topic": 1, "_id": 1 })
                .options(named("topic_seq"))
                .build(),
        ),
        (
            GROUPS,
            // The ops API's pages of groups in (pattern, group) order.
            IndexModel::builder()
                .keys(doc! { "pattern": 1, "group": 1 })
                .options(named("pattern_group"))
                .build(),
        ),
        (
            DEAD_LETTERS,
            // One group's dead letters in seq order, and their count.
            IndexModel::builder()
                .keys(doc! { "gid": 1, "seq": 1 })
                .options(named("group_seq"))
                .build(),
        ),
    ]
}

/// Name of the index MongoDB creates on `_id`.
pub(super) const ID_INDEX: &str = "_id_";

/// A query: filter, sort and limit on one collection, and the index meant
/// to serve it.
#[derive(Debug, Clone)]
pub(super) struct Query {
    pub collection: &'static str,
    pub filter: Document,
    pub sort: Option<Document>,
    pub limit: Option<i64>,
    /// Checked by the explain test (the store leaves the choice to the
    /// server's planner).
    #[cfg_attr(not(test), allow(dead_code))]
    pub index: &'static str,
}

impl Query {
    /// The `find` command for it (what `explain` takes).
    #[cfg(test)]
    pub fn find_command(&self) -> Document {
        let mut command = doc! { "find": self.collection, "filter": self.filter.clone() };
        if let Some(sort) = &self.sort {
            command.insert("sort", sort.clone());
        }
        if let Some(limit) = self.limit {
            command.insert("limit", limit);
        }
        command
    }
}

fn by_seq() -> Option<Document> {
    Some(doc! { "_id": 1 })
}

/// Events with `after < seq <= upto` in seq order (the `_id` index).
pub(super) fn events_after(after: i64, upto: i64, limit: i64) -> Query {
    Query {
        collection: EVENTS,
        filter: doc! { "_id": { "$gt": after, "$lte": upto } },
        sort: by_seq(),
        limit: Some(limit),
        index: ID_INDEX,
    }
}

/// The same for one topic (the `topic_seq` index).
pub(super) fn topic_events_after(topic: &str, after: i64, upto: i64, limit: i64) -> Query {
    Query {
        collection: EVENTS,
        filter: doc! { "topic": topic, "_id": { "$gt": after, "$lte": upto } },
        sort: by_seq(),
        limit: Some(limit),
        index: "topic_seq",
    }
}

/// One page of latest-by-key entries in `_id` (topic, key) order, from
/// `start` (exclusive when `after`) up to `high` (the `_id` index): one
/// topic's keys, every topic under a prefix, or all of them.
pub(super) fn latest_page(start: Option<(&str, bool)>, high: Option<&str>, limit: i64) -> Query {
    let mut range = Document::new();
    if let Some((start, after)) = start {
        range.insert(if after { "$gt" } else { "$gte" }, start);
    }
    if let Some(high) = high {
        range.insert("$lt", high);
    }
    let filter = if range.is_empty() {
        Document::new()
    } else {
        doc! { "_id": range }
    };
    Query {
        collection: LATEST,
        filter,
        sort: Some(doc! { "_id": 1 }),
        limit: Some(limit),
        index: ID_INDEX,
    }
}

/// One latest-by-key entry (the `_id` index).
pub(super) fn latest_entry(id: &str) -> Query {
    Query {
        collection: LATEST,
        filter: doc! { "_id": id },
        sort: None,
        limit: Some(1),
        index: ID_INDEX,
    }
}

/// Every document of a small collection (groups, for `groups()`).
pub(super) fn all(collection: &'static str) -> Query {
    Query {
        collection,
        filter: Document::new(),
        sort: None,
        limit: None,
        index: ID_INDEX,
    }
}

/// Events by seq (the `_id` index).
pub(super) fn events_by_seq(seqs: &[i64]) -> Query {
    Query {
        collection: EVENTS,
        filter: doc! { "_id": { "$in": seqs } },
        sort: by_seq(),
        limit: None,
        index: ID_INDEX,
    }
}

/// De-duplication entries with these `_id`s ([`dedup_id`](super::codec::dedup_id):
/// topic and publisher id; the `_id` index); the window is checked on the
/// results, because expiry runs only now and then.
pub(super) fn dedup_entries(ids: &[&str]) -> Query {
    let filter = match ids {
        // A single id as plain equality, which every server serves directly.
        [id] => doc! { "_id": *id },
        _ => doc! { "_id": { "$in": ids.iter().map(|id| Bson::from(*id)).collect::<Vec<_>>() } },
    };
    Query {
        collection: DEDUP,
        filter,
        sort: None,
        limit: None,
        index: ID_INDEX,
    }
}

/// Seq ranges whose batch never finished: still open, or given up after
/// their lease (`done: false`; a small collection, pruned as it goes).
pub(super) fn unfinished_ranges() -> Query {
    Query {
        collection: SEQ_RANGES,
        filter: doc! { "done": false },
        sort: None,
        limit: None,
        index: ID_INDEX,
    }
}

/// Events in the seq range `low..=high` with one of these publisher ids
/// (the `_id` index bounds it to one batch).
pub(super) fn events_with_ids_in(low: i64, high: i64, ids: &[&str]) -> Query {
    Query {
        collection: EVENTS,
        filter: doc! {
            "_id": { "$gte": low, "$lte": high },
            "id": { "$in": ids.iter().map(|id| Bson::from(*id)).collect::<Vec<_>>() },
        },
        sort: None,
        limit: None,
        index: ID_INDEX,
    }
}

/// One group's document (the `_id` index).
pub(super) fn group(group_id: &str) -> Query {
    Query {
        collection: GROUPS,
        filter: doc! { "_id": group_id },
        sort: None,
        limit: Some(1),
        index: ID_INDEX,
    }
}

/// Groups after `after` in (pattern, group) order (the `pattern_group`
/// index).
pub(super) fn groups_after(after: Option<&crate::store::GroupKey>, limit: i64) -> Query {
    let filter = match after {
        Some(key) => doc! { "$or": [
            { "pattern": { "$gt": &key.pattern } },
            { "pattern": &key.pattern, "group": { "$gt": &key.group } },
        ] },
        None => Document::new(),
    };
    Query {
        collection: GROUPS,
        filter,
        sort: Some(doc! { "pattern": 1, "group": 1 }),
        limit: Some(limit),
        index: "pattern_group",
    }
}

/// One group's dead letters after a seq, in seq order (the `group_seq`
/// index).
pub(super) fn dead_letters_after(group_id: &str, after: i64, limit: i64) -> Query {
    Query {
        collection: DEAD_LETTERS,
        filter: doc! { "gid": group_id, "seq": { "$gt": after } },
        sort: Some(doc! { "seq": 1 }),
        limit: Some(limit),
        index: "group_seq",
    }
}
