//! The transactional outbox (semantics.md §5) and its drainer: the
//! [`promhub_outbox`] crate, re-exported, with [`Client`] as a sink.
//!
//! An application writes its business data and an outbox record in one
//! database transaction ([`sqlite::SqliteOutbox::enqueue_in`] with the
//! `outbox-sqlite` feature, `mongo::MongoOutbox::enqueue_in` with the
//! application's `ClientSession` and the `outbox-mongodb` feature). A
//! [`Drainer`] claims records in batches and publishes each through a
//! [`Client`] with the record's id as the event id (the hub de-duplicates
//! re-publishes), waits for the PUBACK and marks them sent. Claims, fencing,
//! leases, backoff, dead records, per-key order and retention are described
//! in [`promhub_outbox`].

use async_trait::async_trait;
use promhub_core::frames::ErrorCode;

pub use promhub_outbox::*;

use crate::{Client, Error, PublishOptions};

/// A refusal that the same record can never overcome (invalid topic,
/// forbidden, too large) is permanent: the record is dead at once. The rest
/// (network, timeout, rate limit, token, the hub's store) is retried.
impl From<Error> for SinkError {
    fn from(error: Error) -> Self {
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
        if permanent {
            SinkError::permanent(error.to_string())
        } else {
            SinkError::transient(error.to_string())
        }
    }
}

/// Publishes each record to the hub this client is connected to and waits
/// for its PUBACK; the record's id is the event id, its creation time the
/// event's `ts`.
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
