//! [`Error`]: why a call failed, and [`DeserializeError`]: why a delivered
//! payload is not a `T`.

use std::sync::Arc;
use std::time::Duration;

use promhub_core::client::{ClientError, RequestError};
use promhub_core::frames::{ErrorCode, ErrorFrame, GroupError};
use promhub_core::topic::TopicError;

/// Everything a [`Client`](crate::Client) call can fail with. The variants
/// a publisher usually handles differently are kept apart: a refused
/// publish ([`Forbidden`](Error::Forbidden), [`TooLarge`](Error::TooLarge),
/// [`RateLimited`](Error::RateLimited)) was certainly not stored;
/// [`TimedOut`](Error::TimedOut) and [`Disconnected`](Error::Disconnected)
/// mean the outcome is unknown (publish with an event id to make a retry
/// safe).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hub URL cannot be used (not `ws://` / `wss://`, or malformed).
    #[error("invalid hub URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A topic or pattern that promhub does not accept.
    #[error("invalid topic or pattern: {0}")]
    InvalidTopic(#[from] TopicError),
    /// A consumer group name that promhub does not accept.
    #[error("invalid group name: {0}")]
    InvalidGroup(#[from] GroupError),
    /// The payload could not be serialized to JSON.
    #[error("cannot serialize the payload: {0}")]
    Serialize(#[source] Arc<serde_json::Error>),
    /// The hub's ACL does not allow this publish or subscription.
    #[error("forbidden by the hub: {msg}")]
    Forbidden { msg: String },
    /// The frame is larger than the hub accepts.
    #[error("too large for the hub: {msg}")]
    TooLarge { msg: String },
    /// The hub asks to slow down; `retry_after` says for how long, when it
    /// did. A publish is retried once the wait fits in its timeout.
    #[error("rate limited by the hub: {msg}")]
    RateLimited {
        retry_after: Option<Duration>,
        msg: String,
    },
    /// Any other refusal by the hub (`bad_request`, `jwt_invalid`, …).
    #[error("refused by the hub: {code} ({msg})")]
    Refused { code: ErrorCode, msg: String },
    /// No answer within the request timeout. A publish may still have been
    /// stored.
    #[error("no answer from the hub within the request timeout")]
    TimedOut,
    /// The connection dropped before the answer: the hub may or may not
    /// have processed the request. For an answer to a delivery
    /// ([`Delivery::ack`](crate::Delivery::ack), …): the delivery came on a
    /// connection that has dropped, or the hub has delivered the event
    /// again since; nothing was sent, and the hub delivers it again.
    #[error("connection lost before the answer; the outcome is unknown")]
    Disconnected,
    /// Not connected, and the call cannot wait for a connection (a publish
    /// with the fail-fast queue policy, an ack of a durable delivery).
    #[error("not connected to the hub")]
    NotConnected,
    /// The outbound queue that holds publishes while disconnected is full.
    #[error("outbound queue full")]
    QueueFull,
    /// The client was closed (or gave up reconnecting) before the request
    /// could be sent: it was certainly not processed.
    #[error("the client is closed")]
    Closed,
    /// This client already has a subscription with this pattern and group.
    #[error("already subscribed to this pattern and group")]
    AlreadySubscribed,
    /// The first connection could not be made
    /// ([`Client::connect`](crate::Client::connect)).
    #[error("cannot connect to the hub: {0}")]
    Connect(String),
    /// [`Client::connect`](crate::Client::connect) was called outside a
    /// tokio runtime.
    #[error("promhub needs a tokio runtime: call it from within one")]
    NoRuntime,
}

impl Error {
    /// The error for an `ERR` frame from the hub.
    pub(crate) fn from_hub(err: ErrorFrame) -> Self {
        match err.code {
            ErrorCode::Forbidden => Error::Forbidden { msg: err.msg },
            ErrorCode::TooLarge => Error::TooLarge { msg: err.msg },
            ErrorCode::RateLimited => Error::RateLimited {
                retry_after: err.retry_after_ms.map(Duration::from_millis),
                msg: err.msg,
            },
            code => Error::Refused { code, msg: err.msg },
        }
    }

    pub(crate) fn serialize(err: serde_json::Error) -> Self {
        Error::Serialize(Arc::new(err))
    }

    /// The hub's error code, when the hub refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Forbidden { .. } => Some(ErrorCode::Forbidden),
            Error::TooLarge { .. } => Some(ErrorCode::TooLarge),
            Error::RateLimited { .. } => Some(ErrorCode::RateLimited),
            Error::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<RequestError> for Error {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::Refused(frame) => Error::from_hub(frame),
            RequestError::TimedOut => Error::TimedOut,
            RequestError::Disconnected => Error::Disconnected,
            RequestError::Closed => Error::Closed,
            RequestError::QueueFull => Error::QueueFull,
        }
    }
}

impl From<ClientError> for Error {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::NotConnected => Error::NotConnected,
            ClientError::Closed => Error::Closed,
            ClientError::QueueFull { .. } => Error::QueueFull,
            ClientError::AlreadySubscribed(_) => Error::AlreadySubscribed,
            // The subscription is gone (unsubscribed, or refused on a
            // resubscribe): nothing can be sent for it any more.
            ClientError::UnknownSubscription(_) => Error::Closed,
            // The delivery came on a connection that has dropped (or was
            // delivered again since): the hub delivers the event again.
            ClientError::NotHeld { .. } => Error::Disconnected,
        }
    }
}

/// A delivered payload that does not deserialize into the subscription's
/// type. The delivery is still handed out (see
/// [`Delivery::payload`](crate::Delivery::payload)) so the application can
/// [`term`](crate::Delivery::term) it, log it or read the raw JSON.
#[derive(Debug, Clone, thiserror::Error)]
#[error("payload of event {event_id} does not deserialize: {source}")]
pub struct DeserializeError {
    pub event_id: String,
    #[source]
    pub source: Arc<serde_json::Error>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use promhub_core::client::RequestError;
    use promhub_core::frames::{ErrorCode, ErrorFrame};

    use super::Error;

    fn refused(code: ErrorCode, retry_after_ms: Option<u64>) -> Error {
        let mut frame = ErrorFrame::new(code, "no", Some("7".to_owned()));
        frame.retry_after_ms = retry_after_ms;
        Error::from(RequestError::Refused(frame))
    }

    #[test]
    fn the_refusals_a_publisher_handles_differently_are_distinct() {
        assert!(matches!(
            refused(ErrorCode::Forbidden, None),
            Error::Forbidden { .. }
        ));
        assert!(matches!(
            refused(ErrorCode::TooLarge, None),
            Error::TooLarge { .. }
        ));
        assert!(matches!(
            refused(ErrorCode::RateLimited, Some(250)),
            Error::RateLimited { retry_after: Some(d), .. } if d == Duration::from_millis(250)
        ));
        assert!(matches!(
            refused(ErrorCode::BadRequest, None),
            Error::Refused {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
        assert_eq!(
            refused(ErrorCode::TooLarge, None).code(),
            Some(ErrorCode::TooLarge)
        );
        assert!(matches!(
            Error::from(RequestError::TimedOut),
            Error::TimedOut
        ));
        assert!(matches!(
            Error::from(RequestError::Disconnected),
            Error::Disconnected
        ));
        assert_eq!(Error::from(RequestError::TimedOut).code(), None);
    }
}
