//! promhub's browser client: a thin wasm-bindgen driver around the sans-IO
//! state machine [`promhub_core::client::ClientCore`]. Published to npm as
//! `promhub`.
//!
//! Everything the protocol needs (handshake, request ids and timeouts,
//! queueing, resubscribe, heartbeats, token refresh, reconnect backoff)
//! happens in `promhub-core`; this crate moves WebSocket frames, time and
//! JavaScript values in and out:
//!
//! - [`client`]: the `PromClient` class;
//! - [`subscription`]: the `Subscription` class;
//! - `driver`: the socket, the timer and the drive loop;
//! - `dispatch`: machine events → promises, handlers and listeners;
//! - `options`, `errors`, `bindings`: the JavaScript boundary.
//!
//! The TypeScript API (generic `publish<T>` / `subscribe<T>`) is in
//! `ts/api.d.ts`, appended to the generated declarations.

pub mod client;
pub mod subscription;

mod bindings;
mod convert;
mod dispatch;
mod driver;
mod errors;
mod options;

pub use client::PromClient;
pub use promhub_core as core;
pub use subscription::Subscription;

use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(typescript_custom_section)]
const TS_API: &str = include_str!("../ts/api.d.ts");
