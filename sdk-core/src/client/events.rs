//! What the machine hands back to its driver: ids, [`Transmit`]s,
//! [`ClientEvent`]s and errors.

use std::fmt;

use crate::frames::{ErrorCode, ErrorFrame, EventDelivery, PubAck, SubAck, Welcome};
use crate::frames::{Group, Millis};
use crate::topic::Pattern;

/// Identifies one request (publish, ping, unsubscribe). It is also the
/// frame's `rid` on the wire: its `Display` (`to_string()`) gives the exact text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one subscription (one `topic::group`) for its whole life,
/// across reconnects and resubscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub(crate) u64);

impl SubscriptionId {
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

/// Something the driver must do on the socket, in the order polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Open a new WebSocket to the hub, then report
    /// [`handle_socket_open`](super::ClientCore::handle_socket_open) or
    /// [`handle_socket_error`](super::ClientCore::handle_socket_error).
    Connect,
    /// Send this text frame on the current socket.
    Text(String),
    /// Close the current socket (or abort the connection attempt) with this
    /// code and reason. The machine already considers the socket gone: the
    /// driver must not report anything more about it.
    Close { code: u16, reason: String },
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// No socket. Either never connected, or waiting for the reconnect
    /// timer. Publishes are queued (policy `Wait`).
    Disconnected,
    /// [`Transmit::Connect`] was issued; waiting for the socket to open.
    Connecting,
    /// The socket is open and `AUTH` was sent; waiting for `OK`.
    Authenticating,
    /// `OK` received; requests flow.
    Connected,
    /// Stopped for good (until [`connect`](super::ClientCore::connect)):
    /// [`close`](super::ClientCore::close) was called, the hub closed with a
    /// terminal code, or reconnecting gave up.
    Closed,
}

/// Why the state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateReason {
    /// [`connect`](super::ClientCore::connect) or [`close`](super::ClientCore::close).
    UserRequested,
    /// The reconnect timer fired.
    Reconnect { attempt: u32 },
    /// A new token arrived after the hub refused the old one (4001/4003).
    TokenUpdated,
    /// The driver reported the socket open; `AUTH` was sent.
    SocketOpened,
    /// The hub answered `AUTH` with `OK`.
    Authenticated,
    /// The socket closed with a code after which the client reconnects (or
    /// reconnecting is disabled).
    SocketClosed { code: Option<u16>, reason: String },
    /// Opening or using the socket failed.
    SocketError(String),
    /// The hub closed with a terminal code (1000, 4001, 4003, 4008).
    TerminalClose { code: u16, reason: String },
    /// The hub refused `AUTH` (initial or refresh) with this error, then
    /// closed the socket with `close_code` (`None` when the client gave up
    /// waiting for the close).
    AuthRefused {
        code: ErrorCode,
        msg: String,
        close_code: Option<u16>,
    },
    /// The socket did not open within `connect_timeout_ms`.
    ConnectTimeout,
    /// No `OK` within `request_timeout_ms` after `AUTH`.
    AuthTimeout,
    /// No frame arrived within the pong timeout after a heartbeat `PING`.
    HeartbeatTimeout,
    /// The hub broke the protocol in a way that reconnecting will not fix
    /// (e.g. an `OK` with another protocol version).
    ProtocolViolation(String),
    /// `max_attempts` reconnects failed in a row.
    ReconnectExhausted { attempts: u32 },
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The hub answered `ERR` (e.g. `forbidden`, `too_large`, `rate_limited`
    /// with `retry_after_ms`).
    #[error("refused by the hub: {} ({})", .0.code, .0.msg)]
    Refused(ErrorFrame),
    /// No answer within `request_timeout_ms`. A publish may still have
    /// been stored.
    #[error("no answer within the request timeout")]
    TimedOut,
    /// The request was sent, then the connection dropped before the answer:
    /// the hub may or may not have processed it.
    #[error("connection lost before the answer; the outcome is unknown")]
    Disconnected,
    /// The client closed (or gave up reconnecting) before the request was
    /// sent: it was certainly not processed.
    #[error("client closed before the request was sent")]
    Closed,
    /// Re-queued after a disconnect, but the outbound queue was full.
    #[error("outbound queue full")]
    QueueFull,
}

impl RequestError {
    /// The hub's error code, when the hub refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RequestError::Refused(err) => Some(err.code),
            _ => None,
        }
    }
}

/// Why a call was refused on the spot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Not connected, and this call cannot wait (publish with
    /// [`QueuePolicy::FailFast`](super::QueuePolicy::FailFast), ping,
    /// ack/nack/working).
    #[error("not connected")]
    NotConnected,
    /// The client is closed; call `connect` first.
    #[error("client is closed")]
    Closed,
    /// The outbound queue holds `capacity` publishes already.
    #[error("outbound queue full ({capacity} publishes)")]
    QueueFull { capacity: usize },
    /// This `topic::group` is already subscribed, under this id.
    #[error("already subscribed as {0}")]
    AlreadySubscribed(SubscriptionId),
    /// No such subscription (never made, or unsubscribed).
    #[error("unknown subscription {0}")]
    UnknownSubscription(SubscriptionId),
}

/// A well-formed frame from the hub that matches nothing this client waits
/// for. Usually harmless (a late answer after a timeout, an event for a
/// subscription that was just removed); reported so it is never silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmatched {
    /// `PUBACK`, `SUBACK`, `UNSUBACK` or `PONG` for no pending request.
    Answer {
        op: &'static str,
        rid: Option<String>,
    },
    /// `EVENT` for a `topic::group` this client is not subscribed to.
    Event {
        topic: Pattern,
        group: Option<Group>,
        event_id: String,
    },
}

/// What happened, for the application. Poll with
/// [`poll_event`](super::ClientCore::poll_event) after every input.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    StateChanged {
        state: ConnectionState,
        reason: StateReason,
    },
    /// The first `OK` of a connection (not the `OK` of a token refresh).
    Connected(Welcome),
    /// Reconnect attempt `attempt` starts in `delay_ms`.
    Reconnecting {
        attempt: u32,
        delay_ms: u64,
    },
    PublishAcked {
        request: RequestId,
        ack: PubAck,
    },
    PublishFailed {
        request: RequestId,
        error: RequestError,
    },
    /// `SUBACK`, also after every resubscribe that follows a reconnect.
    Subscribed {
        sub: SubscriptionId,
        ack: SubAck,
    },
    /// The hub refused the subscription, or did not answer in time. The
    /// subscription is removed.
    SubscribeFailed {
        sub: SubscriptionId,
        error: RequestError,
    },
    /// The subscription is gone (`UNSUBACK`, or the socket it lived on
    /// closed, or it was removed while disconnected).
    Unsubscribed {
        sub: SubscriptionId,
    },
    /// The hub refused or ignored `UNSUBSCRIBE`. The client has forgotten
    /// the subscription anyway: its events are no longer delivered.
    UnsubscribeFailed {
        sub: SubscriptionId,
        error: RequestError,
    },
    Delivery {
        sub: SubscriptionId,
        delivery: Box<EventDelivery>,
    },
    /// Call [`set_token`](super::ClientCore::set_token) with a fresh token:
    /// the current one expires at `expires_at` (Unix ms), or was refused
    /// (`None`).
    TokenRefreshNeeded {
        expires_at: Option<Millis>,
    },
    /// The hub accepted the token given to `set_token` on the open
    /// connection.
    TokenRefreshed {
        expires_at: Option<Millis>,
    },
    Pong {
        request: RequestId,
    },
    PingFailed {
        request: RequestId,
        error: RequestError,
    },
    /// An `ERR` that answers no pending request.
    ServerError(ErrorFrame),
    /// A frame from the hub that could not be decoded, or that arrived when
    /// the protocol does not allow it. The frame is ignored.
    ProtocolError(String),
    Unmatched(Unmatched),
}
