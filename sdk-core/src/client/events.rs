//! What the machine hands back to its driver: ids, [`Transmit`]s,
//! [`ClientEvent`]s and errors.

use std::fmt;

use crate::frames::{ErrorCode, ErrorFrame, Event, EventDelivery, PubAck, SubAck, Welcome};
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

/// Names one delivery of a durable group: handed out with
/// [`ClientEvent::Delivery`] and given back in the answer
/// ([`Delivered::tag`](super::Delivered::tag)), so that the machine can
/// tell it from an earlier or a later delivery of the same event. Tags are
/// unique for the machine's life and grow with every delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryTag(pub(crate) u64);

impl DeliveryTag {
    /// The tag as a number (at most 2^53 in any realistic life, so it also
    /// fits a JavaScript number).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// A tag from [`as_u64`](Self::as_u64), e.g. after a trip through
    /// JavaScript. A number the machine never handed out names no delivery.
    pub const fn from_u64(value: u64) -> Self {
        DeliveryTag(value)
    }
}

/// Seqs a live subscription may have missed: the hub could not deliver
/// `from..=to` when it resumed the subscription after a reconnect (its
/// retention had removed those events). The range counts every seq in the
/// hub's log, not only the ones that matched the subscription, so some or
/// all of them may be events of other topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gap {
    /// First seq that may be missing.
    pub from: u64,
    /// Last seq that may be missing (inclusive).
    pub to: u64,
}

impl Gap {
    /// One range covering both (nothing was delivered in between).
    pub(crate) fn merge(self, other: Gap) -> Gap {
        Gap {
            from: self.from.min(other.from),
            to: self.to.max(other.to),
        }
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "seq {}", self.from)
        } else {
            write!(f, "seqs {} to {}", self.from, self.to)
        }
    }
}

/// Something the driver must do, in the order polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Open a new WebSocket to the hub [`ClientCore::endpoint`](super::ClientCore::endpoint)
    /// names (the only one unless the driver has several URLs), then report
    /// [`handle_socket_open`](super::ClientCore::handle_socket_open) or
    /// [`handle_socket_error`](super::ClientCore::handle_socket_error).
    Connect,
    /// Send this text frame on the current socket.
    Text(String),
    /// Close the current socket (or abort the connection attempt) with this
    /// code and reason. The machine already considers the socket gone: the
    /// driver must not report anything more about it.
    Close { code: u16, reason: String },
    /// Ask the application's token source (only when
    /// [`ClientConfig::token_source`](super::ClientConfig::token_source) is
    /// set) for a token, then report
    /// [`handle_token`](super::ClientCore::handle_token) or
    /// [`handle_token_error`](super::ClientCore::handle_token_error). At
    /// most one request is out at a time; the machine decides when to ask
    /// again after a failure.
    FetchToken,
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
    /// The token source failed while a connection attempt waited for its
    /// token; the attempt is given up (and retried like any other).
    TokenFetchFailed(String),
}

impl StateReason {
    /// The WebSocket close code behind the change, if there was one.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            StateReason::SocketClosed { code, .. } => *code,
            StateReason::TerminalClose { code, .. } => Some(*code),
            StateReason::AuthRefused { close_code, .. } => *close_code,
            _ => None,
        }
    }
}

/// The one text of every reason, used by both SDKs (the native
/// `ConnectionEvent::Disconnected.reason`, the browser's
/// `StateEvent.reason`).
impl fmt::Display for StateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateReason::UserRequested => f.write_str("requested by the application"),
            StateReason::Reconnect { attempt } => write!(f, "reconnect attempt {attempt}"),
            StateReason::TokenUpdated => f.write_str("new token"),
            StateReason::SocketOpened => f.write_str("socket open, authenticating"),
            StateReason::Authenticated => f.write_str("authenticated"),
            StateReason::SocketClosed { code, reason } => {
                f.write_str("socket closed")?;
                match (code, reason.is_empty()) {
                    (Some(code), true) => write!(f, " ({code})"),
                    (Some(code), false) => write!(f, " ({code}: {reason})"),
                    (None, true) => Ok(()),
                    (None, false) => write!(f, " ({reason})"),
                }
            }
            StateReason::SocketError(message) => f.write_str(message),
            StateReason::TerminalClose { code, reason } if reason.is_empty() => {
                write!(f, "closed by the hub ({code})")
            }
            StateReason::TerminalClose { code, reason } => {
                write!(f, "closed by the hub ({code}: {reason})")
            }
            StateReason::AuthRefused { code, msg, .. } => {
                write!(f, "authentication refused: {code}: {msg}")
            }
            StateReason::ConnectTimeout => f.write_str("connect timeout"),
            StateReason::AuthTimeout => f.write_str("no answer to AUTH in time"),
            StateReason::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            StateReason::ProtocolViolation(message) => write!(f, "protocol violation: {message}"),
            StateReason::ReconnectExhausted { attempts } => {
                write!(f, "gave up after {attempts} reconnect attempts")
            }
            StateReason::TokenFetchFailed(message) => write!(f, "no token: {message}"),
        }
    }
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
    /// The answer names a delivery the current connection does not hold:
    /// it came on a connection that has closed, was answered already, or
    /// the hub has delivered the event again since (a newer tag). Nothing
    /// is sent — the hub ignores such answers, and a late `NACK` or
    /// `WORKING` must not act on the newer delivery. The hub delivers the
    /// event again if it still needs an answer.
    #[error("delivery of seq {seq} on {sub} is not held by the current connection")]
    NotHeld { sub: SubscriptionId, seq: u64 },
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
/// [`poll_event`](super::ClientCore::poll_event) after every input. `E` is
/// the event a [`Delivery`](ClientEvent::Delivery) carries (see
/// [`ClientCore`](super::ClientCore)'s payload parameter).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent<E = Event> {
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
    /// An event for a subscription. `tag` (durable groups only) names
    /// this delivery in its answer. `gap`: the hub could not deliver these
    /// seqs just before this event (the same gap was reported with
    /// [`ClientEvent::Gap`] when it became known).
    Delivery {
        sub: SubscriptionId,
        delivery: Box<EventDelivery<E>>,
        tag: Option<DeliveryTag>,
        gap: Option<Gap>,
    },
    /// A live subscription resumed after a reconnect, but the hub could not
    /// fill the whole gap: events in `gap` may have been missed. The next
    /// delivery of the subscription carries the same gap.
    Gap {
        sub: SubscriptionId,
        gap: Gap,
    },
    /// Call [`set_token`](super::ClientCore::set_token) with a fresh token:
    /// the current one expires at `expires_at` (Unix ms), or was refused
    /// (`None`).
    TokenRefreshNeeded {
        expires_at: Option<Millis>,
    },
    /// The token source failed ([`handle_token_error`](super::ClientCore::handle_token_error)).
    /// `retry_in_ms`: when it is asked again; `None` when nothing waits for
    /// a token any more, or when the connection attempt that waited for it
    /// was given up (the reconnect asks again).
    TokenFetchFailed {
        message: String,
        retry_in_ms: Option<u64>,
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
