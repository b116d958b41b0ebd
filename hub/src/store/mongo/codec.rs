//! How the MongoDB store lays out its documents, and the string keys they
//! are found by.
//!
//! Integers are BSON int64. A `seq` or cursor above `i64::MAX` (a client's
//! absurd `from`) is clamped, which keeps its meaning ("after everything");
//! other u64 values (a publisher's `ts`) are stored bit-for-bit so every
//! value round-trips. The payload is stored as the exact JSON text the
//! publisher sent, so its bytes (spacing, key order, big numbers) survive.
//! Headers are an array of `{n: name, v: value}` documents, not one
//! sub-document, because BSON field names cannot hold every string a header
//! name can (NUL); not `[name, value]` pairs either, because FerretDB
//! refuses nested arrays.

use std::collections::BTreeMap;

use mongodb::bson::{Bson, DateTime, Document, doc};
use promhub_core::Topic;
use promhub_core::frames::Event;
use serde_json::value::RawValue;

use super::super::{DeadLetter, GroupKey, NewEvent, StoreError};

pub(super) fn seq_to_bson(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn bits_to_bson(v: u64) -> i64 {
    v as i64
}

pub(super) fn from_bson_int(v: i64) -> u64 {
    v as u64
}

/// `_id` of a latest-by-key entry. A topic never contains a control
/// character, so the first NUL ends it, whatever the key holds; every key
/// of one topic sorts inside [`topic_key_range`].
pub(super) fn latest_id(topic: &str, key: &str) -> String {
    format!("{topic}\0{key}")
}

/// `_id` of a de-duplication entry: publisher ids are de-duplicated per
/// topic (semantics.md §3). Neither a topic nor an `opts.id` contains a
/// control character, so the NUL separates them unambiguously.
pub(super) fn dedup_id(topic: &str, id: &str) -> String {
    format!("{topic}\0{id}")
}

/// The `_id` range `[low, high)` holding every latest-by-key entry of
/// exactly `topic`.
pub(super) fn topic_key_range(topic: &str) -> (String, String) {
    (format!("{topic}\0"), format!("{topic}\u{1}"))
}

/// `_id` of a group: the pattern's length first, so that no two
/// (pattern, group) pairs share one, whatever characters they hold.
pub(super) fn group_id(key: &GroupKey) -> String {
    format!("{}:{}{}", key.pattern.len(), key.pattern, key.group)
}

/// `_id` of a dead letter: its group's `_id` and a fixed-width seq.
pub(super) fn dead_letter_id(key: &GroupKey, seq: u64) -> String {
    format!("{}/{:020}", group_id(key), seq_to_bson(seq))
}

/// The stored form of an event. `cid` marks a publisher-chosen id (the only
/// kind de-duplicated) and `at` is when it was stored; both let a restart
/// rebuild the de-duplication entry of an event whose batch was cut short.
pub(super) fn event_document(seq: u64, event: &NewEvent, stored_at: DateTime) -> Document {
    let mut doc = doc! {
        "_id": seq_to_bson(seq),
        "id": &event.id,
        "topic": event.topic.as_str(),
        "ts": bits_to_bson(event.ts),
        "payload": event.payload.get(),
        "at": stored_at,
    };
    if event.client_id {
        doc.insert("cid", true);
    }
    if let Some(key) = &event.key {
        doc.insert("key", key);
    }
    if let Some(headers) = &event.headers {
        let pairs: Vec<Bson> = headers
            .iter()
            .map(|(name, value)| Bson::Document(doc! { "n": name, "v": value }))
            .collect();
        doc.insert("headers", pairs);
    }
    if let Some(tags) = &event.tags {
        doc.insert("tags", tags);
    }
    if let Some(caused_by) = &event.caused_by {
        doc.insert("caused_by", caused_by);
    }
    if let Some(sid) = &event.sid {
        doc.insert("sid", sid);
    }
    doc
}

/// The inverse of [`event_document`].
pub(super) fn event_from_document(doc: &Document) -> Result<Event, StoreError> {
    let seq = from_bson_int(int_field(doc, "_id", "an event")?);
    let what = format!("event {seq}");
    let topic = Topic::parse(str_field(doc, "topic", &what)?)
        .map_err(|e| StoreError::Corrupt(format!("{what}: bad topic: {e}")))?;
    let payload = RawValue::from_string(str_field(doc, "payload", &what)?.to_owned())
        .map_err(|e| StoreError::Corrupt(format!("{what}: bad payload: {e}")))?;
    let headers = match doc.get("headers") {
        None => None,
        Some(Bson::Array(pairs)) => {
            let mut headers = BTreeMap::new();
            for pair in pairs {
                let Bson::Document(pair) = pair else {
                    return Err(corrupt_field(&what, "headers"));
                };
                headers.insert(
                    str_field(pair, "n", &what)?.to_owned(),
                    str_field(pair, "v", &what)?.to_owned(),
                );
            }
            Some(headers)
        }
        Some(_) => return Err(corrupt_field(&what, "headers")),
    };
    Ok(Event {
        id: str_field(doc, "id", &what)?.to_owned(),
        seq,
        topic,
        ts: from_bson_int(int_field(doc, "ts", &what)?),
        key: optional_str(doc, "key", &what)?,
        payload,
        headers,
        tags: optional_strings(doc, "tags", &what)?,
        caused_by: optional_strings(doc, "caused_by", &what)?,
        sid: optional_str(doc, "sid", &what)?,
    })
}

pub(super) fn dead_letter_document(letter: &DeadLetter) -> Document {
    doc! {
        "_id": dead_letter_id(&letter.key, letter.seq),
        "gid": group_id(&letter.key),
        "pattern": &letter.key.pattern,
        "group": &letter.key.group,
        "seq": seq_to_bson(letter.seq),
        "event_id": &letter.event_id,
        "reason": &letter.reason,
        "attempts": i64::from(letter.attempts),
        "dead_at": bits_to_bson(letter.dead_at),
    }
}

pub(super) fn dead_letter_from_document(
    key: &GroupKey,
    doc: &Document,
) -> Result<DeadLetter, StoreError> {
    let what = "a dead letter";
    let attempts = int_field(doc, "attempts", what)?;
    Ok(DeadLetter {
        key: key.clone(),
        seq: from_bson_int(int_field(doc, "seq", what)?),
        event_id: str_field(doc, "event_id", what)?.to_owned(),
        reason: str_field(doc, "reason", what)?.to_owned(),
        attempts: u32::try_from(attempts).map_err(|_| corrupt_field(what, "attempts"))?,
        dead_at: from_bson_int(int_field(doc, "dead_at", what)?),
    })
}

fn corrupt_field(what: &str, field: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "{what}: field `{field}` is missing or has the wrong type"
    ))
}

/// An integer field, int64 or int32 (a server may narrow small numbers).
pub(super) fn int_field(doc: &Document, field: &str, what: &str) -> Result<i64, StoreError> {
    match doc.get(field) {
        Some(Bson::Int64(v)) => Ok(*v),
        Some(Bson::Int32(v)) => Ok(i64::from(*v)),
        _ => Err(corrupt_field(what, field)),
    }
}

pub(super) fn str_field<'d>(
    doc: &'d Document,
    field: &str,
    what: &str,
) -> Result<&'d str, StoreError> {
    match doc.get(field) {
        Some(Bson::String(s)) => Ok(s),
        _ => Err(corrupt_field(what, field)),
    }
}

fn optional_str(doc: &Document, field: &str, what: &str) -> Result<Option<String>, StoreError> {
    match doc.get(field) {
        None => Ok(None),
        Some(Bson::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(corrupt_field(what, field)),
    }
}

fn optional_strings(
    doc: &Document,
    field: &str,
    what: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    match doc.get(field) {
        None => Ok(None),
        Some(Bson::Array(items)) => items
            .iter()
            .map(|item| match item {
                Bson::String(s) => Ok(s.clone()),
                _ => Err(corrupt_field(what, field)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(corrupt_field(what, field)),
    }
}

/// A list of integers (a group's done marks).
pub(super) fn int_list(doc: &Document, field: &str, what: &str) -> Result<Vec<i64>, StoreError> {
    match doc.get(field) {
        None | Some(Bson::Null) => Ok(Vec::new()),
        Some(Bson::Array(items)) => items
            .iter()
            .map(|item| match item {
                Bson::Int64(v) => Ok(*v),
                Bson::Int32(v) => Ok(i64::from(*v)),
                _ => Err(corrupt_field(what, field)),
            })
            .collect(),
        Some(_) => Err(corrupt_field(what, field)),
    }
}

/// A document mapping seqs (decimal keys) to attempts (a group's failed
/// deliveries).
pub(super) fn attempt_map(
    doc: &Document,
    field: &str,
    what: &str,
) -> Result<Vec<(u64, u32)>, StoreError> {
    match doc.get(field) {
        None | Some(Bson::Null) => Ok(Vec::new()),
        Some(Bson::Document(entries)) => entries
            .iter()
            .map(|(seq, attempts)| {
                let attempts = match attempts {
                    Bson::Int64(v) => u32::try_from(*v).ok(),
                    Bson::Int32(v) => u32::try_from(*v).ok(),
                    _ => None,
                };
                seq.parse::<u64>()
                    .ok()
                    .zip(attempts)
                    .ok_or_else(|| corrupt_field(what, field))
            })
            .collect(),
        Some(_) => Err(corrupt_field(what, field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_ids_are_unambiguous() {
        let key = |p: &str, g: &str| GroupKey {
            pattern: p.to_owned(),
            group: g.to_owned(),
        };
        assert_ne!(group_id(&key("a.b", "c")), group_id(&key("a.", "bc")));
        assert_ne!(group_id(&key("1:a", "b")), group_id(&key("1", ":ab")));
        assert_ne!(
            dead_letter_id(&key("a", "b"), 1),
            dead_letter_id(&key("a", "b/00000000000000000001"), 0)
        );
        let (low, high) = topic_key_range("a.b");
        for k in ["", "k", "\0", "\u{10FFFF}"] {
            let id = latest_id("a.b", k);
            assert!(low <= id && id < high, "{id:?}");
        }
        // Another topic with the same start is outside the range.
        assert!(latest_id("a.bc", "") >= high);
        assert!(latest_id("a.b.c", "") >= high);
    }
}
