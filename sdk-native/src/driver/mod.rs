//! The driver task: a thin tokio loop around the sans-IO
//! [`ClientCore`]. It moves bytes (one WebSocket at a time), time (one
//! `sleep_until` at the core's `poll_timeout`) and application requests into
//! the core, and hands the core's events to the application. Every protocol
//! decision — rids, pending requests, backoff, heartbeat, resubscribe,
//! token timing — is the core's.

mod socket;

use std::collections::HashMap;
use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promhub_core::client::{
    ClientCore, ClientEvent, ConnectionState, Delivered, ReconnectConfig, RequestId, StateReason,
    SubscriptionId, Transmit,
};
use promhub_core::frames::Group;
use promhub_core::topic::Pattern;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use self::socket::{Incoming, Socket};
use crate::Error;
use crate::client::PubAck;
use crate::config::{ClientConfig, TokenProvider};
use crate::events::ConnectionEvent;
use crate::link::{Command, ConnectionInfo, RawDelivery, Reply, Settle, Subscribed};

/// Commands (or incoming frames) handled before the outputs are drained:
/// many publishes become one batch of writes and one flush.
const MAX_BATCH: usize = 256;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the driver shares with the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) events: broadcast::Sender<ConnectionEvent>,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) connection: Arc<ConnectionInfo>,
}

/// A socket being opened, with the token fetched in parallel when there is
/// a provider.
struct Opened {
    socket: Result<Socket, String>,
    token: Option<Result<String, String>>,
}

/// The driver's side of one subscription.
struct SubEntry {
    pattern: Pattern,
    group: Option<Group>,
    sender: mpsc::Sender<RawDelivery>,
    /// Until the first `SUBACK`: the caller waiting for it, and the stream
    /// it will read.
    waiting: Option<(Reply<Subscribed>, mpsc::Receiver<RawDelivery>)>,
    ended: Arc<Mutex<Option<Error>>>,
    dropped: u64,
}

pub(crate) struct Driver {
    core: ClientCore,
    url: String,
    socket_options: socket::SocketOptions,
    provider: Option<TokenProvider>,
    /// The core's reconnect backoff, reused for a failing token provider.
    reconnect: ReconnectConfig,
    /// The core's clock: ms since this instant.
    start: Instant,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Shared,
    socket: Option<Socket>,
    opening: Option<BoxFuture<Opened>>,
    token_fetch: Option<BoxFuture<Result<String, String>>>,
    /// The core asked for a token and has not got one yet.
    token_wanted: bool,
    /// A token fetched for the next connection: do not fetch another.
    token_fresh: bool,
    /// When to ask a failing token provider again.
    token_retry_at: Option<Instant>,
    token_failures: u32,
    publishes: HashMap<RequestId, Reply<PubAck>>,
    subs: HashMap<SubscriptionId, SubEntry>,
    unsubscribes: HashMap<SubscriptionId, Reply<()>>,
    pings: HashMap<RequestId, (Reply<Duration>, Instant)>,
    close_replies: Vec<oneshot::Sender<()>>,
    /// Stop once the outputs are drained.
    stopping: bool,
}

impl Driver {
    pub(crate) fn new(
        url: String,
        config: ClientConfig,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: Shared,
    ) -> Self {
        Driver {
            reconnect: config.core.reconnect,
            core: ClientCore::new(config.core),
            url,
            socket_options: socket::SocketOptions {
                max_frame_bytes: config.max_frame_bytes,
                #[cfg(feature = "rustls")]
                tls: config.tls,
            },
            provider: config.token_provider,
            start: Instant::now(),
            commands,
            shared,
            socket: None,
            opening: None,
            token_fetch: None,
            token_wanted: false,
            token_fresh: false,
            token_retry_at: None,
            token_failures: 0,
            publishes: HashMap::new(),
            subs: HashMap::new(),
            unsubscribes: HashMap::new(),
            pings: HashMap::new(),
            close_replies: Vec::new(),
            stopping: false,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn sync_unix_time(&mut self) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let now = self.now();
        self.core.set_unix_time(now, unix_ms);
    }

    pub(crate) async fn run(mut self) {
        self.sync_unix_time();
        let now = self.now();
        self.core.connect(now);
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            self.drain();
            if self.stopping {
                break;
            }
            let deadline = self.next_deadline();
            if let Some(deadline) = deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.handle_command(command);
                        for _ in 1..MAX_BATCH {
                            match self.commands.try_recv() {
                                Ok(command) => self.handle_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    // Every handle, subscription and delivery is gone.
                    None => self.stop("every client handle was dropped"),
                },
                incoming = next_incoming(&mut self.socket) => {
                    self.handle_incoming(incoming);
                    for _ in 1..MAX_BATCH {
                        // Outputs first: a frame may have made the core
                        // close this socket, and then nothing more may be
                        // read from it. (The writer task still batches.)
                        self.drain();
                        match self.socket.as_mut().and_then(Socket::next_ready) {
                            Some(incoming) => self.handle_incoming(incoming),
                            None => break,
                        }
                    }
                }
                opened = poll_slot(&mut self.opening) => {
                    self.opening = None;
                    self.handle_opened(opened);
                }
                token = poll_slot(&mut self.token_fetch) => {
                    self.token_fetch = None;
                    self.handle_token(token);
                }
                () = &mut timer, if deadline.is_some() => self.handle_timer(),
            }
        }
        self.finish();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let core = self.core.poll_timeout().map(|ms| self.instant(ms));
        [core, self.token_retry_at].into_iter().flatten().min()
    }

    /// Executes every transmit and hands out every event, until the core
    /// has nothing more (an event handler may call the core again).
    fn drain(&mut self) {
        loop {
            let mut busy = false;
            while let Some(transmit) = self.core.poll_transmit() {
                busy = true;
                self.execute(transmit);
            }
            while let Some(event) = self.core.poll_event() {
                busy = true;
                self.dispatch(event);
            }
            if !busy {
                return;
            }
        }
    }

    fn stop(&mut self, reason: &str) {
        let now = self.now();
        self.core.close(now);
        self.stopping = true;
        tracing::debug!(reason, "promhub client stopping");
    }

    /// Final clean-up once the close frame is queued.
    fn finish(&mut self) {
        if let Some(socket) = self.socket.take() {
            socket.close(
                promhub_core::client::close_code::NORMAL,
                "client closed".to_owned(),
            );
        }
        for (_, sub) in self.subs.drain() {
            if let Some((reply, _)) = sub.waiting {
                let _ = reply.send(Err(Error::Closed));
            }
        }
        for (_, reply) in self.publishes.drain() {
            let _ = reply.send(Err(Error::Closed));
        }
        for (_, reply) in self.unsubscribes.drain() {
            let _ = reply.send(Ok(()));
        }
        for (_, (reply, _)) in self.pings.drain() {
            let _ = reply.send(Err(Error::Closed));
        }
        self.shared.state.send_replace(ConnectionState::Closed);
        self.shared
            .connection
            .connected
            .store(false, Ordering::Release);
        let _ = self.shared.events.send(ConnectionEvent::Closed {
            reason: "client closed".to_owned(),
        });
        for reply in self.close_replies.drain(..) {
            let _ = reply.send(());
        }
    }

    // ------------------------------------------------------------------
    // Outputs of the core

    fn execute(&mut self, transmit: Transmit) {
        match transmit {
            Transmit::Connect => self.start_opening(),
            Transmit::Text(text) => match &self.socket {
                Some(socket) => socket.send(text),
                None => tracing::warn!("frame to send but no socket; dropped"),
            },
            Transmit::Close { code, reason } => {
                // The core has moved on: nothing more is reported about
                // this socket, and an attempt in progress is abandoned.
                self.opening = None;
                if let Some(socket) = self.socket.take() {
                    socket.close(code, reason);
                }
            }
        }
    }

    fn start_opening(&mut self) {
        self.sync_unix_time();
        if let Some(socket) = self.socket.take() {
            // The core asks for a new socket only after the old one is gone.
            socket.discard();
        }
        let token = match &self.provider {
            Some(provider) if !std::mem::take(&mut self.token_fresh) => Some(provider()),
            _ => None,
        };
        let url = self.url.clone();
        let options = self.socket_options.clone();
        self.opening = Some(Box::pin(async move {
            let socket = socket::open(url, options);
            match token {
                None => Opened {
                    socket: socket.await,
                    token: None,
                },
                Some(token) => {
                    let (socket, token) = tokio::join!(socket, token);
                    Opened {
                        socket,
                        token: Some(token.map_err(|e| e.to_string())),
                    }
                }
            }
        }));
    }

    fn dispatch(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::StateChanged { state, reason } => self.state_changed(state, reason),
            ClientEvent::Connected(welcome) => {
                self.shared.connection.epoch.fetch_add(1, Ordering::AcqRel);
                self.token_failures = 0;
                self.emit(ConnectionEvent::Connected {
                    session: welcome.session,
                    server: welcome.server,
                    expires_at: welcome.expires_at,
                });
            }
            ClientEvent::Reconnecting { attempt, delay_ms } => {
                self.emit(ConnectionEvent::Reconnecting {
                    attempt,
                    delay: Duration::from_millis(delay_ms),
                });
            }
            ClientEvent::PublishAcked { request, ack } => {
                if let Some(reply) = self.publishes.remove(&request) {
                    let _ = reply.send(Ok(PubAck {
                        id: ack.id,
                        seq: ack.seq,
                        duplicate: ack.duplicate,
                    }));
                }
            }
            ClientEvent::PublishFailed { request, error } => {
                if let Some(reply) = self.publishes.remove(&request) {
                    let _ = reply.send(Err(error.into()));
                }
            }
            ClientEvent::Subscribed { sub, ack } => self.subscribed(sub, ack.from_seq),
            ClientEvent::SubscribeFailed { sub, error } => {
                self.subscription_failed(sub, error.into())
            }
            ClientEvent::Unsubscribed { sub } => {
                if let Some(reply) = self.unsubscribes.remove(&sub) {
                    let _ = reply.send(Ok(()));
                }
            }
            ClientEvent::UnsubscribeFailed { sub, error } => {
                if let Some(reply) = self.unsubscribes.remove(&sub) {
                    let _ = reply.send(Err(error.into()));
                }
            }
            ClientEvent::Delivery { sub, delivery } => self.deliver(sub, delivery),
            ClientEvent::TokenRefreshNeeded { expires_at } => {
                self.emit(ConnectionEvent::TokenRefreshNeeded { expires_at });
                self.token_wanted = true;
                self.fetch_token();
            }
            ClientEvent::TokenRefreshed { expires_at } => {
                self.token_failures = 0;
                self.emit(ConnectionEvent::TokenRefreshed { expires_at });
            }
            ClientEvent::ServerError(err) => {
                self.emit(ConnectionEvent::ServerError {
                    code: err.code,
                    msg: err.msg,
                });
            }
            ClientEvent::ProtocolError(msg) => tracing::warn!(%msg, "protocol error from the hub"),
            ClientEvent::Unmatched(unmatched) => tracing::debug!(?unmatched, "unmatched frame"),
            ClientEvent::Pong { request } => {
                if let Some((reply, sent)) = self.pings.remove(&request) {
                    let _ = reply.send(Ok(sent.elapsed()));
                }
            }
            ClientEvent::PingFailed { request, error } => {
                if let Some((reply, _)) = self.pings.remove(&request) {
                    let _ = reply.send(Err(error.into()));
                }
            }
        }
    }

    fn state_changed(&mut self, state: ConnectionState, reason: StateReason) {
        self.shared.state.send_replace(state);
        self.shared
            .connection
            .connected
            .store(state == ConnectionState::Connected, Ordering::Release);
        match state {
            ConnectionState::Connecting => {
                let attempt = match reason {
                    StateReason::Reconnect { attempt } => attempt,
                    _ => 0,
                };
                self.emit(ConnectionEvent::Connecting { attempt });
            }
            ConnectionState::Disconnected | ConnectionState::Closed => {
                let (code, text) = match reason {
                    // The application's own close, or a new token that
                    // waits for its reconnect delay: no connection ended.
                    StateReason::UserRequested | StateReason::TokenUpdated => return,
                    StateReason::AuthRefused {
                        code,
                        msg,
                        close_code,
                    } => {
                        let text = format!("authentication refused: {code} ({msg})");
                        self.emit(ConnectionEvent::AuthRefused { code, msg });
                        (close_code, text)
                    }
                    StateReason::SocketClosed { code, reason } => (code, reason),
                    StateReason::TerminalClose { code, reason } => (Some(code), reason),
                    StateReason::SocketError(msg) => (None, msg),
                    StateReason::ConnectTimeout => (None, "connect timeout".to_owned()),
                    StateReason::AuthTimeout => (None, "no answer to AUTH".to_owned()),
                    StateReason::HeartbeatTimeout => (None, "heartbeat timeout".to_owned()),
                    StateReason::ProtocolViolation(msg) => (None, msg),
                    StateReason::ReconnectExhausted { attempts } => {
                        (None, format!("gave up after {attempts} reconnect attempts"))
                    }
                    other => (None, format!("{other:?}")),
                };
                self.emit(ConnectionEvent::Disconnected { code, reason: text });
            }
            ConnectionState::Authenticating | ConnectionState::Connected => {}
        }
    }

    fn subscribed(&mut self, sub: SubscriptionId, from_seq: u64) {
        let Some(entry) = self.subs.get_mut(&sub) else {
            return;
        };
        let Some((reply, receiver)) = entry.waiting.take() else {
            // A resubscribe after a reconnect.
            return;
        };
        let subscribed = Subscribed {
            sub,
            from_seq,
            receiver,
            ended: Arc::clone(&entry.ended),
        };
        if reply.send(Ok(subscribed)).is_err() {
            // The caller stopped waiting: nobody will read this stream.
            self.remove_subscription(sub);
        }
    }

    fn subscription_failed(&mut self, sub: SubscriptionId, error: Error) {
        // The core has forgotten the subscription.
        let Some(entry) = self.subs.remove(&sub) else {
            return;
        };
        match entry.waiting {
            Some((reply, _)) => {
                let _ = reply.send(Err(error));
            }
            None => {
                if let Ok(mut ended) = entry.ended.lock() {
                    *ended = Some(error.clone());
                }
                self.emit(ConnectionEvent::SubscriptionLost {
                    topic: entry.pattern.to_string(),
                    group: entry.group.map(|g| g.to_string()),
                    error,
                });
            }
        }
    }

    fn deliver(&mut self, sub: SubscriptionId, delivery: Box<promhub_core::frames::EventDelivery>) {
        let epoch = self.shared.connection.epoch.load(Ordering::Acquire);
        let Some(entry) = self.subs.get_mut(&sub) else {
            return;
        };
        match entry.sender.try_send(RawDelivery { epoch, delivery }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                entry.dropped += 1;
                let event = ConnectionEvent::SlowConsumer {
                    topic: entry.pattern.to_string(),
                    group: entry.group.as_ref().map(|g| g.to_string()),
                    dropped: entry.dropped,
                };
                self.emit(event);
            }
            // The subscription is being dropped; its unsubscribe is queued.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn remove_subscription(&mut self, sub: SubscriptionId) {
        self.subs.remove(&sub);
        let now = self.now();
        if let Err(e) = self.core.unsubscribe(now, sub) {
            tracing::debug!(%sub, error = %e, "unsubscribe of an unknown subscription");
        }
    }

    fn emit(&self, event: ConnectionEvent) {
        // No receiver is fine: nobody is listening.
        let _ = self.shared.events.send(event);
    }

    // ------------------------------------------------------------------
    // Tokens

    fn fetch_token(&mut self) {
        if self.token_fetch.is_some() {
            return;
        }
        let Some(provider) = &self.provider else {
            return;
        };
        self.token_retry_at = None;
        let fetch = provider();
        self.token_fetch = Some(Box::pin(
            async move { fetch.await.map_err(|e| e.to_string()) },
        ));
    }

    fn handle_token(&mut self, token: Result<String, String>) {
        match token {
            Ok(token) => {
                self.token_wanted = false;
                self.token_failures = 0;
                let now = self.now();
                // Connected: sent in-band now. Otherwise the next AUTH uses
                // it, so the next connection need not fetch another.
                self.token_fresh = !matches!(
                    self.core.state(),
                    ConnectionState::Connected | ConnectionState::Authenticating
                );
                self.core.set_token(now, Some(token));
            }
            Err(message) => {
                self.emit(ConnectionEvent::TokenError { message });
                self.token_failures = self.token_failures.saturating_add(1);
                self.token_retry_at = Some(Instant::now() + self.token_retry_delay());
            }
        }
    }

    /// The reconnect backoff, for a failing token provider.
    fn token_retry_delay(&self) -> Duration {
        let (floor, cap) = self.reconnect.delay_bounds(self.token_failures.max(1));
        Duration::from_millis(fastrand::u64(floor..=cap))
    }

    // ------------------------------------------------------------------
    // Inputs

    fn handle_timer(&mut self) {
        let now_instant = Instant::now();
        if self.token_retry_at.is_some_and(|at| at <= now_instant) {
            self.token_retry_at = None;
            if self.token_wanted {
                self.fetch_token();
            }
        }
        let now = self.now();
        self.core.handle_timeout(now);
    }

    fn handle_opened(&mut self, opened: Opened) {
        let now = self.now();
        let token = match opened.token {
            Some(Ok(token)) => Some(token),
            Some(Err(message)) => {
                self.emit(ConnectionEvent::TokenError {
                    message: message.clone(),
                });
                if let Ok(socket) = opened.socket {
                    socket.close(
                        promhub_core::client::close_code::NORMAL,
                        "no token".to_owned(),
                    );
                }
                self.core
                    .handle_socket_error(now, &format!("token provider failed: {message}"));
                return;
            }
            None => None,
        };
        match opened.socket {
            Ok(socket) => {
                if let Some(token) = token {
                    self.core.set_token(now, Some(token));
                }
                self.socket = Some(socket);
                self.core.handle_socket_open(now);
            }
            Err(message) => self.core.handle_socket_error(now, &message),
        }
    }

    fn handle_incoming(&mut self, incoming: Incoming) {
        let now = self.now();
        match incoming {
            Incoming::Text(text) => self.core.handle_text(now, text.as_str()),
            Incoming::Closed { code, reason } => {
                if let Some(socket) = self.socket.take() {
                    socket.discard();
                }
                self.core.handle_socket_closed(now, code, &reason);
            }
            Incoming::Error(message) => {
                if let Some(socket) = self.socket.take() {
                    socket.discard();
                }
                self.core.handle_socket_error(now, &message);
            }
            Incoming::Ignored => {}
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Publish {
                topic,
                payload,
                opts,
                reply,
            } => match self.core.publish(now, topic, payload, opts) {
                Ok(request) => {
                    self.publishes.insert(request, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Subscribe {
                pattern,
                group,
                opts,
                buffer,
                reply,
            } => match self
                .core
                .subscribe(now, pattern.clone(), group.clone(), opts)
            {
                Ok(sub) => {
                    let (sender, receiver) = mpsc::channel(buffer);
                    self.subs.insert(
                        sub,
                        SubEntry {
                            pattern,
                            group,
                            sender,
                            waiting: Some((reply, receiver)),
                            ended: Arc::new(Mutex::new(None)),
                            dropped: 0,
                        },
                    );
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Unsubscribe { sub, reply } => {
                self.subs.remove(&sub);
                match self.core.unsubscribe(now, sub) {
                    Ok(_) => {
                        if let Some(reply) = reply {
                            self.unsubscribes.insert(sub, reply);
                        }
                    }
                    // Already gone (refused on a resubscribe): done.
                    Err(_) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Command::Settle {
                sub,
                event_id,
                seq,
                epoch,
                kind,
            } => {
                // The handle already told the application what it could
                // know; a connection lost since then means the hub delivers
                // the event again, whatever the answer was.
                if let Err(e) = self.settle(now, sub, (&event_id, seq), epoch, kind) {
                    tracing::debug!(%sub, event = %event_id, error = %e, "answer not sent");
                }
            }
            Command::Ping { reply } => match self.core.ping(now) {
                Ok(request) => {
                    self.pings.insert(request, (reply, Instant::now()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::SetToken(token) => {
                self.token_wanted = false;
                self.core.set_token(now, token);
            }
            Command::Reconnect => self.core.connect(now),
            Command::Close { reply } => {
                self.close_replies.push(reply);
                self.stop("closed by the application");
            }
        }
    }

    fn settle(
        &mut self,
        now: u64,
        sub: SubscriptionId,
        (event_id, seq): (&str, u64),
        epoch: u64,
        kind: Settle,
    ) -> Result<(), Error> {
        if epoch != self.shared.connection.epoch.load(Ordering::Acquire) && kind != Settle::Ack {
            // The delivery came on a connection that has closed: the hub
            // took it back, and may have handed it out again, so a NACK or
            // WORKING now would act on that new delivery. An ACK still says
            // the truth (the event is processed) and saves a duplicate.
            return Err(Error::Disconnected);
        }
        let delivered = Delivered { id: event_id, seq };
        let result = match kind {
            Settle::Ack => self.core.ack(now, sub, delivered),
            Settle::Working => self.core.working(now, sub, delivered),
            Settle::Nack {
                reason,
                delay_ms,
                final_,
            } => self
                .core
                .nack(now, sub, delivered, reason, delay_ms, final_),
        };
        result.map_err(Error::from)
    }
}

/// The next input from the socket, if there is one (else never).
async fn next_incoming(socket: &mut Option<Socket>) -> Incoming {
    match socket {
        Some(socket) => socket.next().await,
        None => pending().await,
    }
}

/// The output of the future in `slot`, if there is one (else never).
async fn poll_slot<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    match slot {
        Some(future) => future.await,
        None => pending().await,
    }
}
