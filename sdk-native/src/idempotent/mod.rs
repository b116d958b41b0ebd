//! Exactly-once-ish processing: a delivery's handler runs at most once per
//! event, even when the hub delivers the event again (a crash between the
//! handler's commit and the `ACK`, a lost connection, an ack timeout).
//!
//! An event is named by its topic and id ([`EventRef`]): the hub
//! de-duplicates publishes per topic, so the same id on two topics is two
//! events, and a store keyed by id alone would let a publisher of one topic
//! make a consumer skip another topic's event by choosing its id.
//!
//! Every processed event is recorded in a dedupe store, in the
//! same transaction as the handler's own writes where the store allows it
//! ([`SqliteDedupe`]; `MongoDedupe` on a replica set): then "the handler's effects are committed" and "the
//! event is recorded as processed" are one fact, and a redelivery is only
//! acknowledged. Records expire after a TTL (longer than any redelivery
//! can take: the hub's dedup window, ack timeouts and backoff).

#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "sqlite")]
pub use sqlite::{DedupeError, SqliteDedupe};

#[cfg(feature = "outbox-mongodb")]
mod mongo;

#[cfg(feature = "outbox-mongodb")]
pub use mongo::{MongoDedupe, MongoDedupeError, MongoDedupeOptions};

use std::time::Duration;

use promhub_core::frames::Event;

use crate::{DeserializeError, Error};

/// An event as the dedupe stores record it: its concrete topic and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub topic: &'a str,
    pub id: &'a str,
}

impl<'a> EventRef<'a> {
    pub fn new(topic: &'a str, id: &'a str) -> Self {
        EventRef { topic, id }
    }

    /// The key a store records: topic and id, NUL-separated (a topic holds
    /// no control characters, so no two events share one).
    pub(crate) fn record_key(&self) -> String {
        format!("{}\0{}", self.topic, self.id)
    }
}

impl<'a> From<&'a Event> for EventRef<'a> {
    fn from(event: &'a Event) -> Self {
        EventRef {
            topic: event.topic.as_str(),
            id: &event.id,
        }
    }
}

/// How long a processed event id is remembered by default: a week, far
/// longer than redeliveries of one event are spread over.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled<R> {
    /// The handler ran, its writes and the event id committed together.
    Processed(R),
    /// The event id was already recorded: the handler did not run again.
    AlreadyProcessed,
}

impl<R> Handled<R> {
    pub fn is_processed(&self) -> bool {
        matches!(self, Handled::Processed(_))
    }
}

/// Why an idempotent handling failed. The delivery has been answered in
/// every case: NACKed after a handler or store error (it comes again),
/// dead-lettered for a payload that is not a `T`.
#[derive(Debug, thiserror::Error)]
pub enum HandleError<E, S> {
    /// The handler returned an error; nothing it wrote was committed.
    #[error("the handler failed: {0}")]
    Handler(E),
    /// The dedupe store failed; nothing was committed.
    #[error("dedupe store: {0}")]
    Store(S),
    /// The payload is not the expected type (dead-lettered).
    #[error(transparent)]
    Payload(DeserializeError),
    /// Processed (or already processed), but the `ACK` could not be sent;
    /// the hub will deliver the event again and it will only be
    /// acknowledged then.
    #[error("processed, but the ACK failed: {0}")]
    Ack(Error),
}

/// Options shared by the dedupe stores.
#[derive(Debug, Clone)]
pub struct DedupeOptions {
    /// Separates consumers that share one store: an event processed by the
    /// "billing" consumer is still new to "shipping". Usually the group.
    pub scope: String,
    /// How long an id is remembered.
    pub ttl: Duration,
}

impl DedupeOptions {
    pub fn new(scope: impl Into<String>) -> Self {
        DedupeOptions {
            scope: scope.into(),
            ttl: DEFAULT_TTL,
        }
    }

    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// A NACK reason from an error, cut to a size the hub accepts.
#[cfg(any(feature = "sqlite", feature = "outbox-mongodb"))]
fn nack_reason(error: &dyn std::fmt::Display) -> String {
    const MAX_REASON_CHARS: usize = 500;
    error.to_string().chars().take(MAX_REASON_CHARS).collect()
}

/// The payload of a delivery; one that is not a `T` is never processable,
/// so it is dead-lettered rather than left to come back forever.
#[cfg(any(feature = "sqlite", feature = "outbox-mongodb"))]
pub(crate) async fn payload_or_term<T, E, S>(
    payload: Result<T, DeserializeError>,
    acker: crate::Acker,
) -> Result<(T, crate::Acker), HandleError<E, S>> {
    match payload {
        Ok(payload) => Ok((payload, acker)),
        Err(error) => {
            let _ = acker.term(nack_reason(&error)).await;
            Err(HandleError::Payload(error))
        }
    }
}

/// Answers the hub after a handling: ACK when processed (or already
/// processed), NACK with the error as reason when it failed.
#[cfg(any(feature = "sqlite", feature = "outbox-mongodb"))]
pub(crate) async fn answer<R, E, S>(
    acker: crate::Acker,
    outcome: Result<Handled<R>, HandleError<E, S>>,
) -> Result<Handled<R>, HandleError<E, S>>
where
    E: std::fmt::Display,
    S: std::fmt::Display,
{
    match outcome {
        Ok(handled) => match acker.ack().await {
            Ok(()) => Ok(handled),
            Err(error) => Err(HandleError::Ack(error)),
        },
        Err(error) => {
            let reason = match &error {
                HandleError::Handler(e) => nack_reason(e),
                other => nack_reason(other),
            };
            let _ = acker.nack(reason, None).await;
            Err(error)
        }
    }
}
