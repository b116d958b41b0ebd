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

impl From<crate::Error> for SinkError {
    fn from(error: crate::Error) -> Self {
        use crate::Error;
        use promhub_core::frames::ErrorCode;
        let permanent = match &error {
            Error::InvalidTopic(_)
            | Error::Serialize(_)
            | Error::Forbidden { .. }
            | Error::TooLarge { .. } => true,
            Error::Refused { code, .. } => {
                matches!(
                    code,
                    ErrorCode::BadRequest | ErrorCode::TooLarge | ErrorCode::Forbidden
                )
            }
            _ => false,
        };
        SinkError {
            message: error.to_string(),
            permanent,
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
            .map_err(SinkError::from)?;
        Ok(PublishOutcome {
            seq: ack.seq,
            duplicate: ack.duplicate,
        })
    }
}

#[cfg(test)]
mod tests {
    use promhub_core::frames::ErrorCode;

    use super::SinkError;
    use crate::Error;

    #[test]
    fn refusals_that_cannot_change_are_permanent_and_the_rest_retried() {
        let permanent = |error: Error| SinkError::from(error).permanent;
        let refused = |code| Error::Refused {
            code,
            msg: "no".into(),
        };
        assert!(permanent(Error::Forbidden { msg: "no".into() }));
        assert!(permanent(Error::TooLarge { msg: "big".into() }));
        assert!(permanent(refused(ErrorCode::BadRequest)));
        assert!(!permanent(Error::TimedOut));
        assert!(!permanent(Error::Disconnected));
        assert!(!permanent(Error::RateLimited {
            retry_after: None,
            msg: "slow down".into()
        }));
        // A token problem is fixed by a refreshed token, not by the record.
        assert!(!permanent(refused(ErrorCode::JwtInvalid)));
        assert!(!permanent(refused(ErrorCode::Internal)));
        let error = SinkError::from(Error::Forbidden { msg: "no".into() });
        assert_eq!(error.to_string(), "forbidden by the hub: no");
    }
}
