//! [`ClientCore`]: the connection, request and subscription state machine.
//! This file holds the connection's life (sockets, handshake, heartbeat,
//! reconnect, timers); the application's requests are in `calls`, frames
//! from the hub in `incoming`, deliveries and their answers in
//! `deliveries`, tokens in `token`.

mod calls;
mod deliveries;
mod incoming;
mod token;

pub use self::deliveries::Answer;

use std::collections::VecDeque;

use self::token::TokenFetch;
use super::codec::{Codec, Json};
use super::config::ClientConfig;
use super::endpoints::Endpoints;
use super::events::{
    ClientEvent, ConnectionState, DeliveryTag, RequestError, RequestId, StateReason,
    SubscriptionId, Transmit,
};
use super::requests::{Pending, RequestTable};
use super::subscriptions::Registry;
use crate::frames::{
    self, Auth, ClientFrame, DecodeError, ErrorFrame, Event, Group, HubFrame, Millis,
    PROTOCOL_VERSION, Ping, Publish, Subscribe,
};
use crate::topic::Pattern;

/// Close codes the client itself sends.
pub mod close_code {
    /// The client gave up on the connection: the socket did not open, `OK`
    /// did not come, or the heartbeat went unanswered. 4000 rather than
    /// 1001 because browsers only let `WebSocket.close()` send 1000 or
    /// 3000–4999.
    pub const CLIENT_TIMEOUT: u16 = 4000;
    /// A normal close ([`ClientCore::close`](super::ClientCore::close), or
    /// leaving after the hub refused `AUTH` without closing).
    pub const NORMAL: u16 = crate::frames::close::NORMAL;
    /// The hub broke the protocol (e.g. answered with another version).
    pub const PROTOCOL_VIOLATION: u16 = crate::frames::close::PROTOCOL_VIOLATION;
}

/// Names the delivery of a durable group an answer (`ACK`, `NACK`,
/// `WORKING`) is for: the event's id and seq, and the tag of the
/// [`ClientEvent::Delivery`] that handed it out (for ephemeral
/// subscriptions, whose answers send nothing, any tag will do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered<'a> {
    pub id: &'a str,
    pub seq: u64,
    pub tag: DeliveryTag,
}

/// The sans-IO promhub client: feed it inputs, execute its outputs.
///
/// See the [module documentation](super) for the driver contract and an
/// example loop.
///
/// `C` says how frames are written and what payloads are ([`Codec`]):
/// [`Json`] (serde_json, payloads as JSON text) for drivers that feed it
/// text ([`handle_text`](Self::handle_text)); the browser SDK decodes
/// frames from JavaScript values itself ([`handle_frame`](Self::handle_frame))
/// and has a codec of its own (`frames::js::Js`).
#[derive(Debug)]
pub struct ClientCore<C: Codec = Json> {
    config: ClientConfig,
    state: ConnectionState,
    rng: fastrand::Rng,
    /// Which hub each connection attempt goes to.
    endpoints: Endpoints,
    token: Option<String>,
    /// Last rid handed out; rids are unique for the machine's whole life so
    /// a late answer from an old connection can never match a new request.
    last_rid: u64,
    last_sub: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ClientEvent<Event<C::EventPayload>>>,
    codec: std::marker::PhantomData<C>,
    requests: RequestTable,
    /// Publishes waiting for a connection, oldest first (rids into
    /// `requests`).
    queue: VecDeque<u64>,
    subs: Registry,
    reconnect: ReconnectState,
    connect_deadline: Option<u64>,
    auth: AuthState,
    heartbeat: HeartbeatState,
    token_timer: TokenTimer,
    /// Unix ms minus driver ms, to place the hub's `expires_at` on the
    /// driver's clock.
    unix_offset_ms: i128,
    /// The hub refused the token (4001/4003): reconnect as soon as
    /// `set_token` brings a new one.
    awaiting_token: bool,
    /// Tokens refused in a row since the last `OK`.
    token_refusals: u32,
    /// Publishes refused with `rate_limited`, to be sent again at the
    /// given time: (due, rid), in due order (each new one is scheduled
    /// after the last, so pushing at the back keeps the order; no B-tree,
    /// which would cost the browser SDK's wasm a few KiB).
    rate_limited: VecDeque<(u64, u64)>,
    tokens: TokenFetch,
    /// The last [`DeliveryTag`] handed out.
    last_tag: u64,
    /// The first tag of the current connection (tags below it are stale).
    live_tags_from: u64,
}

#[derive(Debug, Default)]
struct ReconnectState {
    /// Reconnect attempts since the last `OK`.
    attempt: u32,
    at: Option<u64>,
}

#[derive(Debug, Default)]
struct AuthState {
    /// `OK` must arrive by then (initial `AUTH` or a refresh).
    deadline: Option<u64>,
    /// Token refreshes sent on the open connection, still unanswered.
    refreshes_in_flight: u32,
    /// `set_token` was called while the first `AUTH` was in flight: send the
    /// new token right after `OK`.
    refresh_after_ok: bool,
    /// The hub's `ERR` to an `AUTH`; the close that follows reports it.
    refusal: Option<ErrorFrame>,
}

#[derive(Debug, Default)]
struct HeartbeatState {
    /// 0 = off.
    interval_ms: u64,
    last_sent: u64,
    /// Set while a heartbeat `PING` waits for any frame.
    pong_deadline: Option<u64>,
    ping_rid: Option<u64>,
}

#[derive(Debug, Default)]
struct TokenTimer {
    /// Unix ms, from the last `OK`.
    expires_at: Option<Millis>,
    /// Driver ms at which to emit `TokenRefreshNeeded`.
    refresh_at: Option<u64>,
}

/// How a socket was lost.
enum Lost {
    Closed { code: Option<u16>, reason: String },
    Error(String),
    ConnectTimeout,
    AuthTimeout,
    HeartbeatTimeout,
    TokenFetchFailed(String),
}

/// Upper bound of timer passes in one `handle_timeout` call. One pass fires
/// everything due; a second is only needed when a pass arms a timer that is
/// already due (a zero `retry_after_ms`).
const MAX_TIMER_PASSES: usize = 4;

impl ClientCore {
    /// A machine fed with text frames ([`handle_text`](Self::handle_text)),
    /// whose deliveries carry the payload as JSON text.
    pub fn new(config: ClientConfig) -> Self {
        Self::with_codec(config)
    }

    /// A text frame from the hub, decoded with serde_json; see
    /// [`handle_frame`](Self::handle_frame).
    pub fn handle_text(&mut self, now: u64, text: &str) {
        self.handle_frame(now, HubFrame::decode(text));
    }
}

impl<C: Codec> ClientCore<C> {
    /// A machine that writes frames with codec `C`, for a driver that
    /// decodes frames itself ([`handle_frame`](Self::handle_frame)).
    pub fn with_codec(config: ClientConfig) -> Self {
        let config = config.sanitized();
        let mut rng = fastrand::Rng::with_seed(config.seed);
        ClientCore {
            endpoints: Endpoints::new(config.endpoints, &mut rng),
            rng,
            token: config.token.clone(),
            tokens: TokenFetch::new(config.token.is_some()),
            config,
            state: ConnectionState::Disconnected,
            last_rid: 0,
            last_sub: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            requests: RequestTable::default(),
            queue: VecDeque::new(),
            subs: Registry::default(),
            reconnect: ReconnectState::default(),
            connect_deadline: None,
            auth: AuthState::default(),
            heartbeat: HeartbeatState::default(),
            token_timer: TokenTimer::default(),
            unix_offset_ms: 0,
            awaiting_token: false,
            token_refusals: 0,
            rate_limited: VecDeque::new(),
            last_tag: 0,
            live_tags_from: 1,
            codec: std::marker::PhantomData,
        }
    }

    // ------------------------------------------------------------------
    // Outputs

    /// The next thing to do on the socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent<Event<C::EventPayload>>> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next (driver
    /// ms): the earliest deadline among all timers, `None` when nothing is
    /// scheduled.
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.requests.next_deadline(),
            self.connect_deadline,
            self.auth.deadline,
            self.heartbeat_deadline(),
            self.token_timer.refresh_at,
            self.reconnect.at,
            self.rate_limited.front().map(|&(due, _)| due),
            self.tokens.retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The hub (an index into the driver's list of
    /// [`ClientConfig::endpoints`] URLs) that a [`Transmit::Connect`] asks
    /// for, and that the current connection, if any, went to.
    pub fn endpoint(&self) -> usize {
        self.endpoints.current()
    }

    /// Publishes waiting in the outbound queue for a connection.
    pub fn queued_publishes(&self) -> usize {
        self.queue.len()
    }

    /// Requests waiting for an answer or in the queue (publishes, pings,
    /// subscribes, unsubscribes).
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// The number of registered subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// The `topic::group` of a registered subscription.
    pub fn subscription(&self, sub: SubscriptionId) -> Option<(&Pattern, Option<&Group>)> {
        self.subs
            .get(sub)
            .map(|entry| (&entry.pattern, entry.group.as_ref()))
    }

    // ------------------------------------------------------------------
    // Connection inputs

    /// Connects (or, while waiting to reconnect, connects now). From
    /// `Closed` this starts over: the attempt counter resets and every
    /// registered subscription is sent again after `OK`. Does nothing while
    /// a socket is open or opening.
    pub fn connect(&mut self, now: u64) {
        match self.state {
            ConnectionState::Connecting
            | ConnectionState::Authenticating
            | ConnectionState::Connected => return,
            ConnectionState::Closed => {
                self.reconnect.attempt = 0;
                self.token_refusals = 0;
            }
            ConnectionState::Disconnected => {}
        }
        self.awaiting_token = false;
        self.reconnect.at = None;
        self.start_connect(now, StateReason::UserRequested);
    }

    /// Tells the machine the current Unix time, so it can place the hub's
    /// `expires_at` (Unix ms) on the driver's clock. Drivers whose `now` is
    /// not Unix ms call this before connecting (calling it again, e.g. on
    /// every connect, corrects for wall-clock jumps). Without it, `now` is
    /// taken to be Unix ms.
    pub fn set_unix_time(&mut self, now: u64, unix_ms: u64) {
        self.unix_offset_ms = i128::from(unix_ms) - i128::from(now);
        if self.token_timer.refresh_at.is_some() {
            self.arm_token_timer(self.token_timer.expires_at);
        }
    }

    /// The socket asked for by [`Transmit::Connect`] is open: sends `AUTH`
    /// — once the token source answered, when the attempt waits for a
    /// token (until then the state stays `Connecting` and the connect
    /// timeout runs on).
    pub fn handle_socket_open(&mut self, now: u64) {
        if self.state != ConnectionState::Connecting {
            tracing::debug!(state = ?self.state, "socket open ignored: no connection attempt");
            return;
        }
        if self.tokens.for_connect {
            self.tokens.socket_open = true;
            return;
        }
        self.authenticate(now);
    }

    /// The socket closed (or the connection attempt was refused with a
    /// close). Terminal codes ([`frames::close::is_terminal`]) end in
    /// `Closed`; any other code, or none, schedules a reconnect.
    pub fn handle_socket_closed(&mut self, now: u64, code: Option<u16>, reason: &str) {
        if !self.has_socket() {
            tracing::debug!(state = ?self.state, ?code, "socket close ignored: no socket");
            return;
        }
        let reason = reason.to_owned();
        self.connection_lost(now, Lost::Closed { code, reason });
    }

    /// Opening the socket failed, or it broke without a close frame:
    /// reconnects like a close without a code.
    pub fn handle_socket_error(&mut self, now: u64, msg: &str) {
        if !self.has_socket() {
            tracing::debug!(state = ?self.state, msg, "socket error ignored: no socket");
            return;
        }
        self.connection_lost(now, Lost::Error(msg.to_owned()));
    }

    /// A frame from the hub, as decoded by the driver (or the error that
    /// decoding gave). Undecodable or out-of-place frames become
    /// [`ClientEvent::ProtocolError`]; nothing here panics.
    pub fn handle_frame(
        &mut self,
        now: u64,
        frame: Result<HubFrame<Event<C::EventPayload>>, DecodeError>,
    ) {
        match self.state {
            ConnectionState::Authenticating | ConnectionState::Connected => {}
            _ => {
                tracing::debug!(state = ?self.state, "frame ignored: no open socket");
                return;
            }
        }
        // Any frame at all proves the connection is alive.
        self.heartbeat.pong_deadline = None;
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                self.emit(ClientEvent::ProtocolError(format!(
                    "undecodable frame from the hub: {err}"
                )));
                return;
            }
        };
        if self.state == ConnectionState::Authenticating {
            self.handle_frame_before_ok(now, frame);
        } else {
            self.handle_connected_frame(now, frame);
        }
    }

    /// Fires every timer due at `now`. Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: u64) {
        for _ in 0..MAX_TIMER_PASSES {
            self.fire_due_timers(now);
            if self.poll_timeout().is_none_or(|deadline| deadline > now) {
                break;
            }
        }
    }

    /// Closes for good: [`Transmit::Close`] with 1000 if a socket is open or
    /// opening, state `Closed`, no reconnect. Requests on the wire fail with
    /// [`RequestError::Disconnected`], queued ones with
    /// [`RequestError::Closed`]. Subscriptions stay registered:
    /// [`connect`](Self::connect) restores them.
    pub fn close(&mut self, _now: u64) {
        self.awaiting_token = false;
        self.stop_token_retries();
        if self.state == ConnectionState::Closed {
            return;
        }
        if self.has_socket() {
            self.abandon_socket(close_code::NORMAL, "client closed");
        }
        self.enter_closed(StateReason::UserRequested);
    }

    // ------------------------------------------------------------------
    // Internals: output helpers

    fn emit(&mut self, event: ClientEvent<Event<C::EventPayload>>) {
        self.events.push_back(event);
    }

    fn set_state(&mut self, state: ConnectionState, reason: StateReason) {
        if self.state != state {
            tracing::debug!(from = ?self.state, to = ?state, ?reason, "client state");
            self.state = state;
            self.emit(ClientEvent::StateChanged { state, reason });
        }
    }

    fn send(&mut self, now: u64, text: String) {
        self.heartbeat.last_sent = now;
        self.transmits.push_back(Transmit::Text(text));
    }

    fn send_frame(&mut self, now: u64, frame: &ClientFrame<Publish<C::Payload>>) {
        self.send(now, C::encode(frame));
    }

    fn next_rid(&mut self) -> u64 {
        self.last_rid += 1;
        self.last_rid
    }

    fn has_socket(&self) -> bool {
        matches!(
            self.state,
            ConnectionState::Connecting
                | ConnectionState::Authenticating
                | ConnectionState::Connected
        )
    }

    fn heartbeat_deadline(&self) -> Option<u64> {
        if self.state != ConnectionState::Connected {
            return None;
        }
        self.heartbeat.pong_deadline.or_else(|| {
            (self.heartbeat.interval_ms > 0).then(|| {
                self.heartbeat
                    .last_sent
                    .saturating_add(self.heartbeat.interval_ms)
            })
        })
    }

    /// Parses a rid this machine handed out. Only the exact text it sent
    /// matches (`"01"` is not rid 1).
    fn own_rid(rid: Option<&str>) -> Option<u64> {
        let rid = rid?;
        let value: u64 = rid.parse().ok()?;
        (value.to_string() == rid).then_some(value)
    }

    // ------------------------------------------------------------------
    // Internals: connection

    fn start_connect(&mut self, now: u64, reason: StateReason) {
        self.endpoints.advance();
        self.connect_deadline = Some(now.saturating_add(self.config.connect_timeout_ms));
        self.transmits.push_back(Transmit::Connect);
        self.set_state(ConnectionState::Connecting, reason);
        self.fetch_token_for_connect();
    }

    /// The socket is open and the token at hand: `AUTH`.
    fn authenticate(&mut self, now: u64) {
        self.connect_deadline = None;
        self.auth = AuthState::default();
        self.tokens.fresh = false;
        self.set_state(ConnectionState::Authenticating, StateReason::SocketOpened);
        self.send_auth(now);
    }

    fn auth_frame(&self) -> ClientFrame<Publish<C::Payload>> {
        ClientFrame::Auth(Auth {
            token: self.token.clone(),
            v: Some(PROTOCOL_VERSION),
            client: Some(self.config.client_name.clone()),
        })
    }

    fn send_auth(&mut self, now: u64) {
        let frame = self.auth_frame();
        self.send_frame(now, &frame);
        self.auth.deadline = Some(now.saturating_add(self.config.request_timeout_ms));
    }

    fn send_token_refresh(&mut self, now: u64) {
        self.auth.refreshes_in_flight += 1;
        self.send_auth(now);
    }

    fn send_subscribe(&mut self, now: u64, sub: SubscriptionId) {
        let Some(entry) = self.subs.get_mut(sub) else {
            return;
        };
        let frame_without_rid = Subscribe {
            topic: entry.pattern.clone(),
            group: entry.group.clone(),
            opts: Some(entry.next_subscribe_opts()),
            rid: None,
        };
        let rid = self.next_rid();
        self.send_frame(
            now,
            &ClientFrame::Subscribe(Subscribe {
                rid: Some(rid.to_string()),
                ..frame_without_rid
            }),
        );
        if let Some(entry) = self.subs.get_mut(sub) {
            entry.pending_rid = Some(rid);
        }
        let deadline = now.saturating_add(self.config.request_timeout_ms);
        self.requests
            .insert(rid, deadline, Pending::Subscribe { sub });
    }

    /// Forgets the current socket: what was waiting to be written on it is
    /// dropped (it belongs to a dead connection), and so are its timers.
    fn drop_socket(&mut self) {
        self.transmits
            .retain(|transmit| !matches!(transmit, Transmit::Text(_)));
        self.connect_deadline = None;
        self.auth = AuthState::default();
        self.heartbeat.pong_deadline = None;
        self.heartbeat.ping_rid = None;
        self.token_timer.refresh_at = None;
        self.tokens.give_up_connect();
        // The hub takes back every delivery of a closed connection.
        for sub in self.subs.iter_mut() {
            sub.held.clear();
        }
        self.live_tags_from = self.last_tag + 1;
    }

    /// The client closes the socket itself.
    fn abandon_socket(&mut self, code: u16, reason: &str) {
        self.drop_socket();
        self.transmits.push_back(Transmit::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    fn connection_lost(&mut self, now: u64, lost: Lost) {
        let refusal = self.auth.refusal.take();
        self.drop_socket();
        let close_code = match &lost {
            Lost::Closed { code, .. } => *code,
            _ => None,
        };
        // A refused token will be refused again: without an explicit
        // non-terminal close code from the hub, do not retry it.
        let terminal = match close_code {
            Some(code) => frames::close::is_terminal(code),
            None => refusal.is_some(),
        };
        let needs_token = terminal
            && (refusal.is_some()
                || matches!(
                    close_code,
                    Some(frames::close::AUTH_FAILED | frames::close::FORBIDDEN)
                ));
        let retry_after = match &lost {
            Lost::Closed {
                code: Some(frames::close::RATE_LIMITED),
                reason,
            } => frames::close::retry_after(reason),
            _ => None,
        };
        let reason = match (refusal, lost) {
            (Some(err), _) => StateReason::AuthRefused {
                code: err.code,
                msg: err.msg,
                close_code,
            },
            (None, Lost::Closed { code, reason }) => match code {
                Some(code) if terminal => StateReason::TerminalClose { code, reason },
                _ => StateReason::SocketClosed { code, reason },
            },
            (None, Lost::Error(msg)) => StateReason::SocketError(msg),
            (None, Lost::ConnectTimeout) => StateReason::ConnectTimeout,
            (None, Lost::AuthTimeout) => StateReason::AuthTimeout,
            (None, Lost::HeartbeatTimeout) => StateReason::HeartbeatTimeout,
            (None, Lost::TokenFetchFailed(msg)) => StateReason::TokenFetchFailed(msg),
        };
        if terminal {
            self.enter_closed(reason);
            if needs_token {
                self.awaiting_token = true;
                self.token_refusals = self.token_refusals.saturating_add(1);
                self.need_token(None);
            }
        } else {
            self.schedule_reconnect(now, reason, retry_after);
        }
    }

    fn schedule_reconnect(&mut self, now: u64, reason: StateReason, retry_after: Option<u64>) {
        let policy = self.config.reconnect;
        if !policy.enabled {
            self.enter_closed(reason);
            return;
        }
        if let Some(max) = policy.max_attempts
            && self.reconnect.attempt >= max
        {
            let attempts = self.reconnect.attempt;
            self.enter_closed(StateReason::ReconnectExhausted { attempts });
            return;
        }
        self.reconnect.attempt = self.reconnect.attempt.saturating_add(1);
        let attempt = self.reconnect.attempt;
        let delay_ms = retry_after.unwrap_or_else(|| {
            let (floor, cap) = policy.delay_bounds(attempt);
            self.rng.u64(floor..=cap)
        });
        self.reconnect.at = Some(now.saturating_add(delay_ms));
        self.set_state(ConnectionState::Disconnected, reason);
        self.settle_requests_for_reconnect();
        self.emit(ClientEvent::Reconnecting { attempt, delay_ms });
    }

    fn enter_closed(&mut self, reason: StateReason) {
        self.reconnect.at = None;
        self.connect_deadline = None;
        self.set_state(ConnectionState::Closed, reason);
        self.queue.clear();
        for (rid, pending) in self.requests.drain() {
            match pending {
                Pending::Publish { sent, .. } => self.emit(ClientEvent::PublishFailed {
                    request: RequestId(rid),
                    error: if sent {
                        RequestError::Disconnected
                    } else {
                        RequestError::Closed
                    },
                }),
                Pending::Subscribe { sub } => {
                    if let Some(entry) = self.subs.get_mut(sub) {
                        entry.pending_rid = None;
                    }
                }
                Pending::Unsubscribe { sub } => self.emit(ClientEvent::Unsubscribed { sub }),
                Pending::Ping => self.emit(ClientEvent::PingFailed {
                    request: RequestId(rid),
                    error: RequestError::Disconnected,
                }),
                Pending::CancelledSubscribe => {}
            }
        }
    }

    fn arm_token_timer(&mut self, expires_at: Option<Millis>) {
        self.token_timer.expires_at = expires_at;
        self.token_timer.refresh_at = expires_at.map(|unix_ms| {
            let local = i128::from(unix_ms) - self.unix_offset_ms;
            let local = u64::try_from(local.max(0)).unwrap_or(u64::MAX);
            local.saturating_sub(self.config.token_refresh_margin_ms)
        });
    }

    // ------------------------------------------------------------------
    // Internals: timers

    fn fire_due_timers(&mut self, now: u64) {
        while let Some((rid, pending)) = self.requests.pop_due(now) {
            self.request_timed_out(now, rid, pending);
        }
        self.resend_rate_limited(now);
        if let Some(deadline) = self.connect_deadline
            && deadline <= now
        {
            self.connect_deadline = None;
            if self.state == ConnectionState::Connecting {
                self.abandon_socket(close_code::CLIENT_TIMEOUT, "connect timeout");
                self.connection_lost(now, Lost::ConnectTimeout);
            }
        }
        if let Some(deadline) = self.auth.deadline
            && deadline <= now
        {
            self.auth.deadline = None;
            if matches!(
                self.state,
                ConnectionState::Authenticating | ConnectionState::Connected
            ) {
                // The hub refused but did not close: leave it ourselves.
                let refusal = self.auth.refusal.take();
                if refusal.is_some() {
                    self.abandon_socket(close_code::NORMAL, "authentication refused");
                } else {
                    self.abandon_socket(close_code::CLIENT_TIMEOUT, "authentication timeout");
                }
                self.auth.refusal = refusal;
                self.connection_lost(now, Lost::AuthTimeout);
            }
        }
        if let Some(deadline) = self.heartbeat.pong_deadline
            && deadline <= now
        {
            self.heartbeat.pong_deadline = None;
            if self.state == ConnectionState::Connected {
                self.abandon_socket(close_code::CLIENT_TIMEOUT, "heartbeat timeout");
                self.connection_lost(now, Lost::HeartbeatTimeout);
            }
        }
        if let Some(deadline) = self.heartbeat_deadline()
            && deadline <= now
            && self.heartbeat.pong_deadline.is_none()
        {
            let rid = self.next_rid();
            self.send_frame(
                now,
                &ClientFrame::Ping(Ping {
                    rid: Some(rid.to_string()),
                }),
            );
            self.heartbeat.ping_rid = Some(rid);
            self.heartbeat.pong_deadline =
                Some(now.saturating_add(self.config.heartbeat.pong_timeout_ms));
        }
        if let Some(deadline) = self.token_timer.refresh_at
            && deadline <= now
        {
            self.token_timer.refresh_at = None;
            self.need_token(self.token_timer.expires_at);
        }
        self.fire_token_retry(now);
        if let Some(deadline) = self.reconnect.at
            && deadline <= now
        {
            self.reconnect.at = None;
            if self.state == ConnectionState::Disconnected {
                let attempt = self.reconnect.attempt;
                self.start_connect(now, StateReason::Reconnect { attempt });
            }
        }
    }
}
