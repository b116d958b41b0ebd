//! The promhub hub: WebSocket gateway, durable log, consumer groups.
//!
//! Frames, topics and ACL come from `promhub-core`; nothing here re-implements
//! them. See `ARCHITECTURE.md` for the data flow.

pub mod auth;
pub mod authn;
mod broker;
mod clock;
pub mod cluster;
pub mod config;
mod connection;
pub mod error;
mod follower;
mod gateway;
pub mod limits;
pub mod metrics;
mod ops;
mod outbox_drain;
pub mod refusals;
pub mod replay;
pub mod retention;
mod send_queue;
mod server;
pub mod store;

pub use auth::{AuthConfig, AuthFailure, Authenticated, Verifier};
pub use authn::{Authenticator, DevAuthenticator};
pub use config::{
    GroupDefaults, HubConfig, LimitsConfig, OutboxDrainConfig, StoreLocation, SyncPolicy,
};
pub use connection::SERVER_NAME;
pub use error::HubError;
/// Checks that the configured TLS certificate and key load (the binary
/// calls it before announcing `listening on`).
pub use gateway::tls::check as check_tls;
pub use metrics::{Metrics, OutboxGauges, OutboxSource};
pub use server::{HubParts, open_store, run, run_with};
