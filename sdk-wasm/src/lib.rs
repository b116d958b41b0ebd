//! promhub's browser client: a thin wasm-bindgen driver around the sans-IO
//! state machine [`promhub_core::client::ClientCore`]. Published to npm as
//! `promhub`.
//!
//! Everything the protocol needs (handshake, request ids and timeouts,
//! queueing, resubscribe and gapless resume, which answers to deliveries
//! may go out, heartbeats, token refresh and `getToken` retries, reconnect
//! backoff, the words for state changes) happens in `promhub-core`, shared
//! with the native SDK; this crate moves WebSocket frames, time, tokens and
//! JavaScript values in and out:
//!
//! - [`client`]: the `PromClient` class;
//! - [`subscription`]: the `Subscription` class;
//! - `driver`: the socket, the timer and the drive loop;
//! - `dispatch`: machine events → promises, handlers and listeners;
//! - `options`, `errors`, `bindings`: the JavaScript boundary.
//!
//! The TypeScript API of `PromClient` (generic over a topic map, or
//! `publish<T>` / `subscribe<T>` per call) is written by hand in
//! `ts/api.d.ts` and `ts/topics.d.ts`, appended to the generated
//! declarations.

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

/// talc rather than Rust's default dlmalloc: a few KiB less wasm (the
/// bundle has a size budget) and faster allocation. The client is
/// single-threaded (no `atomics`).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[wasm_bindgen(typescript_custom_section)]
const TS_API: &str = include_str!("../ts/api.d.ts");

#[wasm_bindgen(typescript_custom_section)]
const TS_TOPICS: &str = include_str!("../ts/topics.d.ts");
