//! One WebSocket connection: a reader that decodes and answers client
//! frames, and a writer task that drains the connection's [`SendQueue`] and
//! flushes once per drain.
//!
//! Every frame is checked here — decoding, size, AUTH first, ACL — so the
//! broker and the store only ever see valid requests. Bad input gets the
//! spec's `ERR` and the connection lives on, until too many bad frames in a
//! window close it with 4008.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::stream::{FuturesUnordered, SplitStream};
use futures_util::{SinkExt, StreamExt};
use promhub_core::frames::{
    self, Auth, ClientFrame, DeliveryRef, ErrorFrame, Expiring, HubFrame, Nack, PROTOCOL_VERSION,
    Ping, PubAck, Publish, Rid, StartFrom, Subscribe, Unsubscribe, Welcome, close,
};
use promhub_core::{ErrorCode, Policy};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self as ws, Message as WireMessage};

use crate::authn::Authenticator;
use crate::broker::{BrokerHandle, Command, ConnId, MemberOpts, Registration, SubscribeRequest};
use crate::config::{HubConfig, MAX_ACK_TIMEOUT_MS, MAX_DELIVER_LIMIT, MAX_INFLIGHT_LIMIT};
use crate::gateway::caps::Slot;
use crate::gateway::upgrade::WsStream;
use crate::gateway::wire::{WsSink, close_for, drain, to_wire};
use crate::limits::{COUNTERS, RateLimit, Strikes, TokenBucket, TopicBuckets, retry_after_ms};
use crate::metrics::{Metrics, encoded_op};
use crate::send_queue::{CloseReason, Drained, SendQueue, SendQueueLimits};
use crate::store::writer::StoreWriter;
use crate::store::{Appended, GroupKey, NewEvent, StoreError};

mod requests;
mod session;

/// Largest seq a client may name (stores keep seqs as signed 64-bit).
const MAX_SEQ: u64 = i64::MAX as u64;
/// After the hub sent a close frame, how long it waits for the client's
/// close before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// The server name announced in `OK`.
pub const SERVER_NAME: &str = concat!("promhub/", env!("CARGO_PKG_VERSION"));

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Arc<HubConfig>,
    pub authenticator: Arc<dyn Authenticator>,
    pub writer: StoreWriter,
    pub broker: BrokerHandle,
    pub shutdown: watch::Receiver<bool>,
    pub next_conn_id: AtomicU64,
    /// The per-topic publish quota, when configured (shared with the
    /// import).
    pub topic_quota: Option<Arc<TopicBuckets>>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    fn outbox_limits(&self) -> SendQueueLimits {
        SendQueueLimits {
            live_frames: self.config.ephemeral_buffer_frames,
            live_bytes: self.config.ephemeral_buffer_bytes,
        }
    }
}

type PublishResult = (Option<Rid>, Result<Appended, StoreError>);
type PendingPublish = Pin<Box<dyn Future<Output = PublishResult> + Send>>;

/// Credentials of an authenticated connection.
#[derive(Debug)]
struct Session {
    id: String,
    policy: Arc<Policy>,
    expires_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    GiveUp,
}

/// Timer for the token's expiry: first `EXPIRING`, then the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExpiryStep {
    Warn,
    Close,
}

struct Connection {
    id: ConnId,
    shared: Arc<Shared>,
    send_queue: Arc<SendQueue>,
    session: Option<Session>,
    /// (pattern, group) of each subscription, to bound them and to skip the
    /// broker for answers on connections without groups.
    subscriptions: HashSet<(String, Option<String>)>,
    /// True once the broker knows this connection.
    registered: bool,
    publishes: FuturesUnordered<PendingPublish>,
    /// Times of recent bad frames (at most `max_bad_frames + 1`).
    bad_frames: VecDeque<Instant>,
    last_inbound: Instant,
    expiry: Option<(Instant, ExpiryStep)>,
    /// When the heartbeat first saw the connection closing.
    closing_seen: Option<Instant>,
    /// This connection's publish quota (configured, or the token's `rate`
    /// claim); `None`: unlimited.
    publish_quota: Option<TokenBucket>,
    /// Recent `rate_limited` refusals; too many close with 4029.
    rate_strikes: Strikes,
    /// Unacknowledged group-delivery bytes, shared by all this
    /// connection's group subscriptions (the broker counts them).
    group_bytes: Arc<AtomicUsize>,
    /// The connection is closed with 4001 unless an AUTH arrives by then
    /// (`limits.auth_timeout_ms` after the upgrade); `None` once one did.
    auth_deadline: Option<Instant>,
}

/// A frame that could not be handled without waiting, or the command it
/// left for a full broker queue.
enum Pending {
    Frame(ClientFrame),
    Command(Command),
}

/// The answers to a group delivery that need no more than the delivery.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ack,
    Working,
}

/// Why the reader stopped reading frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The socket ended or failed: nothing more to do.
    Gone,
    /// A frame the WebSocket layer cannot read (too big, not UTF-8, not
    /// WebSocket): the close frame is queued, and what the client still
    /// sends is read and dropped until it closes, so the close frame is
    /// not lost in a reset.
    Drain,
}

/// Serves one upgraded WebSocket until it closes. `slot` is its place
/// under the connection caps, held until the socket is closed.
pub(crate) async fn serve(socket: WsStream, shared: Arc<Shared>, slot: Arc<Slot>) {
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let send_queue = Arc::new(SendQueue::new(shared.outbox_limits()));
    let rate_strikes = Strikes::new(
        shared.config.limits.max_rate_limited,
        Duration::from_millis(shared.config.limits.rate_limited_window_ms),
    );
    let auth_deadline =
        Instant::now() + Duration::from_millis(shared.config.limits.auth_timeout_ms);
    let (sink, stream) = socket.split();
    shared.metrics.connections_total.inc();
    shared.metrics.connections_open.inc();
    let writer = tokio::spawn(write_loop(
        sink,
        Arc::clone(&send_queue),
        Arc::clone(&shared.metrics),
    ));
    let mut connection = Connection {
        id,
        shared,
        send_queue,
        session: None,
        subscriptions: HashSet::new(),
        registered: false,
        publishes: FuturesUnordered::new(),
        bad_frames: VecDeque::new(),
        last_inbound: Instant::now(),
        expiry: None,
        closing_seen: None,
        publish_quota: None,
        rate_strikes,
        group_bytes: Arc::default(),
        auth_deadline: Some(auth_deadline),
    };
    tracing::debug!(conn = id, "connection opened");
    connection.read_loop(stream, writer).await;
    if connection.registered {
        connection
            .shared
            .broker
            .send(Command::Disconnected { conn: id })
            .await;
    }
    connection.shared.metrics.connections_open.dec();
    tracing::debug!(conn = id, "connection closed");
    drop(slot);
}

/// Sends what the send queue holds, one flush per drain; ends after sending a
/// close frame (returning the sink, so the reader can drain the socket) or
/// on a socket error.
async fn write_loop(
    mut sink: WsSink,
    send_queue: Arc<SendQueue>,
    metrics: Arc<Metrics>,
) -> Option<WsSink> {
    let mut batch = Vec::new();
    loop {
        match send_queue.drain(&mut batch).await {
            Drained::Frames(bytes) => {
                for message in batch.drain(..) {
                    if let Message::Text(text) = &message {
                        metrics.frames_out.inc(encoded_op(text));
                    }
                    if sink.feed(to_wire(message)).await.is_err() {
                        send_queue.close(CloseReason::new(close::NORMAL, "socket error"));
                        return None;
                    }
                }
                if sink.flush().await.is_err() {
                    send_queue.close(CloseReason::new(close::NORMAL, "socket error"));
                    return None;
                }
                send_queue.written(bytes);
                // Do not keep a burst's worth of capacity for an idle
                // connection.
                if batch.capacity() > 256 {
                    batch.shrink_to(16);
                }
            }
            Drained::Close(reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(reason.code),
                    reason: Utf8Bytes::from(reason.reason.as_str()),
                };
                return match sink.send(WireMessage::Close(Some(frame))).await {
                    Ok(()) => Some(sink),
                    Err(_) => None,
                };
            }
        }
    }
}

impl Connection {
    fn config(&self) -> &HubConfig {
        &self.shared.config
    }

    async fn read_loop(
        &mut self,
        mut stream: SplitStream<WsStream>,
        mut writer: tokio::task::JoinHandle<Option<WsSink>>,
    ) {
        let heartbeat = Duration::from_millis(self.config().heartbeat_ms);
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = self.shared.shutdown.clone();
        let mut shutdown_seen = *shutdown.borrow();
        if shutdown_seen {
            self.close(close::GOING_AWAY, "hub shutting down");
        }
        let mut writer_done = false;
        let mut sink = None;
        let mut linger_until: Option<Instant> = None;
        let mut read_end = None;
        loop {
            let expiry = self.expiry;
            let auth_deadline = self.auth_deadline;
            tokio::select! {
                biased;
                written = &mut writer, if !writer_done => {
                    writer_done = true;
                    sink = written.ok().flatten();
                    if read_end == Some(ReadEnd::Drain) {
                        break;
                    }
                    // The close frame is out (or the socket failed): wait a
                    // little for the client's close so that unread input
                    // does not turn our FIN into a reset that could swallow
                    // the close frame.
                    linger_until = Some(Instant::now() + CLOSE_LINGER);
                }
                () = sleep_until(linger_until), if linger_until.is_some() => break,
                changed = shutdown.changed(), if !shutdown_seen => {
                    shutdown_seen = true;
                    if changed.is_ok() {
                        self.close(close::GOING_AWAY, "hub shutting down");
                    }
                }
                Some((rid, result)) = self.publishes.next(), if !self.publishes.is_empty() => {
                    self.publish_done(rid, result);
                }
                message = stream.next(), if read_end.is_none() => match message {
                    Some(Ok(message)) => {
                        self.last_inbound = Instant::now();
                        self.on_message(message).await;
                    }
                    Some(Err(error)) => {
                        let end = self.on_read_error(&error);
                        read_end = Some(end);
                        if end == ReadEnd::Gone || writer_done {
                            break;
                        }
                    }
                    None => break,
                },
                _ = ticker.tick() => {
                    if self.heartbeat(heartbeat) == Liveness::GiveUp {
                        break;
                    }
                }
                () = sleep_until(expiry.map(|(at, _)| at)), if expiry.is_some() => {
                    self.on_expiry();
                }
                () = sleep_until(auth_deadline), if auth_deadline.is_some() => {
                    self.on_auth_deadline();
                }
            }
        }
        if !writer_done {
            writer.abort();
        }
        if read_end == Some(ReadEnd::Drain)
            && let Some(sink) = sink
        {
            drain(stream, sink, CLOSE_LINGER).await;
        }
    }

    /// A frame the WebSocket layer refused: close with the code for it
    /// (1009, 1007, 1002) and drain; a failed socket just ends.
    fn on_read_error(&mut self, error: &ws::Error) -> ReadEnd {
        let Some((code, reason, refusal)) = close_for(error) else {
            tracing::debug!(conn = self.id, %error, "websocket read failed");
            return ReadEnd::Gone;
        };
        if let Some(refusal) = refusal {
            crate::refusals::count(refusal);
        }
        tracing::debug!(conn = self.id, %error, code, "closing after a frame that cannot be read");
        self.close(code, reason);
        ReadEnd::Drain
    }

    /// No AUTH within `limits.auth_timeout_ms`: close with 4001.
    fn on_auth_deadline(&mut self) {
        self.auth_deadline = None;
        if self.session.is_some() || self.send_queue.is_closing() {
            return;
        }
        crate::refusals::count(crate::refusals::Refusal::AuthDeadline);
        let ms = self.config().limits.auth_timeout_ms;
        tracing::debug!(conn = self.id, "no AUTH within the deadline");
        self.close(close::AUTH_FAILED, &format!("no AUTH within {ms} ms"));
    }

    fn heartbeat(&mut self, interval: Duration) -> Liveness {
        if self.send_queue.is_closing() {
            // The close frame could not be written for a whole interval (a
            // peer that reads nothing fills the socket): stop waiting.
            return match self.closing_seen {
                Some(at) if at.elapsed() >= interval.max(CLOSE_LINGER) => Liveness::GiveUp,
                Some(_) => Liveness::Alive,
                None => {
                    self.closing_seen = Some(Instant::now());
                    Liveness::Alive
                }
            };
        }
        let silent = self.last_inbound.elapsed();
        if silent >= interval * 3 {
            self.close(
                close::GOING_AWAY,
                "no traffic for three heartbeat intervals",
            );
        } else if silent >= interval {
            // A WebSocket ping: every client library answers it, including
            // ones that know nothing about protocol-level PING.
            self.send_queue
                .push_message(Message::Ping(Default::default()));
        }
        Liveness::Alive
    }

    fn close(&self, code: u16, reason: &str) {
        self.send_queue.close(CloseReason::new(code, reason));
    }

    fn send(&self, frame: HubFrame) {
        self.send_queue.push(frames::encode(&frame));
    }

    fn send_error(&self, code: ErrorCode, msg: impl Into<String>, rid: Option<Rid>) {
        self.send(HubFrame::Err(ErrorFrame::new(code, msg, rid)));
    }

    /// Answers a bad frame and counts it; too many in the window close the
    /// connection with 4008.
    fn bad_frame(&mut self, code: ErrorCode, msg: impl Into<String>, rid: Option<Rid>) {
        self.send_error(code, msg, rid);
        let now = Instant::now();
        let window = Duration::from_millis(self.config().bad_frame_window_ms);
        while self
            .bad_frames
            .front()
            .is_some_and(|&at| now.duration_since(at) > window)
        {
            self.bad_frames.pop_front();
        }
        self.bad_frames.push_back(now);
        if self.bad_frames.len() > self.config().max_bad_frames as usize {
            tracing::info!(
                conn = self.id,
                "closing a connection that keeps sending bad frames"
            );
            self.close(close::PROTOCOL_VIOLATION, "too many malformed frames");
        }
    }

    /// Handles one message. Most frames are handled without waiting
    /// ([`Connection::handle_now`]); the rest are awaited in a boxed
    /// future, so the connection's task does not carry the state of its
    /// largest request while idle (9.0 KiB per idle connection instead of
    /// 10.8, docs/sizing.md) and the hot frames allocate nothing for it.
    async fn on_message(&mut self, message: WireMessage) {
        if self.send_queue.is_closing() {
            return;
        }
        // A client that sends requests without reading the answers waits
        // here instead of growing its queue.
        let limit = self.config().ephemeral_buffer_bytes * 2;
        if self.send_queue.queued_bytes() >= limit {
            Box::pin(self.send_queue.wait_below(limit)).await;
        }
        let Some(frame) = self.decode(message) else {
            return;
        };
        match self.handle_now(frame) {
            None => {}
            Some(Pending::Frame(frame)) => Box::pin(self.on_frame(frame)).await,
            Some(Pending::Command(command)) => {
                Box::pin(self.shared.broker.send(command)).await;
            }
        }
    }

    /// The client frame in a message; refusals of what is not one are
    /// answered here.
    fn decode(&mut self, message: WireMessage) -> Option<ClientFrame> {
        match message {
            WireMessage::Text(text) => {
                let max = self.config().max_frame_bytes;
                if text.len() > max {
                    self.bad_frame(
                        ErrorCode::TooLarge,
                        format!("frame is {} bytes; at most {max} are allowed", text.len()),
                        // The codec already bounds the text (hard_frame_limit),
                        // so reading its rid costs bounded work.
                        frames::peek_rid(&text),
                    );
                    return None;
                }
                match ClientFrame::decode(&text) {
                    Ok(frame) => {
                        self.shared.metrics.frames_in.inc(frame.op());
                        Some(frame)
                    }
                    Err(e) => {
                        self.shared.metrics.frames_in.inc("invalid");
                        let answer = e.to_error_frame();
                        self.bad_frame(answer.code, answer.msg, answer.rid);
                        None
                    }
                }
            }
            WireMessage::Binary(_) => {
                self.bad_frame(
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text frames",
                    None,
                );
                None
            }
            // The WebSocket layer answers pings itself; pongs only prove
            // the client is alive (`last_inbound`).
            WireMessage::Ping(_) | WireMessage::Pong(_) => None,
            // A raw frame is never read; a close is answered by the
            // WebSocket layer, which then ends the stream.
            WireMessage::Close(_) | WireMessage::Frame(_) => None,
        }
    }

    /// The frames that need no waiting, handled as [`Connection::on_frame`]
    /// would: a PUBLISH while the connection's pending publishes are under
    /// their bound, an ACK or WORKING while the broker's queue has room, a
    /// PONG. Anything else is given back.
    fn handle_now(&mut self, frame: ClientFrame) -> Option<Pending> {
        let Some(session) = &self.session else {
            return Some(Pending::Frame(frame));
        };
        match frame {
            ClientFrame::Publish(publish)
                if self.publishes.len() < self.config().max_pending_publishes =>
            {
                let policy = Arc::clone(&session.policy);
                if let Some((event, rid)) = self.admitted_publish(publish, &policy) {
                    self.start_publish(event, rid);
                }
                None
            }
            ClientFrame::Ack(delivery) => self
                .answer_command(delivery, Answer::Ack)
                .and_then(|command| self.shared.broker.try_send(command))
                .map(Pending::Command),
            ClientFrame::Working(delivery) => self
                .answer_command(delivery, Answer::Working)
                .and_then(|command| self.shared.broker.try_send(command))
                .map(Pending::Command),
            ClientFrame::Pong(_) => None,
            other => Some(Pending::Frame(other)),
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) {
        if let ClientFrame::Auth(auth) = frame {
            self.auth(auth).await;
            return;
        }
        let Some(policy) = self.session.as_ref().map(|s| Arc::clone(&s.policy)) else {
            let rid = frame.rid().map(str::to_owned);
            self.bad_frame(
                ErrorCode::Unauthorized,
                format!("{} before a successful AUTH", frame.op()),
                rid,
            );
            return;
        };
        match frame {
            ClientFrame::Auth(_) => {}
            ClientFrame::Publish(publish) => self.publish(publish, &policy).await,
            ClientFrame::Subscribe(subscribe) => self.subscribe(subscribe, policy).await,
            ClientFrame::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe).await,
            ClientFrame::Ack(delivery) => {
                if let Some(command) = self.answer_command(delivery, Answer::Ack) {
                    self.shared.broker.send(command).await;
                }
            }
            ClientFrame::Working(delivery) => {
                if let Some(command) = self.answer_command(delivery, Answer::Working) {
                    self.shared.broker.send(command).await;
                }
            }
            ClientFrame::Nack(nack) => self.nack(nack).await,
            ClientFrame::Ping(Ping { rid }) => {
                // For a subscriber, PONG comes after every event committed
                // before the PING was queued for it and every earlier
                // ACK/NACK is durable: a client can use PING as a sync point.
                if self.registered {
                    self.shared.broker.barrier().await;
                }
                self.send(HubFrame::Pong(Ping { rid }));
            }
            ClientFrame::Pong(_) => {}
        }
    }
}

/// `ms` from now, capped at a year (a token's `exp` may be absurd).
fn instant_in(ms: u64) -> Instant {
    const YEAR_MS: u64 = 365 * 24 * 60 * 60 * 1000;
    Instant::now() + Duration::from_millis(ms.min(YEAR_MS))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
