//! The sans-IO promhub client: a state machine with no sockets, no clock and
//! no threads, in the style of `quinn-proto` and `str0m`.
//!
//! [`ClientCore`] owns everything a client must get right — the `AUTH`
//! handshake, request ids and timeouts, the subscription registry and
//! resubscribe, gapless resume of live subscriptions, which answers to
//! deliveries may go out, the outbound queue, heartbeats, token refresh
//! and the token source's retries, reconnect with jittered backoff, the
//! words for every state change — and a driver (tokio for native apps,
//! wasm-bindgen in the browser) only moves bytes, time and tokens in and
//! out, so both SDKs behave alike by construction.
//!
//! # Driver contract
//!
//! Time is an input: every call takes `now`, milliseconds on a monotonic
//! clock the driver picks (e.g. ms since the driver started). If `now` is
//! not Unix ms, call [`ClientCore::set_unix_time`] before connecting so
//! token expiry times from the hub can be placed on that clock.
//!
//! Inputs:
//! - application calls: [`connect`](ClientCore::connect),
//!   [`publish`](ClientCore::publish), [`subscribe`](ClientCore::subscribe),
//!   [`ack`](ClientCore::ack), [`set_token`](ClientCore::set_token),
//!   [`close`](ClientCore::close), …
//! - socket happenings: [`handle_socket_open`](ClientCore::handle_socket_open),
//!   [`handle_text`](ClientCore::handle_text),
//!   [`handle_socket_closed`](ClientCore::handle_socket_closed),
//!   [`handle_socket_error`](ClientCore::handle_socket_error);
//! - the token source's answers (when
//!   [`ClientConfig::token_source`] is set):
//!   [`handle_token`](ClientCore::handle_token),
//!   [`handle_token_error`](ClientCore::handle_token_error);
//! - the clock: [`handle_timeout`](ClientCore::handle_timeout) once `now`
//!   reaches [`poll_timeout`](ClientCore::poll_timeout).
//!
//! After every input, the driver drains the outputs:
//! 1. [`poll_transmit`](ClientCore::poll_transmit) until `None`, executing
//!    each [`Transmit`] in order: `Connect` opens a new socket, `Text` sends
//!    on the current one, `Close` closes it, `FetchToken` calls the token
//!    source.
//! 2. [`poll_event`](ClientCore::poll_event) until `None`, handing each
//!    [`ClientEvent`] to the application.
//! 3. [`poll_timeout`](ClientCore::poll_timeout) to re-arm its one timer.
//!
//! There is at most one socket at a time. Once the driver has executed a
//! [`Transmit::Close`], it must not report anything more about that socket
//! (detach its handlers or drop it): the machine has already moved on, and
//! a late close from the old socket would be taken for the new one's.
//!
//! # Behaviour in brief
//!
//! - **Requests** get rids `"1"`, `"2"`, … (unique for the machine's life)
//!   and a deadline `request_timeout_ms` after they are made; each timeout
//!   fails exactly that request. For a publish the clock starts at
//!   [`publish`](ClientCore::publish), so a publish always resolves within
//!   the timeout, queued or not.
//! - **Outbound queue**: while not connected, publishes wait (policy
//!   [`QueuePolicy::Wait`], up to `capacity`) and are sent in order right
//!   after the next `OK`, after the resubscribes; or are refused at once
//!   ([`QueuePolicy::FailFast`]). `ACK`/`NACK`/`WORKING` are never queued:
//!   the hub redelivers whatever a closed connection left unacknowledged.
//! - **Dropped connection**: in-flight publishes with `opts.id` are sent
//!   again after the reconnect (the hub de-duplicates by id); those without
//!   fail with [`RequestError::Disconnected`] (they may or may not be
//!   stored).
//! - **Subscriptions** are keyed by `topic::group`; each `EVENT` is routed by
//!   the `topic` and `group` the hub echoes. After every `OK` every
//!   registered subscription is sent again, and answered with
//!   [`ClientEvent::Subscribed`] or [`ClientEvent::SubscribeFailed`].
//! - **Gapless live resume**: a live (ephemeral) subscription remembers the
//!   seq after the last event it delivered (or its first `SUBACK.from_seq`
//!   while it has delivered none) and resubscribes `from` it, without
//!   `snapshot`; events it delivered already are dropped; a
//!   `SUBACK.from_seq` later than asked means the hub's retention removed
//!   the rest: [`ClientEvent::Gap`], and the same [`Gap`] on the next
//!   [`ClientEvent::Delivery`]. Snapshot events pass as they are.
//! - **Answers to deliveries** of durable groups name the delivery by its
//!   [`DeliveryTag`] ([`Delivered`]). The machine holds the deliveries of
//!   the current connection (at most `max_inflight` per subscription, see
//!   [`MAX_INFLIGHT_LIMIT`]); an `ACK`/`NACK`/`WORKING` for any other —
//!   one of a closed connection, one answered already, one the hub has
//!   delivered again since — is refused with [`ClientError::NotHeld`] and
//!   not sent, so a late `NACK` can never act on a newer delivery.
//! - **Reconnect**: delays are drawn from
//!   [`ReconnectConfig::delay_bounds`]; the attempt counter resets on `OK`.
//!   Terminal close codes (1000, 4001, 4003, 4008) end in
//!   [`ConnectionState::Closed`]; after 4001/4003 a new token given to
//!   [`set_token`](ClientCore::set_token) reconnects (at once after the first
//!   refusal, after a reconnect delay when tokens keep being refused). A
//!   4029 close waits the
//!   `retry_after_ms` its reason carries.
//! - **Heartbeat**: after `heartbeat_ms` without sending, a `PING`; no frame
//!   at all within `pong_timeout_ms` after it closes the socket with
//!   [`close_code::CLIENT_TIMEOUT`] and reconnects.
//! - **Token**: `OK.expires_at` minus `token_refresh_margin_ms`, an
//!   `EXPIRING` frame, or a refused token emit
//!   [`ClientEvent::TokenRefreshNeeded`]; [`set_token`](ClientCore::set_token)
//!   re-authenticates in-band. With a token source
//!   ([`ClientConfig::token_source`]) the machine also asks it
//!   ([`Transmit::FetchToken`]) then, and before every connection attempt
//!   (in parallel with opening the socket; `AUTH` waits for the token);
//!   a failure gives that attempt up (the reconnect asks again) or, for a
//!   refresh, asks again after the reconnect backoff, jittered from
//!   [`ClientConfig::seed`].
//! - **Words**: every [`StateReason`] has one text (its `Display`) and
//!   [`StateReason::close_code`], used by both SDKs.
//!
//! # Example
//!
//! A driver loop against a scripted hub (a real driver reads a WebSocket and
//! a timer instead):
//!
//! ```
//! use promhub_core::client::{
//!     ClientConfig, ClientCore, ClientEvent, ConnectionState, Transmit,
//! };
//! use promhub_core::frames::{to_payload, ClientFrame, PublishOpts};
//! use promhub_core::Topic;
//!
//! /// Stands in for the network: what the hub answers to each frame.
//! fn scripted_hub(text: &str) -> Option<String> {
//!     match ClientFrame::decode(text).ok()? {
//!         ClientFrame::Auth(_) => Some(
//!             r#"{"op":"OK","v":1,"session":"s1","server":"hub","heartbeat_ms":15000}"#.into(),
//!         ),
//!         ClientFrame::Publish(p) => Some(format!(
//!             r#"{{"op":"PUBACK","rid":"{}","id":"e1","seq":1}}"#,
//!             p.rid?
//!         )),
//!         ClientFrame::Ping(p) => Some(format!(r#"{{"op":"PONG","rid":"{}"}}"#, p.rid?)),
//!         _ => None,
//!     }
//! }
//!
//! let mut client = ClientCore::new(ClientConfig::new("example/0.1"));
//! let mut now = 0;
//! client.connect(now);
//! let topic = Topic::parse("process.state").unwrap();
//! let payload = to_payload(&serde_json::json!({"pid": 42})).unwrap();
//! // Not connected yet: the publish waits in the outbound queue.
//! let request = client.publish(now, topic, payload, PublishOpts::default()).unwrap();
//!
//! let mut acked = false;
//! for _step in 0..20 {
//!     // 1. Execute transmits (here the scripted hub answers at once).
//!     let mut incoming = Vec::new();
//!     let mut opened = false;
//!     let mut busy = false;
//!     while let Some(transmit) = client.poll_transmit() {
//!         busy = true;
//!         match transmit {
//!             Transmit::Connect => opened = true,
//!             Transmit::Text(text) => incoming.extend(scripted_hub(&text)),
//!             Transmit::Close { .. } | Transmit::FetchToken => {}
//!         }
//!     }
//!     if opened {
//!         client.handle_socket_open(now);
//!     }
//!     for text in incoming {
//!         client.handle_text(now, &text);
//!     }
//!     // 2. Hand events to the application.
//!     while let Some(event) = client.poll_event() {
//!         if let ClientEvent::PublishAcked { request: id, ack } = event {
//!             assert_eq!((id, ack.seq), (request, 1));
//!             acked = true;
//!         }
//!     }
//!     // 3. When there is nothing else to do, wait for the next timer
//!     //    (here: jump to it) and fire it.
//!     if !busy && let Some(deadline) = client.poll_timeout() {
//!         now = now.max(deadline);
//!         client.handle_timeout(now);
//!     }
//! }
//! assert!(acked);
//! assert_eq!(client.state(), ConnectionState::Connected);
//! ```

mod codec;
mod config;
mod core;
mod endpoints;
mod events;
mod held;
mod requests;
mod subscriptions;

pub use self::codec::{Codec, Json};
pub use self::config::{ClientConfig, HeartbeatConfig, QueueConfig, QueuePolicy, ReconnectConfig};
pub use self::core::{Answer, ClientCore, Delivered, close_code};
pub use self::events::{
    ClientError, ClientEvent, ConnectionState, DeliveryTag, Gap, RequestError, RequestId,
    StateReason, SubscriptionId, Transmit, Unmatched,
};
pub use self::held::MAX_INFLIGHT_LIMIT;
