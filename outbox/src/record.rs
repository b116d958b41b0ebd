//! An outbox record: the event to publish plus its delivery state
//! (semantics.md §5).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::Millis;
use serde::Serialize;

use super::OutboxError;

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting to be published (at or after `next_attempt_at`).
    Pending,
    /// Owned by a drainer until `lease_until`.
    Claimed,
    /// Published; removed after the retention period.
    Sent,
    /// Gave up after the configured attempts; kept until replayed.
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Claimed => "claimed",
            Status::Sent => "sent",
            Status::Dead => "dead",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = OutboxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "pending" => Ok(Status::Pending),
            "claimed" => Ok(Status::Claimed),
            "sent" => Ok(Status::Sent),
            "dead" => Ok(Status::Dead),
            other => Err(OutboxError::Corrupt(format!("unknown status {other:?}"))),
        }
    }
}

/// A record to enqueue: the event the drainer will publish.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub(crate) id: Option<String>,
    pub(crate) topic: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) key: Option<String>,
    pub(crate) headers: Option<BTreeMap<String, String>>,
}

impl NewRecord {
    /// An event for `topic` (checked when it is published: a bad topic ends
    /// `dead`, with the hub's reason, never silently dropped).
    pub fn new<T: Serialize + ?Sized>(
        topic: impl Into<String>,
        payload: &T,
    ) -> Result<NewRecord, OutboxError> {
        Ok(NewRecord {
            id: None,
            topic: topic.into(),
            payload: serde_json::to_value(payload).map_err(OutboxError::Payload)?,
            key: None,
            headers: None,
        })
    }

    /// The record's (and the event's) id; by default a fresh UUIDv7.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Records with the same key are published in creation order; the key
    /// is also the event's latest-by-key key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .get_or_insert_with(BTreeMap::new)
            .insert(name.into(), value.into());
        self
    }

    /// The id this record gets: the chosen one or a fresh UUIDv7.
    #[cfg_attr(not(any(feature = "sqlite", feature = "mongodb")), allow(dead_code))]
    pub(crate) fn take_id(&mut self) -> String {
        self.id
            .take()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
    }
}

/// A stored record (semantics.md §5), times in Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    /// Also the event's `opts.id`: the hub de-duplicates re-publishes.
    pub id: String,
    pub topic: String,
    pub payload: serde_json::Value,
    pub headers: Option<BTreeMap<String, String>>,
    pub key: Option<String>,
    pub status: Status,
    /// Claims so far (a claim whose lease expired counts too).
    pub attempts: u32,
    pub next_attempt_at: Millis,
    pub claim_token: Option<String>,
    pub lease_until: Option<Millis>,
    pub last_err: Option<String>,
    pub created_at: Millis,
    pub sent_at: Option<Millis>,
}
