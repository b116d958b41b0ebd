//! promhub-core: the one source of truth for promhub's wire protocol v1,
//! topic patterns, ACL policies and the sans-IO client state machine.
//!
//! No IO and no async runtime: the hub, the tokio client (`promhub`) and the
//! browser client (`promhub-wasm`) all build on these types.

pub mod acl;
pub mod client;
pub mod frames;
mod object_only;
pub mod quoted;
pub mod topic;

pub use acl::{AclError, Action, Effect, Policy, Rule, RuleAction};
pub use client::{ClientConfig, ClientCore, ClientEvent, ConnectionState, Transmit};
pub use frames::{ClientFrame, DecodeError, ErrorCode, Group, HubFrame, Payload};
pub use topic::{Pattern, Topic, TopicError};
