//! Connection events: what happens to a [`Client`](crate::Client)'s
//! connection, as a stream.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::{self, BoxStream};
use promhub_core::client::Gap;
use promhub_core::frames::{ErrorCode, Millis};
use tokio::sync::broadcast;

use crate::Error;

/// Something that happened to the connection. Read them with
/// [`Client::events`](crate::Client::events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// Opening a socket: `attempt` 0 for the first connection (or one asked
    /// for by the application), else the reconnect attempt.
    Connecting { attempt: u32 },
    /// The hub accepted the token (`OK`). Every subscription is being
    /// restored.
    Connected {
        session: String,
        server: String,
        /// The URL of the hub this connection went to (one of those given
        /// to [`Client::connect`](crate::Client::connect)).
        url: String,
        /// When the token expires (Unix ms), if it does.
        expires_at: Option<Millis>,
    },
    /// The hub refused the token; `Disconnected` follows.
    AuthRefused { code: ErrorCode, msg: String },
    /// The connection (or the attempt to make one) ended. `code` is the
    /// WebSocket close code when there was one. A `Reconnecting` follows
    /// unless the close was terminal (1000, 4001, 4003, 4008) or
    /// reconnecting is off or gave up.
    Disconnected { code: Option<u16>, reason: String },
    /// The next connection attempt starts in `delay` (jittered, capped).
    Reconnecting { attempt: u32, delay: Duration },
    /// The token expires soon (`expires_at`, Unix ms) or was refused
    /// (`None`). With a token provider a fresh token is being fetched;
    /// otherwise call [`Client::set_token`](crate::Client::set_token).
    TokenRefreshNeeded { expires_at: Option<Millis> },
    /// The hub accepted a fresh token on the open connection.
    TokenRefreshed { expires_at: Option<Millis> },
    /// The token provider failed; it is asked again after a backoff delay
    /// (or with the next connection attempt).
    TokenError { message: String },
    /// The application reads this subscription more slowly than events
    /// arrive: its buffer was full and `dropped` deliveries in all were
    /// dropped. An ephemeral subscription has lost them; a durable group
    /// gets them again after its ack timeout.
    SlowConsumer {
        topic: String,
        group: Option<String>,
        dropped: u64,
    },
    /// A live subscription (pattern `topic`) resumed after a reconnect, but
    /// the hub could not deliver every event published while it was away:
    /// its retention had removed the seqs in `gap`. The next
    /// [`Delivery`](crate::Delivery) of the subscription carries the same
    /// gap ([`Delivery::gap`](crate::Delivery::gap)), in order with the
    /// events.
    Gap { topic: String, gap: Gap },
    /// The hub refused to restore this subscription after a reconnect (for
    /// example after a token change took the permission away). Its stream
    /// has ended.
    SubscriptionLost {
        topic: String,
        group: Option<String>,
        error: Error,
    },
    /// An `ERR` from the hub that answers no request.
    ServerError { code: ErrorCode, msg: String },
    /// This events stream fell behind by `count` events, which it skipped.
    Missed { count: u64 },
    /// The client is closed for good; nothing follows.
    Closed { reason: String },
}

/// The stream returned by [`Client::events`](crate::Client::events). It ends
/// after [`ConnectionEvent::Closed`].
pub struct EventStream {
    inner: BoxStream<'static, ConnectionEvent>,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    pub(crate) fn new(receiver: broadcast::Receiver<ConnectionEvent>) -> Self {
        // The state is `None` once `Closed` was handed out: nothing follows.
        let inner = stream::unfold(Some(receiver), |receiver| async move {
            let mut receiver = receiver?;
            match receiver.recv().await {
                Ok(event @ ConnectionEvent::Closed { .. }) => Some((event, None)),
                Ok(event) => Some((event, Some(receiver))),
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    Some((ConnectionEvent::Missed { count }, Some(receiver)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        EventStream {
            inner: Box::pin(inner),
        }
    }
}

impl Stream for EventStream {
    type Item = ConnectionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
