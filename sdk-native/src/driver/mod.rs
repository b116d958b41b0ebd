//! The driver task: a thin tokio loop around the sans-IO
//! [`ClientCore`]. It moves bytes (one WebSocket at a time), time (one
//! `sleep_until` at the core's `poll_timeout`), tokens from the provider and
//! application requests into the core, and hands the core's events to the
//! application. Every protocol decision — rids, pending requests, backoff,
//! heartbeat, resubscribe and resume, token timing and retries, which
//! answers may go out — is the core's.

mod socket;

use std::collections::HashMap;
use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promhub_core::client::{
    ClientCore, ClientEvent, ConnectionState, Delivered, RequestId, StateReason, SubscriptionId,
    Transmit,
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
use crate::link::{Command, ConnectionInfo, RawDelivery, Reply, Subscribed};

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
    /// The hubs' URLs; the core says which one each attempt goes to.
    urls: Vec<String>,
    socket_options: socket::SocketOptions,
    provider: Option<TokenProvider>,
    /// The core's clock: ms since this instant.
    start: Instant,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Shared,
    socket: Option<Socket>,
    opening: Option<BoxFuture<Result<Socket, String>>>,
    token_fetch: Option<BoxFuture<Result<String, String>>>,
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
        urls: Vec<String>,
        config: ClientConfig,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: Shared,
    ) -> Self {
        let mut core = config.core;
        // The core asks the provider for tokens (and retries it) itself.
        core.token_source = config.token_provider.is_some();
        Driver {
            core: ClientCore::new(core),
            urls,
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
            let deadline = self.core.poll_timeout().map(|ms| self.instant(ms));
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
                    let now = self.now();
                    match token {
                        Ok(token) => self.core.handle_token(now, Some(token)),
                        Err(message) => self.core.handle_token_error(now, &message),
                    }
                }
                () = &mut timer, if deadline.is_some() => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
        }
        self.finish();
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
            Transmit::FetchToken => match &self.provider {
                Some(provider) => {
                    let fetch = provider();
                    self.token_fetch =
                        Some(Box::pin(
                            async move { fetch.await.map_err(|e| e.to_string()) },
                        ));
                }
                None => {
                    let now = self.now();
                    self.core.handle_token_error(now, "no token provider");
                }
            },
        }
    }

    fn start_opening(&mut self) {
        self.sync_unix_time();
        if let Some(socket) = self.socket.take() {
            // The core asks for a new socket only after the old one is gone.
            socket.discard();
        }
        let url = self.urls[self.core.endpoint()].clone();
        tracing::debug!(%url, "opening a connection to the hub");
        let options = self.socket_options.clone();
        self.opening = Some(Box::pin(socket::open(url, options)));
    }

    fn dispatch(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::StateChanged { state, reason } => self.state_changed(state, reason),
            ClientEvent::Connected(welcome) => {
                self.emit(ConnectionEvent::Connected {
                    session: welcome.session,
                    server: welcome.server,
                    url: self.urls[self.core.endpoint()].clone(),
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
            ClientEvent::Delivery {
                sub,
                delivery,
                tag,
                gap,
            } => self.deliver(sub, RawDelivery { delivery, tag, gap }),
            ClientEvent::Gap { sub, gap } => {
                if let Some(entry) = self.subs.get(&sub) {
                    let topic = entry.pattern.to_string();
                    self.emit(ConnectionEvent::Gap { topic, gap });
                }
            }
            ClientEvent::TokenRefreshNeeded { expires_at } => {
                self.emit(ConnectionEvent::TokenRefreshNeeded { expires_at });
            }
            ClientEvent::TokenFetchFailed { message, .. } => {
                self.emit(ConnectionEvent::TokenError { message });
            }
            ClientEvent::TokenRefreshed { expires_at } => {
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
        // Deliveries of a connection that has closed are stale from now on.
        self.shared
            .connection
            .live_tags_from
            .store(self.core.live_tags_from().as_u64(), Ordering::Release);
        match state {
            ConnectionState::Connecting => {
                let attempt = match reason {
                    StateReason::Reconnect { attempt } => attempt,
                    _ => 0,
                };
                self.emit(ConnectionEvent::Connecting { attempt });
            }
            ConnectionState::Disconnected | ConnectionState::Closed => {
                match &reason {
                    // The application's own close, or a new token that
                    // waits for its reconnect delay: no connection ended.
                    StateReason::UserRequested | StateReason::TokenUpdated => return,
                    StateReason::AuthRefused { code, msg, .. } => {
                        self.emit(ConnectionEvent::AuthRefused {
                            code: *code,
                            msg: msg.clone(),
                        });
                    }
                    _ => {}
                }
                self.emit(ConnectionEvent::Disconnected {
                    code: reason.close_code(),
                    reason: reason.to_string(),
                });
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

    fn deliver(&mut self, sub: SubscriptionId, raw: RawDelivery) {
        let Some(entry) = self.subs.get_mut(&sub) else {
            return;
        };
        match entry.sender.try_send(raw) {
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
    // Inputs

    fn handle_opened(&mut self, opened: Result<Socket, String>) {
        let now = self.now();
        match opened {
            Ok(socket) => {
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
                tag,
                answer,
                reply,
            } => {
                let delivered = Delivered {
                    id: &event_id,
                    seq,
                    tag,
                };
                // The core decides whether the answer may go out
                // (connected, and the delivery held by this connection).
                let result = self
                    .core
                    .answer(now, sub, delivered, answer)
                    .map_err(Error::from);
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        if let Err(e) = result {
                            tracing::debug!(%sub, event = %event_id, error = %e, "answer not sent");
                        }
                    }
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
            Command::SetToken(token) => self.core.set_token(now, token),
            Command::Reconnect => self.core.connect(now),
            Command::Close { reply } => {
                self.close_replies.push(reply);
                self.stop("closed by the application");
            }
        }
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
