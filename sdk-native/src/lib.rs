//! The native (tokio) client for [promhub](https://example.invalid/promhub),
//! a real-time event hub.
//!
//! A [`Client`] is a cheap, cloneable handle to one driver task that owns
//! the WebSocket and the sans-IO protocol state machine from
//! [`promhub_core`]: it reconnects with jittered, capped backoff, restores
//! every subscription (durable groups continue from the hub's cursor, live
//! ones from the seq after the last one delivered, with no duplicate, and
//! a [`Gap`] when the hub could no longer deliver what was missed),
//! refreshes the token in band and keeps the connection alive with
//! heartbeats.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use promhub::{Client, ClientConfig, PublishOptions, SubscribeOptions};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct ProcessState {
//!     pid: u32,
//!     status: String,
//! }
//!
//! # async fn example() -> Result<(), promhub::Error> {
//! let client = Client::connect(
//!     "ws://127.0.0.1:8090/ws",
//!     ClientConfig::new().token("eyJ..."),
//! )
//! .await?;
//!
//! // A worker in the durable group "ops": each event goes to one worker of
//! // the group and comes again until it is acknowledged.
//! let mut events = client
//!     .subscribe::<ProcessState>("process.**", Some("ops"), SubscribeOptions::new())
//!     .await?;
//!
//! let ack = client
//!     .publish(
//!         "process.state",
//!         &ProcessState { pid: 42, status: "alive".into() },
//!         PublishOptions::new().key("host:sh:42"),
//!     )
//!     .await?; // resolves once the event is durable in the hub
//! println!("stored as seq {}", ack.seq);
//!
//! while let Some(delivery) = events.next().await {
//!     match delivery.payload() {
//!         Ok(state) => {
//!             println!("{} is {}", state.pid, state.status);
//!             delivery.ack().await?;
//!         }
//!         // Not a ProcessState: dead-letter it rather than retry forever.
//!         Err(e) => {
//!             let reason = e.to_string();
//!             delivery.term(reason).await?;
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## `wss://`
//!
//! With the default `rustls` feature, `wss://` URLs work against hubs whose
//! certificate comes from a public CA (webpki roots). For a hub with a
//! certificate from a private CA, trust that CA with
//! [`ClientConfig::tls_roots`], or pass a complete rustls setup with
//! [`ClientConfig::tls_config`]; [`rustls`] is re-exported so the versions
//! match.

mod client;
mod config;
mod driver;
mod error;
mod events;
pub mod idempotent;
mod link;
mod options;
#[cfg(feature = "outbox")]
pub mod outbox;
mod subscription;

pub use client::{Client, HubUrls, PubAck};
pub use config::{BoxError, ClientConfig, TokenFuture};
pub use error::{DeserializeError, Error};
pub use events::{ConnectionEvent, EventStream};
pub use options::{DEFAULT_SUBSCRIPTION_BUFFER, PublishOptions, SubscribeOptions};
pub use subscription::{Acker, Delivery, Subscription};

pub use promhub_core as core;
pub use promhub_core::client::{ConnectionState, Gap, QueuePolicy};
pub use promhub_core::frames::{ErrorCode, Event, StartFrom};
/// The rustls this crate uses, for [`ClientConfig::tls_roots`] and
/// [`ClientConfig::tls_config`].
#[cfg(feature = "rustls")]
pub use rustls;
