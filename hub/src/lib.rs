//! The promhub hub: WebSocket gateway, durable log, consumer groups.
//!
//! Frames, topics and ACL come from `promhub-core`; nothing here re-implements
//! them.

pub mod auth;
pub mod store;
