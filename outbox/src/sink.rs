//! Where a drainer publishes: the [`OutboxSink`] trait. The native SDK
//! implements it for `promhub::Client` (a remote hub), the hub for its own
//! log; tests and benchmarks use in-memory sinks.

use async_trait::async_trait;

use crate::OutboxRecord;

/// The hub's answer to one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub seq: u64,
    /// The hub already had this id (a re-publish it de-duplicated).
    pub duplicate: bool,
}

/// A failed publish. A transient failure (network, timeout, rate limit,
/// the hub's store) is retried with backoff, then the record is dead; a
/// permanent one (invalid topic, forbidden, too large: the same record can
/// never succeed) makes it dead at once, so it does not hold the records
/// of its key back through a whole backoff sequence. Dead records are
/// listed and replayable once the cause is fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub permanent: bool,
}

impl SinkError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            permanent: false,
        }
    }

    /// The record as it is can never be published.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Publishes outbox records. `publish` returns once the event is durable
/// (PUBACK), with the record's id as the event id so the hub
/// de-duplicates a re-publish.
#[async_trait]
pub trait OutboxSink: Send + Sync + 'static {
    async fn publish(&self, record: &OutboxRecord) -> Result<PublishOutcome, SinkError>;
}
