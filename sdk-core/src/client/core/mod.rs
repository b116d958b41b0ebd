//! [`ClientCore`]: the connection, request and subscription state machine.
//! Deliveries and their answers are in `deliveries`, tokens in `token`.

mod deliveries;
mod token;

pub use self::deliveries::Answer;

use std::collections::VecDeque;

use serde::Deserialize;

use self::token::TokenFetch;
use super::config::{ClientConfig, QueuePolicy};
use super::events::{
    ClientError, ClientEvent, ConnectionState, DeliveryTag, RequestError, RequestId, StateReason,
    SubscriptionId, Transmit, Unmatched,
};
use super::requests::{Pending, RequestTable};
use super::subscriptions::{Registry, Subscription};
use crate::frames::{
    self, Auth, ClientFrame, ErrorCode, ErrorFrame, Group, HubFrame, Millis, PROTOCOL_VERSION,
    Payload, Ping, Publish, PublishOpts, Subscribe, SubscribeOpts, Unsubscribe, Welcome,
};
use crate::topic::{Pattern, Topic};

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
#[derive(Debug)]
pub struct ClientCore {
    config: ClientConfig,
    state: ConnectionState,
    rng: fastrand::Rng,
    token: Option<String>,
    /// Last rid handed out; rids are unique for the machine's whole life so
    /// a late answer from an old connection can never match a new request.
    last_rid: u64,
    last_sub: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ClientEvent>,
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
    pub fn new(config: ClientConfig) -> Self {
        let config = config.sanitized();
        ClientCore {
            rng: fastrand::Rng::with_seed(config.seed),
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
        }
    }

    // ------------------------------------------------------------------
    // Outputs

    /// The next thing to do on the socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
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

    /// A text frame from the hub. Undecodable or out-of-place frames become
    /// [`ClientEvent::ProtocolError`]; nothing here panics.
    pub fn handle_text(&mut self, now: u64, text: &str) {
        match self.state {
            ConnectionState::Authenticating | ConnectionState::Connected => {}
            _ => {
                tracing::debug!(state = ?self.state, "frame ignored: no open socket");
                return;
            }
        }
        // Any frame at all proves the connection is alive.
        self.heartbeat.pong_deadline = None;
        let frame = match HubFrame::decode(text) {
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
            self.handle_frame(now, frame);
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
    // Requests

    /// Publishes an event; the answer arrives as
    /// [`ClientEvent::PublishAcked`] or [`ClientEvent::PublishFailed`] with
    /// the returned id, within `request_timeout_ms` of this call.
    ///
    /// Not connected: queued with [`QueuePolicy::Wait`] and sent right after
    /// the next `OK`; refused with [`QueuePolicy::FailFast`]. If the
    /// connection drops before `PUBACK`, a publish with `opts.id` is sent
    /// again after the reconnect (the hub de-duplicates by id); one without
    /// fails with [`RequestError::Disconnected`]. Refused with
    /// `rate_limited` and a `retry_after_ms` that ends before the request
    /// timeout: sent again after that wait (no event in between); otherwise
    /// the refusal is reported.
    pub fn publish(
        &mut self,
        now: u64,
        topic: Topic,
        payload: Payload,
        opts: PublishOpts,
    ) -> Result<RequestId, ClientError> {
        let connected = match self.state {
            ConnectionState::Closed => return Err(ClientError::Closed),
            ConnectionState::Connected => true,
            _ => false,
        };
        if !connected {
            let queue = self.config.outbound_queue;
            if queue.policy == QueuePolicy::FailFast {
                return Err(ClientError::NotConnected);
            }
            if self.queue.len() >= queue.capacity {
                return Err(ClientError::QueueFull {
                    capacity: queue.capacity,
                });
            }
        }
        let rid = self.next_rid();
        let has_event_id = opts.id.is_some();
        let text = ClientFrame::Publish(Publish {
            topic,
            payload,
            opts: Some(opts),
            rid: Some(rid.to_string()),
        })
        .encode();
        let deadline = now.saturating_add(self.config.request_timeout_ms);
        if connected {
            // Kept to be sent again after `rate_limited` (or a reconnect).
            let kept = text.clone();
            self.send(now, text);
            self.requests.insert(
                rid,
                deadline,
                Pending::Publish {
                    text: kept,
                    has_event_id,
                    sent: true,
                },
            );
        } else {
            self.requests.insert(
                rid,
                deadline,
                Pending::Publish {
                    text,
                    has_event_id,
                    sent: false,
                },
            );
            self.queue.push_back(rid);
        }
        Ok(RequestId(rid))
    }

    /// Registers a subscription to `pattern` (with `group`: a durable
    /// consumer group). Sent now if connected, else after the next `OK`;
    /// sent again after every reconnect. Works in every state, `Closed`
    /// included. The same `topic::group` twice is refused with
    /// [`ClientError::AlreadySubscribed`] carrying the existing id.
    pub fn subscribe(
        &mut self,
        now: u64,
        pattern: Pattern,
        group: Option<Group>,
        opts: SubscribeOpts,
    ) -> Result<SubscriptionId, ClientError> {
        if let Some(existing) = self.subs.find(&pattern, group.as_ref()) {
            return Err(ClientError::AlreadySubscribed(existing));
        }
        self.last_sub += 1;
        let sub = SubscriptionId(self.last_sub);
        self.subs
            .insert(sub, Subscription::new(pattern, group, opts));
        if self.state == ConnectionState::Connected {
            self.send_subscribe(now, sub);
        }
        Ok(sub)
    }

    /// Removes a subscription; its events stop at once. Connected: sends
    /// `UNSUBSCRIBE` and returns its request id ([`ClientEvent::Unsubscribed`]
    /// follows). Otherwise there is nothing to tell the hub: returns
    /// `Ok(None)` and emits `Unsubscribed` right away.
    pub fn unsubscribe(
        &mut self,
        now: u64,
        sub: SubscriptionId,
    ) -> Result<Option<RequestId>, ClientError> {
        let Some(entry) = self.subs.remove(sub) else {
            return Err(ClientError::UnknownSubscription(sub));
        };
        if let Some(rid) = entry.pending_rid
            && let Some(pending) = self.requests.get_mut(rid)
        {
            *pending = Pending::CancelledSubscribe;
        }
        if self.state != ConnectionState::Connected {
            self.emit(ClientEvent::Unsubscribed { sub });
            return Ok(None);
        }
        let rid = self.next_rid();
        self.send_frame(
            now,
            &ClientFrame::Unsubscribe(Unsubscribe {
                topic: entry.pattern,
                group: entry.group,
                rid: Some(rid.to_string()),
            }),
        );
        let deadline = now.saturating_add(self.config.request_timeout_ms);
        self.requests
            .insert(rid, deadline, Pending::Unsubscribe { sub });
        Ok(Some(RequestId(rid)))
    }

    /// Sends a `PING`; [`ClientEvent::Pong`] or [`ClientEvent::PingFailed`]
    /// follows.
    pub fn ping(&mut self, now: u64) -> Result<RequestId, ClientError> {
        if self.state != ConnectionState::Connected {
            return Err(ClientError::NotConnected);
        }
        let rid = self.next_rid();
        self.send_frame(
            now,
            &ClientFrame::Ping(Ping {
                rid: Some(rid.to_string()),
            }),
        );
        let deadline = now.saturating_add(self.config.request_timeout_ms);
        self.requests.insert(rid, deadline, Pending::Ping);
        Ok(RequestId(rid))
    }

    // ------------------------------------------------------------------
    // Internals: output helpers

    fn emit(&mut self, event: ClientEvent) {
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

    fn send_frame(&mut self, now: u64, frame: &ClientFrame) {
        self.send(now, frame.encode());
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

    /// Removes a request from the table and, if it was queued, the queue.
    fn take_request(&mut self, rid: u64) -> Option<Pending> {
        let pending = self.requests.remove(rid)?;
        if matches!(pending, Pending::Publish { sent: false, .. }) {
            self.queue.retain(|&queued| queued != rid);
        }
        Some(pending)
    }

    // ------------------------------------------------------------------
    // Internals: connection

    fn start_connect(&mut self, now: u64, reason: StateReason) {
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

    fn auth_frame(&self) -> ClientFrame {
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
        self.tokens.for_connect = false;
        self.tokens.socket_open = false;
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
            } => parse_retry_after(reason),
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

    /// After a drop with a reconnect ahead: publishes with an event id go
    /// back to the front of the queue (in their original order), everything
    /// else that was on the wire fails or is dropped.
    fn settle_requests_for_reconnect(&mut self) {
        let on_wire = self
            .requests
            .rids(|pending| !matches!(pending, Pending::Publish { sent: false, .. }));
        let mut requeued = Vec::new();
        for rid in on_wire {
            if let Some(Pending::Publish {
                has_event_id: true,
                sent,
                ..
            }) = self.requests.get_mut(rid)
            {
                *sent = false;
                requeued.push(rid);
                continue;
            }
            match self.requests.remove(rid) {
                Some(Pending::Publish { .. }) => self.emit(ClientEvent::PublishFailed {
                    request: RequestId(rid),
                    error: RequestError::Disconnected,
                }),
                // Registered subscriptions are sent again after `OK`.
                Some(Pending::Subscribe { sub }) => {
                    if let Some(entry) = self.subs.get_mut(sub) {
                        entry.pending_rid = None;
                    }
                }
                // The hub dropped the socket's subscriptions with it.
                Some(Pending::Unsubscribe { sub }) => {
                    self.emit(ClientEvent::Unsubscribed { sub });
                }
                Some(Pending::Ping) => self.emit(ClientEvent::PingFailed {
                    request: RequestId(rid),
                    error: RequestError::Disconnected,
                }),
                Some(Pending::CancelledSubscribe) | None => {}
            }
        }
        for rid in requeued.into_iter().rev() {
            self.queue.push_front(rid);
        }
        // The capacity bounds memory even when re-queued publishes overflow
        // it: the newest give way.
        while self.queue.len() > self.config.outbound_queue.capacity {
            let Some(rid) = self.queue.pop_back() else {
                break;
            };
            if self.requests.remove(rid).is_some() {
                self.emit(ClientEvent::PublishFailed {
                    request: RequestId(rid),
                    error: RequestError::QueueFull,
                });
            }
        }
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

    /// Sends rate-limited publishes whose wait is over (queues them when
    /// not connected; ones that timed out or failed meanwhile are gone).
    fn resend_rate_limited(&mut self, now: u64) {
        while let Some(&(due, rid)) = self.rate_limited.front() {
            if due > now {
                break;
            }
            self.rate_limited.pop_front();
            let connected = self.state == ConnectionState::Connected;
            let Some(Pending::Publish { text, sent, .. }) = self.requests.get_mut(rid) else {
                continue;
            };
            if *sent || self.queue.contains(&rid) {
                continue;
            }
            if connected {
                *sent = true;
                let text = text.clone();
                self.send(now, text);
            } else {
                self.queue.push_back(rid);
            }
        }
    }

    fn request_timed_out(&mut self, now: u64, rid: u64, pending: Pending) {
        let request = RequestId(rid);
        let error = RequestError::TimedOut;
        match pending {
            Pending::Publish { sent, .. } => {
                if !sent {
                    self.queue.retain(|&queued| queued != rid);
                }
                self.emit(ClientEvent::PublishFailed { request, error });
            }
            Pending::Subscribe { sub } => {
                // The hub may still have subscribed: ask it to drop the
                // subscription so no events arrive for a handler that was
                // told it failed.
                if let Some(entry) = self.subs.remove(sub)
                    && self.state == ConnectionState::Connected
                {
                    self.send_frame(
                        now,
                        &ClientFrame::Unsubscribe(Unsubscribe {
                            topic: entry.pattern,
                            group: entry.group,
                            rid: None,
                        }),
                    );
                }
                self.emit(ClientEvent::SubscribeFailed { sub, error });
            }
            Pending::Unsubscribe { sub } => {
                self.emit(ClientEvent::UnsubscribeFailed { sub, error });
            }
            Pending::Ping => self.emit(ClientEvent::PingFailed { request, error }),
            Pending::CancelledSubscribe => {}
        }
    }

    // ------------------------------------------------------------------
    // Internals: frames from the hub

    fn handle_frame_before_ok(&mut self, now: u64, frame: HubFrame) {
        match frame {
            HubFrame::Ok(welcome) => self.handle_first_ok(now, welcome),
            // No request carries a rid before `OK`: any ERR answers AUTH.
            // The hub closes the socket next; the close reports it.
            HubFrame::Err(err) => {
                if self.auth.refusal.is_none() {
                    self.auth.refusal = Some(err);
                }
            }
            HubFrame::Ping(ping) => self.send_frame(now, &ClientFrame::Pong(ping)),
            other => self.emit(ClientEvent::ProtocolError(format!(
                "{} before OK; ignored",
                other.op()
            ))),
        }
    }

    fn handle_first_ok(&mut self, now: u64, welcome: Welcome) {
        if welcome.v != PROTOCOL_VERSION {
            self.reject_version(welcome.v);
            return;
        }
        self.auth.deadline = None;
        self.reconnect.attempt = 0;
        self.token_refusals = 0;
        self.heartbeat.interval_ms = self
            .config
            .heartbeat
            .interval_ms
            .unwrap_or(welcome.heartbeat_ms);
        self.heartbeat.last_sent = now;
        self.arm_token_timer(welcome.expires_at);
        self.set_state(ConnectionState::Connected, StateReason::Authenticated);
        self.emit(ClientEvent::Connected(welcome));
        for sub in self.subs.ids() {
            self.send_subscribe(now, sub);
        }
        self.flush_queue(now);
        if std::mem::take(&mut self.auth.refresh_after_ok) {
            self.send_token_refresh(now);
        }
    }

    fn flush_queue(&mut self, now: u64) {
        while let Some(rid) = self.queue.pop_front() {
            let Some(Pending::Publish { text, sent, .. }) = self.requests.get_mut(rid) else {
                continue;
            };
            *sent = true;
            let text = text.clone();
            self.send(now, text);
        }
    }

    fn reject_version(&mut self, version: u32) {
        let msg = format!(
            "hub answered with protocol version {version}; this client speaks {PROTOCOL_VERSION}"
        );
        self.emit(ClientEvent::ProtocolError(msg.clone()));
        self.abandon_socket(
            close_code::PROTOCOL_VIOLATION,
            "unsupported protocol version",
        );
        self.enter_closed(StateReason::ProtocolViolation(msg));
    }

    fn handle_frame(&mut self, now: u64, frame: HubFrame) {
        match frame {
            HubFrame::Ok(welcome) => {
                if self.auth.refreshes_in_flight == 0 {
                    self.emit(ClientEvent::ProtocolError(
                        "OK without a pending AUTH; ignored".to_owned(),
                    ));
                } else if welcome.v != PROTOCOL_VERSION {
                    self.reject_version(welcome.v);
                } else {
                    self.auth.refreshes_in_flight -= 1;
                    if self.auth.refreshes_in_flight == 0 {
                        self.auth.deadline = None;
                    }
                    if self.config.heartbeat.interval_ms.is_none() {
                        self.heartbeat.interval_ms = welcome.heartbeat_ms;
                    }
                    self.arm_token_timer(welcome.expires_at);
                    self.emit(ClientEvent::TokenRefreshed {
                        expires_at: welcome.expires_at,
                    });
                }
            }
            HubFrame::Err(err) => self.handle_err(now, err),
            HubFrame::Puback(ack) => {
                let rid = Self::own_rid(Some(&ack.rid));
                match rid.and_then(|rid| self.take_sent(rid, is_publish)) {
                    Some((rid, _)) => self.emit(ClientEvent::PublishAcked {
                        request: RequestId(rid),
                        ack,
                    }),
                    None => self.emit(ClientEvent::Unmatched(Unmatched::Answer {
                        op: "PUBACK",
                        rid: Some(ack.rid),
                    })),
                }
            }
            HubFrame::Suback(ack) => {
                let rid = Self::own_rid(ack.rid.as_deref());
                match rid.and_then(|rid| self.take_sent(rid, is_subscribe)) {
                    Some((_, Pending::Subscribe { sub })) => {
                        let mut gap = None;
                        if let Some(entry) = self.subs.get_mut(sub) {
                            entry.pending_rid = None;
                            if entry.group.is_none() {
                                gap = entry.resume.confirmed(ack.from_seq);
                            }
                        }
                        self.emit(ClientEvent::Subscribed { sub, ack });
                        if let Some(gap) = gap {
                            self.emit(ClientEvent::Gap { sub, gap });
                        }
                    }
                    Some(_) => {}
                    None => self.emit(ClientEvent::Unmatched(Unmatched::Answer {
                        op: "SUBACK",
                        rid: ack.rid,
                    })),
                }
            }
            HubFrame::Unsuback(ack) => {
                let rid = Self::own_rid(ack.rid.as_deref());
                match rid.and_then(|rid| self.take_sent(rid, is_unsubscribe)) {
                    Some((_, Pending::Unsubscribe { sub })) => {
                        self.emit(ClientEvent::Unsubscribed { sub });
                    }
                    _ => self.emit(ClientEvent::Unmatched(Unmatched::Answer {
                        op: "UNSUBACK",
                        rid: ack.rid,
                    })),
                }
            }
            HubFrame::Event(delivery) => self.route_event(delivery),
            HubFrame::Ping(ping) => self.send_frame(now, &ClientFrame::Pong(ping)),
            HubFrame::Pong(pong) => {
                let rid = Self::own_rid(pong.rid.as_deref());
                if rid.is_some() && rid == self.heartbeat.ping_rid {
                    self.heartbeat.ping_rid = None;
                    return;
                }
                match rid.and_then(|rid| self.take_sent(rid, is_ping)) {
                    Some((rid, _)) => self.emit(ClientEvent::Pong {
                        request: RequestId(rid),
                    }),
                    None => self.emit(ClientEvent::Unmatched(Unmatched::Answer {
                        op: "PONG",
                        rid: pong.rid,
                    })),
                }
            }
            HubFrame::Expiring(expiring) => {
                self.token_timer.refresh_at = None;
                self.need_token(Some(expiring.expires_at));
            }
        }
    }

    /// Takes a request on the wire, if it is of the kind `kind` accepts.
    fn take_sent(&mut self, rid: u64, kind: fn(&Pending) -> bool) -> Option<(u64, Pending)> {
        let pending = self.requests.get_mut(rid)?;
        if !kind(pending) || matches!(pending, Pending::Publish { sent: false, .. }) {
            return None;
        }
        self.requests.remove(rid).map(|pending| (rid, pending))
    }

    fn handle_err(&mut self, now: u64, err: ErrorFrame) {
        let rid = Self::own_rid(err.rid.as_deref());
        if let Some(rid) = rid
            && self.retry_rate_limited(now, rid, &err)
        {
            return;
        }
        let Some((rid, pending)) =
            rid.and_then(|rid| self.take_request(rid).map(|pending| (rid, pending)))
        else {
            if err.rid.is_none() && self.auth.refreshes_in_flight > 0 {
                // A refused token refresh; the hub closes next.
                self.auth.refusal = Some(err);
            } else {
                self.emit(ClientEvent::ServerError(err));
            }
            return;
        };
        let request = RequestId(rid);
        let error = RequestError::Refused(err);
        match pending {
            Pending::Publish { .. } => self.emit(ClientEvent::PublishFailed { request, error }),
            Pending::Subscribe { sub } => {
                self.subs.remove(sub);
                self.emit(ClientEvent::SubscribeFailed { sub, error });
            }
            Pending::Unsubscribe { sub } => {
                self.emit(ClientEvent::UnsubscribeFailed { sub, error });
            }
            Pending::Ping => self.emit(ClientEvent::PingFailed { request, error }),
            Pending::CancelledSubscribe => {}
        }
    }

    /// A publish refused with `rate_limited` and `retry_after_ms` is sent
    /// again after that wait, if its request timeout allows; true when it
    /// was scheduled (nothing is reported then).
    fn retry_rate_limited(&mut self, now: u64, rid: u64, err: &ErrorFrame) -> bool {
        let (ErrorCode::RateLimited, Some(wait)) = (err.code, err.retry_after_ms) else {
            return false;
        };
        // Spaced after the retries already waiting: refused together, sent
        // again all at once they would mostly be refused again (and a
        // client that keeps that up is closed with 4029). The hub's wait is
        // about the time one token takes to come back.
        let after_waiting = self
            .rate_limited
            .back()
            .map_or(0, |&(due, _)| due.saturating_add(wait));
        let due = now.saturating_add(wait).max(after_waiting);
        if self
            .requests
            .deadline(rid)
            .is_none_or(|deadline| due >= deadline)
        {
            return false;
        }
        let Some(Pending::Publish { sent, .. }) = self.requests.get_mut(rid) else {
            return false;
        };
        if !*sent {
            return false;
        }
        // Not on the wire until the resend (a late answer cannot match).
        *sent = false;
        // `due` is after every waiting one's (see above): the order holds.
        self.rate_limited.push_back((due, rid));
        true
    }
}

fn is_publish(pending: &Pending) -> bool {
    matches!(pending, Pending::Publish { .. })
}

fn is_subscribe(pending: &Pending) -> bool {
    matches!(
        pending,
        Pending::Subscribe { .. } | Pending::CancelledSubscribe
    )
}

fn is_unsubscribe(pending: &Pending) -> bool {
    matches!(pending, Pending::Unsubscribe { .. })
}

fn is_ping(pending: &Pending) -> bool {
    matches!(pending, Pending::Ping)
}

/// The delay a 4029 close asks for: its reason is either a number of ms or
/// JSON with `retry_after_ms`.
fn parse_retry_after(reason: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct RetryAfter {
        retry_after_ms: u64,
    }
    let reason = reason.trim();
    reason.parse::<u64>().ok().or_else(|| {
        crate::json_text::from_str::<RetryAfter>(reason)
            .ok()
            .map(|parsed| parsed.retry_after_ms)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_retry_after;

    #[test]
    fn retry_after_is_read_from_a_number_or_json() {
        assert_eq!(parse_retry_after("1500"), Some(1500));
        assert_eq!(parse_retry_after(" 20 "), Some(20));
        assert_eq!(parse_retry_after(r#"{"retry_after_ms":700}"#), Some(700));
        assert_eq!(parse_retry_after("slow down"), None);
        assert_eq!(parse_retry_after(r#"{"retry_after_ms":-1}"#), None);
        assert_eq!(parse_retry_after(""), None);
    }
}
