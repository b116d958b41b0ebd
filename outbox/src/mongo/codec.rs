//! Outbox records as MongoDB documents.
//!
//! The minimal document another language inserts (in its own transaction):
//! `{_id, topic, payload, key?, headers?, status: "pending", attempts: 0,
//! created_at: Date, next_attempt_at: Date}`; `_id` is a string or an
//! ObjectId (published as its hex string).

use crate::Millis;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};

use crate::{NewRecord, OutboxError, OutboxRecord};

pub(super) fn date(ms: Millis) -> DateTime {
    DateTime::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn millis(date: DateTime) -> Millis {
    u64::try_from(date.timestamp_millis()).unwrap_or(0)
}

/// The string form of an `_id`: the event id.
pub(super) fn id_string(id: &Bson) -> Result<String, OutboxError> {
    match id {
        Bson::String(text) => Ok(text.clone()),
        Bson::ObjectId(oid) => Ok(oid.to_hex()),
        other => Err(OutboxError::Corrupt(format!(
            "outbox _id must be a string or an ObjectId, not {other}"
        ))),
    }
}

/// The `_id` values an id string may stand for (a 24-hex id may have been
/// stored as an ObjectId).
pub(super) fn id_values(ids: &[String]) -> Vec<Bson> {
    let mut values = Vec::with_capacity(ids.len());
    for id in ids {
        values.push(Bson::String(id.clone()));
        if let Ok(oid) = ObjectId::parse_str(id) {
            values.push(Bson::ObjectId(oid));
        }
    }
    values
}

pub(super) fn new_document(
    mut record: NewRecord,
    now: Millis,
) -> Result<(String, Document), OutboxError> {
    let id = record.take_id();
    let payload = mongodb::bson::to_bson(&record.payload)
        .map_err(|e| OutboxError::Corrupt(format!("payload: {e}")))?;
    let mut document = doc! {
        "_id": &id,
        "topic": &record.topic,
        "payload": payload,
        "status": "pending",
        "attempts": 0_i32,
        "next_attempt_at": date(now),
        "created_at": date(now),
    };
    if let Some(key) = &record.key {
        document.insert("key", key);
    }
    if let Some(headers) = &record.headers {
        let headers: Document = headers
            .iter()
            .map(|(name, value)| (name.clone(), Bson::String(value.clone())))
            .collect();
        document.insert("headers", headers);
    }
    Ok((id, document))
}

fn opt_string(document: &Document, field: &str) -> Result<Option<String>, OutboxError> {
    match document.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(OutboxError::Corrupt(format!(
            "{field} is not a string: {other}"
        ))),
    }
}

fn opt_date(document: &Document, field: &str) -> Result<Option<Millis>, OutboxError> {
    match document.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::DateTime(at)) => Ok(Some(millis(*at))),
        Some(other) => Err(OutboxError::Corrupt(format!(
            "{field} is not a date: {other}"
        ))),
    }
}

pub(super) fn record_from_document(document: Document) -> Result<OutboxRecord, OutboxError> {
    let id = id_string(
        document
            .get("_id")
            .ok_or_else(|| OutboxError::Corrupt("no _id".into()))?,
    )?;
    let corrupt = |what: &str| OutboxError::Corrupt(format!("record {id:?}: {what}"));
    let headers = match document.get("headers") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(headers)) => Some(
            headers
                .iter()
                .map(|(name, value)| match value {
                    Bson::String(value) => Ok((name.clone(), value.clone())),
                    _ => Err(corrupt("a header value is not a string")),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(corrupt("headers is not a document")),
    };
    let attempts = match document.get("attempts") {
        None => 0,
        Some(Bson::Int32(n)) => u32::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(Bson::Double(n)) => *n as u32,
        Some(_) => return Err(corrupt("attempts is not a number")),
    };
    let status = opt_string(&document, "status")?
        .ok_or_else(|| corrupt("no status"))?
        .parse()?;
    Ok(OutboxRecord {
        topic: opt_string(&document, "topic")?.ok_or_else(|| corrupt("no topic"))?,
        payload: document
            .get("payload")
            .cloned()
            .unwrap_or(Bson::Null)
            .into_relaxed_extjson(),
        headers,
        key: opt_string(&document, "key")?,
        status,
        attempts,
        next_attempt_at: opt_date(&document, "next_attempt_at")?.unwrap_or(0),
        claim_token: opt_string(&document, "claim_token")?,
        lease_until: opt_date(&document, "lease_until")?,
        last_err: opt_string(&document, "last_err")?,
        created_at: opt_date(&document, "created_at")?.ok_or_else(|| corrupt("no created_at"))?,
        sent_at: opt_date(&document, "sent_at")?,
        id,
    })
}
