//! Drainer metrics: counters kept by the drainers, backlog from the store.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Millis;

use super::{OutboxError, OutboxStore};

/// Counters shared by the drainers of one outbox (clone the `Arc`).
#[derive(Debug, Default)]
pub struct OutboxMetrics {
    pub(crate) claimed: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) fence_rejections: AtomicU64,
    pub(crate) purged: AtomicU64,
}

/// One reading of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Records not yet sent.
    pub backlog: u64,
    /// Age of the oldest unsent record (ms), if any.
    pub oldest_unsent_age_ms: Option<Millis>,
    /// Records currently dead.
    pub dead_now: u64,
    pub claimed: u64,
    pub sent: u64,
    /// Sent records the hub already had (re-publishes it de-duplicated).
    pub duplicates: u64,
    pub retries: u64,
    /// Records that became dead.
    pub dead: u64,
    pub released: u64,
    /// Fenced writes that changed nothing: the drainer had lost its lease.
    pub fence_rejections: u64,
    pub purged: u64,
}

impl OutboxMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters plus the store's backlog at `now`.
    pub async fn snapshot(
        &self,
        store: &dyn OutboxStore,
        now: Millis,
    ) -> Result<MetricsSnapshot, OutboxError> {
        let stats = store.stats().await?;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Ok(MetricsSnapshot {
            backlog: stats.backlog,
            oldest_unsent_age_ms: stats.oldest_unsent_at.map(|at| now.saturating_sub(at)),
            dead_now: stats.dead,
            claimed: read(&self.claimed),
            sent: read(&self.sent),
            duplicates: read(&self.duplicates),
            retries: read(&self.retries),
            dead: read(&self.dead),
            released: read(&self.released),
            fence_rejections: read(&self.fence_rejections),
            purged: read(&self.purged),
        })
    }
}
