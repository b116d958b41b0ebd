//! Where a drainer publishes: a remote hub through [`Client`], or (in the
//! hub) its own log.

use async_trait::async_trait;

use super::OutboxRecord;
use crate::{Client, PublishOptions};

/// The hub's answer to one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub seq: u64,
    /// The hub already had this id (a re-publish it de-duplicated).
    pub duplicate: bool,
}

/// A failed publish; the record is retried, then dead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Publishes outbox records. `publish` returns once the event is durable
/// (PUBACK), with the record's id as the event id so the hub
/// de-duplicates a re-publish.
#[async_trait]
pub trait OutboxSink: Send + Sync + 'static {
    async fn publish(&self, record: &OutboxRecord) -> Result<PublishOutcome, SinkError>;
}

#[async_trait]
impl OutboxSink for Client {
    async fn publish(&self, record: &OutboxRecord) -> Result<PublishOutcome, SinkError> {
        let mut opts = PublishOptions::new().id(&record.id).ts(record.created_at);
        if let Some(key) = &record.key {
            opts = opts.key(key);
        }
        for (name, value) in record.headers.iter().flatten() {
            opts = opts.header(name, value);
        }
        let ack = Client::publish(self, &record.topic, &record.payload, opts)
            .await
            .map_err(|e| SinkError(e.to_string()))?;
        Ok(PublishOutcome {
            seq: ack.seq,
            duplicate: ack.duplicate,
        })
    }
}
