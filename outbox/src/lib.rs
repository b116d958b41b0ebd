//! The transactional outbox (semantics.md §5) and its drainer, shared by
//! the native SDK (`promhub::outbox`, which re-exports this crate and
//! publishes through a `promhub::Client`) and the hub (which drains MongoDB
//! outbox collections into its own log). The sink is a trait
//! ([`OutboxSink`]), so this crate knows nothing of the client or the hub.
//!
//! Features: `sqlite` (the embedded store, on by default) and `mongodb`.
//!
//! An application writes its business data and an outbox record in one
//! database transaction ([`sqlite::SqliteOutbox::enqueue_in`] in the
//! embedded store, `mongo::MongoOutbox::enqueue_in` with the application's
//! `ClientSession` on MongoDB). A [`Drainer`] claims records in batches,
//! publishes each with the record's id as the event id (the hub
//! de-duplicates re-publishes), waits for the hub's acknowledgement and
//! marks them sent.
//!
//! - **Claim**: a constant number of round trips per batch: find the due
//!   ids, claim them all with one update that re-checks the filter and
//!   sets a fresh claim token, read them back by token. Due means `pending`
//!   with `next_attempt_at` reached, or `claimed` with an expired lease;
//!   every claim counts an attempt, so a record that crashes drainers ends
//!   `dead` instead of looping.
//! - **Fencing**: every later write filters on the claim token; a drainer
//!   that lost its lease changes nothing, and the rejection is counted
//!   ([`MetricsSnapshot::fence_rejections`]).
//! - **Lease**: renewed while a slow publish runs; once lost (or run out)
//!   the drainer publishes nothing more of the batch.
//! - **Failures**: retried with exponential backoff and jitter
//!   ([`Backoff`]); after [`DrainerOptions::max_attempts`] the record is
//!   `dead`: kept, listed ([`OutboxStore::list_dead`]), replayed with one
//!   call ([`OutboxStore::replay_dead`]).
//! - **Per-key order**: a record with a key is claimable only with every
//!   older unsent record of its key, and a drainer publishes one key's
//!   records one after the other (see `ordering`).
//! - **Retention**: sent records are deleted after
//!   [`DrainerOptions::retention`] (and by a TTL index on MongoDB servers
//!   that have them).

mod backoff;
mod drainer;
mod error;
mod metrics;
#[cfg(feature = "mongodb")]
pub mod mongo;
// Used by the stores only (none without a store feature).
#[cfg_attr(not(any(feature = "sqlite", feature = "mongodb")), allow(dead_code))]
mod ordering;
mod record;
mod sink;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;

pub use backoff::Backoff;
pub use drainer::{BatchReport, Drainer, DrainerOptions, now_ms};
pub use error::OutboxError;
pub use metrics::{MetricsSnapshot, OutboxMetrics};
pub use record::{NewRecord, OutboxRecord, Status};
pub use sink::{OutboxSink, PublishOutcome, SinkError};
pub use store::{Claim, OutboxStats, OutboxStore, Replay};

/// Unix milliseconds (the same as `promhub_core::frames::Millis`).
pub type Millis = u64;
