//! promhub-bench: drives a running hub over loopback and measures it.
//!
//! - [`target`]: which hub (a URL, or a `promhub` binary spawned on
//!   127.0.0.1:0), refusing anything that is not loopback.
//! - [`proc_stats`]: the hub's CPU time and RSS from `/proc`.
//! - [`ws`]: a raw WebSocket client speaking the protocol's JSON frames
//!   (not the SDK: its queues and tasks would be measured too).
//! - [`load`]: N publishers / M subscribers / G groups, bounded by a count
//!   or a duration; throughput and HDR latency percentiles.
//! - [`idle`]: memory per idle authenticated connection.
//! - [`groups`]: many durable groups with connected members at once.
//! - [`targets`]: the hub's performance targets, each measured and checked.
//! - [`scenarios`]: publish, consume, flat-out and paced delivery, with CPU
//!   per event, against the hub and (`--compare nats`) NATS JetStream in
//!   the same run ([`nats`]: finds or builds `nats-server`, drives it with
//!   the `async-nats` JetStream client).
//! - [`disk_floor`]: what one commit's append and `fdatasync` cost in CPU
//!   on this disk with no hub (reported with the paced scenario).
//! - [`report`]: the results as JSON and as text.

pub mod disk_floor;
pub mod groups;
pub mod idle;
pub mod load;
pub mod nats;
pub mod proc_stats;
pub mod report;
pub mod scenarios;
pub mod target;
pub mod targets;
pub mod ws;

pub use idle::{IdleOptions, IdleReport};
pub use load::{LoadOptions, LoadReport};
pub use target::Hub;
