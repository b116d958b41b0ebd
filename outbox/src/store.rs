//! What a drainer needs from an outbox store. Times are passed in (Unix
//! ms), so every rule can be tested without waiting.

use std::time::Duration;

use crate::Millis;
use async_trait::async_trait;

use super::{NewRecord, OutboxError, OutboxRecord};

/// Records claimed by one drainer, fenced by `token`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// Every later write about these records must present it.
    pub token: String,
    pub lease_until: Millis,
    /// In creation order.
    pub records: Vec<OutboxRecord>,
}

/// Which dead records to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    All,
    Ids(Vec<String>),
}

/// Counts for the backlog metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Records not yet sent (`pending` or `claimed`).
    pub backlog: u64,
    /// Creation time of the oldest of them.
    pub oldest_unsent_at: Option<Millis>,
    pub dead: u64,
}

/// An outbox store. Every write after [`claim`](OutboxStore::claim) is
/// fenced by the claim token and returns how many records it changed: a
/// drainer that lost its lease changes nothing.
#[async_trait]
pub trait OutboxStore: Send + Sync + std::fmt::Debug + 'static {
    /// Adds a record outside any application transaction; returns its id.
    async fn enqueue(&self, record: NewRecord, now: Millis) -> Result<String, OutboxError>;

    /// Claims up to `limit` records, `pending` and due or `claimed` with an
    /// expired lease, respecting per-key order (see `ordering`), with a
    /// fresh token, a lease until `now + lease`, and one more attempt each.
    /// A constant number of round trips whatever `limit` is.
    async fn claim(&self, limit: usize, lease: Duration, now: Millis)
    -> Result<Claim, OutboxError>;

    /// Extends the lease of the records still held under `token`.
    async fn renew(&self, token: &str, lease_until: Millis) -> Result<u64, OutboxError>;

    /// Marks `ids` sent (one statement for all).
    async fn mark_sent(&self, token: &str, ids: &[String], now: Millis)
    -> Result<u64, OutboxError>;

    /// A failed publish: back to `pending` at `next_attempt_at`, with the
    /// error. The key's later `pending` records are deferred as well, so a
    /// blocked key does not fill the next claims.
    async fn retry_later(
        &self,
        token: &str,
        id: &str,
        next_attempt_at: Millis,
        error: &str,
    ) -> Result<u64, OutboxError>;

    /// Gives up on a record: `dead`, kept with the error.
    async fn mark_dead(&self, token: &str, id: &str, error: &str) -> Result<u64, OutboxError>;

    /// Hands back records that were claimed but not attempted (the attempt
    /// is not counted).
    async fn release(&self, token: &str, ids: &[String], now: Millis) -> Result<u64, OutboxError>;

    /// Dead records, oldest first.
    async fn list_dead(&self, limit: usize) -> Result<Vec<OutboxRecord>, OutboxError>;

    /// Makes dead records `pending` again with their attempts reset.
    async fn replay_dead(&self, which: Replay, now: Millis) -> Result<u64, OutboxError>;

    /// Deletes records sent before `sent_before`.
    async fn purge_sent(&self, sent_before: Millis) -> Result<u64, OutboxError>;

    async fn stats(&self) -> Result<OutboxStats, OutboxError>;

    async fn get(&self, id: &str) -> Result<Option<OutboxRecord>, OutboxError>;
}
