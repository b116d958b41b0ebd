//! The drainer: claims a batch, publishes it (same key in order, different
//! keys concurrently) while renewing the lease, then records the outcome
//! with fenced, bulk writes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Millis;
use futures_util::future::join_all;

use super::metrics::OutboxMetrics;
use super::{
    Backoff, OutboxError, OutboxRecord, OutboxSink, OutboxStore, PublishOutcome, SinkError,
};

/// How a drainer works.
#[derive(Debug, Clone)]
pub struct DrainerOptions {
    /// Most records per claim.
    pub batch_size: usize,
    /// How long a claim is owned without renewal; renewed every third of it
    /// while a batch is being published.
    pub lease: Duration,
    /// Sleep when the outbox is empty (or after an error).
    pub poll_interval: Duration,
    /// Attempts (claims) before a record becomes `dead`.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Sent records are deleted this long after being sent.
    pub retention: Duration,
    /// How often the drainer deletes expired sent records.
    pub purge_interval: Duration,
}

impl Default for DrainerOptions {
    fn default() -> Self {
        DrainerOptions {
            batch_size: 100,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            max_attempts: 10,
            backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(300),
            },
            retention: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(60),
        }
    }
}

/// What one [`Drainer::drain_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchReport {
    pub claimed: usize,
    pub sent: u64,
    pub retried: u64,
    pub dead: u64,
    pub released: u64,
    /// Fenced writes that changed nothing (the lease had been lost).
    pub fence_rejections: u64,
}

/// The outcome of one record of a batch.
enum Attempt {
    Published(PublishOutcome),
    Failed(SinkError),
    /// Not published: an earlier record of its key failed, or the lease ran
    /// out first.
    Skipped,
}

/// Drains one outbox into one sink. Run several (here or in other
/// processes) for throughput or availability; they share the work.
#[derive(Debug)]
pub struct Drainer<S, K> {
    store: Arc<S>,
    sink: Arc<K>,
    options: DrainerOptions,
    metrics: Arc<OutboxMetrics>,
}

impl<S: OutboxStore, K: OutboxSink> Drainer<S, K> {
    pub fn new(store: Arc<S>, sink: Arc<K>, options: DrainerOptions) -> Self {
        Drainer {
            store,
            sink,
            options,
            metrics: Arc::default(),
        }
    }

    /// Shares the counters with other drainers (or a metrics endpoint).
    pub fn with_metrics(mut self, metrics: Arc<OutboxMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<OutboxMetrics> {
        &self.metrics
    }

    /// Drains until `shutdown` resolves; store errors are logged and
    /// retried after the poll interval.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_purge: Option<Millis> = None;
        loop {
            let now = now_ms();
            let purge_due = last_purge.is_none_or(|at| {
                now.saturating_sub(at) >= duration_ms(self.options.purge_interval)
            });
            if purge_due {
                last_purge = Some(now);
                if let Err(e) = self.purge(now).await {
                    tracing::warn!(error = %e, "outbox purge failed");
                }
            }
            let idle = match self.drain_once().await {
                Ok(report) => report.claimed == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox drain failed; retrying");
                    true
                }
            };
            if idle {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(self.options.poll_interval) => {}
                }
            } else if futures_util::poll!(&mut shutdown).is_ready() {
                return;
            }
        }
    }

    /// Deletes records sent more than the retention period before `now`.
    pub async fn purge(&self, now: Millis) -> Result<u64, OutboxError> {
        let cutoff = now.saturating_sub(duration_ms(self.options.retention));
        let purged = self.store.purge_sent(cutoff).await?;
        OutboxMetrics::add(&self.metrics.purged, purged);
        Ok(purged)
    }

    /// Claims one batch and drains it.
    pub async fn drain_once(&self) -> Result<BatchReport, OutboxError> {
        let now = now_ms();
        let claim = self
            .store
            .claim(self.options.batch_size, self.options.lease, now)
            .await?;
        let mut report = BatchReport {
            claimed: claim.records.len(),
            ..BatchReport::default()
        };
        if claim.records.is_empty() {
            return Ok(report);
        }
        OutboxMetrics::add(&self.metrics.claimed, claim.records.len() as u64);
        let token = claim.token.as_str();

        // Claimed more often than allowed: its lease expired each time (a
        // drainer crashed or stalled on it). Dead, rather than loop forever.
        let (exhausted, records): (Vec<_>, Vec<_>) = claim
            .records
            .into_iter()
            .partition(|r| r.attempts > self.options.max_attempts);
        for record in &exhausted {
            let error = format!(
                "claimed {} times without an outcome (the drainer crashed or stalled)",
                record.attempts
            );
            let done = self.fenced(
                &mut report,
                1,
                self.store.mark_dead(token, &record.id, &error),
            );
            report.dead += done.await?;
        }

        let attempts = self
            .publish_renewing(token, claim.lease_until, &records)
            .await;

        let mut sent_ids = Vec::new();
        let mut skipped_ids = Vec::new();
        let mut duplicates = 0;
        for (record, attempt) in records.iter().zip(&attempts) {
            match attempt {
                Attempt::Published(outcome) => {
                    duplicates += u64::from(outcome.duplicate);
                    sent_ids.push(record.id.clone());
                }
                Attempt::Skipped => skipped_ids.push(record.id.clone()),
                Attempt::Failed(_) => {}
            }
        }
        if !sent_ids.is_empty() {
            let accepted = self
                .fenced(
                    &mut report,
                    sent_ids.len() as u64,
                    self.store.mark_sent(token, &sent_ids, now_ms()),
                )
                .await?;
            report.sent = accepted;
            OutboxMetrics::add(&self.metrics.sent, accepted);
            OutboxMetrics::add(&self.metrics.duplicates, duplicates);
        }
        for (record, attempt) in records.iter().zip(&attempts) {
            let Attempt::Failed(failure) = attempt else {
                continue;
            };
            let error = failure.message.as_str();
            if failure.permanent || record.attempts >= self.options.max_attempts {
                tracing::warn!(
                    id = %record.id, %error, attempts = record.attempts,
                    permanent = failure.permanent, "outbox record is dead"
                );
                let done = self.fenced(
                    &mut report,
                    1,
                    self.store.mark_dead(token, &record.id, error),
                );
                report.dead += done.await?;
            } else {
                let delay = self.options.backoff.delay(record.attempts);
                let at = now_ms() + duration_ms(delay);
                tracing::debug!(id = %record.id, %error, ?delay, "outbox publish failed; will retry");
                let done = self.fenced(
                    &mut report,
                    1,
                    self.store.retry_later(token, &record.id, at, error),
                );
                report.retried += done.await?;
            }
        }
        if !skipped_ids.is_empty() {
            let done = self.fenced(
                &mut report,
                skipped_ids.len() as u64,
                self.store.release(token, &skipped_ids, now_ms()),
            );
            report.released = done.await?;
        }
        OutboxMetrics::add(&self.metrics.retries, report.retried);
        OutboxMetrics::add(&self.metrics.dead, report.dead);
        OutboxMetrics::add(&self.metrics.released, report.released);
        Ok(report)
    }

    /// Runs a fenced write that should change `expected` records and counts
    /// the ones it did not change as fence rejections.
    async fn fenced(
        &self,
        report: &mut BatchReport,
        expected: u64,
        write: impl Future<Output = Result<u64, OutboxError>>,
    ) -> Result<u64, OutboxError> {
        let changed = write.await?;
        let rejected = expected.saturating_sub(changed);
        if rejected > 0 {
            tracing::warn!(
                rejected,
                "outbox write rejected: this drainer lost its lease"
            );
            report.fence_rejections += rejected;
            OutboxMetrics::add(&self.metrics.fence_rejections, rejected);
        }
        Ok(changed)
    }

    /// Publishes `records` while renewing their lease every third of it.
    /// Once the lease is lost (or about to run out) nothing more is
    /// published: another drainer may own the records by then.
    async fn publish_renewing(
        &self,
        token: &str,
        lease_until: Millis,
        records: &[OutboxRecord],
    ) -> Vec<Attempt> {
        let deadline = AtomicU64::new(lease_until);
        let lost = AtomicBool::new(false);
        let publishing = self.publish_all(records, &deadline, &lost);
        tokio::pin!(publishing);
        let period = (self.options.lease / 3).max(Duration::from_millis(1));
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                attempts = &mut publishing => return attempts,
                _ = renewals.tick() => {
                    let until = now_ms() + duration_ms(self.options.lease);
                    match self.store.renew(token, until).await {
                        Ok(0) => {
                            if !lost.swap(true, Ordering::Relaxed) {
                                tracing::warn!("outbox lease lost while publishing; stopping this batch");
                                OutboxMetrics::add(&self.metrics.fence_rejections, 1);
                            }
                        }
                        Ok(_) => deadline.store(until, Ordering::Relaxed),
                        Err(e) => tracing::warn!(error = %e, "outbox lease renewal failed"),
                    }
                }
            }
        }
    }

    /// Same key: one after the other, in order, stopping at the first
    /// failure. Different keys (and keyless records): concurrently.
    async fn publish_all(
        &self,
        records: &[OutboxRecord],
        deadline: &AtomicU64,
        lost: &AtomicBool,
    ) -> Vec<Attempt> {
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        let mut lane_of_key: HashMap<&str, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            match &record.key {
                Some(key) => {
                    let lane = *lane_of_key.entry(key).or_insert_with(|| {
                        lanes.push(Vec::new());
                        lanes.len() - 1
                    });
                    lanes[lane].push(index);
                }
                None => lanes.push(vec![index]),
            }
        }
        let lane_results = join_all(lanes.into_iter().map(|lane| async move {
            let mut results = Vec::with_capacity(lane.len());
            let mut failed = false;
            for index in lane {
                let expired = now_ms() >= deadline.load(Ordering::Relaxed);
                let attempt = if failed || expired || lost.load(Ordering::Relaxed) {
                    Attempt::Skipped
                } else {
                    match self.sink.publish(&records[index]).await {
                        Ok(outcome) => Attempt::Published(outcome),
                        Err(e) => {
                            failed = true;
                            Attempt::Failed(e)
                        }
                    }
                };
                results.push((index, attempt));
            }
            results
        }))
        .await;
        let mut attempts: Vec<Option<Attempt>> = records.iter().map(|_| None).collect();
        for (index, attempt) in lane_results.into_iter().flatten() {
            attempts[index] = Some(attempt);
        }
        attempts
            .into_iter()
            .map(|a| a.unwrap_or(Attempt::Skipped))
            .collect()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

pub(crate) fn duration_ms(duration: Duration) -> Millis {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
