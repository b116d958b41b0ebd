//! The hub drains configured MongoDB outbox collections into its own log
//! (`[[outbox]]` / `--drain-outbox`), so an application in any language
//! only inserts outbox documents in its transactions.
//!
//! Each collection gets one [`Drainer`] from `promhub-outbox` (claims,
//! fencing, backoff, dead records, per-key order) whose sink commits
//! through the hub's [`StoreWriter`], exactly as a `PUBLISH` with
//! `opts.id` = the record's `_id`: the same de-duplication, the same
//! durability before the record is marked sent. A collection may be limited
//! to topics with `publish_scopes` (the scope syntax of tokens); a record
//! with a bad or disallowed topic, or a payload that is not JSON, is dead at
//! once with the reason (permanent), a failing store is retried.
//!
//! One hub at a time drains a collection: several hubs configured with the
//! same collection each run its drainer only while they hold the
//! collection's [`DrainLease`] (renewed every third of `lease_secs`). A hub
//! that stops releases it, so another takes over at once; one that dies is
//! replaced after the lease lapses. A batch still in flight when its hub
//! loses the lease overlaps the new holder's first claims; the claims'
//! fencing covers that as it covers any two drainers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use promhub_core::frames::to_payload;
use promhub_core::{Action, Policy, Topic};
use promhub_outbox::mongo::{DrainLease, MongoOutbox};
use promhub_outbox::{
    Drainer, DrainerOptions, OutboxError, OutboxMetrics, OutboxRecord, OutboxSink, PublishOutcome,
    SinkError,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::OutboxDrainConfig;
use crate::error::HubError;
use crate::metrics::{Metrics, OutboxGauges};
use crate::store::writer::StoreWriter;
use crate::store::{Appended, NewEvent};

/// Publishes outbox records into the hub's own log.
#[derive(Debug, Clone)]
pub struct LogSink {
    writer: StoreWriter,
    /// The topics this outbox may publish to (`None`: any).
    allowed: Option<Arc<Policy>>,
}

impl LogSink {
    pub fn new(writer: StoreWriter) -> Self {
        LogSink {
            writer,
            allowed: None,
        }
    }

    /// Only topics `policy` allows to publish are accepted.
    pub fn limited_to(mut self, policy: Policy) -> Self {
        self.allowed = Some(Arc::new(policy));
        self
    }
}

#[async_trait]
impl OutboxSink for LogSink {
    async fn publish(&self, record: &OutboxRecord) -> Result<PublishOutcome, SinkError> {
        let topic = Topic::parse(&record.topic)
            .map_err(|e| SinkError::permanent(format!("bad topic {:?}: {e}", record.topic)))?;
        if let Some(policy) = &self.allowed
            && !policy.allows(Action::Publish, &topic, None)
        {
            return Err(SinkError::permanent(format!(
                "topic {topic} is not allowed by this outbox's publish_scopes"
            )));
        }
        let payload = to_payload(&record.payload)
            .map_err(|e| SinkError::permanent(format!("payload is not JSON: {e}")))?;
        let event = NewEvent {
            id: record.id.clone(),
            client_id: true,
            topic,
            ts: record.created_at,
            key: record.key.clone(),
            payload,
            headers: record.headers.clone(),
            tags: None,
            caused_by: None,
            sid: None,
        };
        match self.writer.append(event).await {
            Ok(Appended::Stored { seq, .. }) => Ok(PublishOutcome {
                seq,
                duplicate: false,
            }),
            Ok(Appended::Duplicate { seq, .. }) => Ok(PublishOutcome {
                seq,
                duplicate: true,
            }),
            Err(e) => Err(SinkError::transient(format!("the hub's store failed: {e}"))),
        }
    }
}

/// Opens every configured outbox (failing the start with the URI when one
/// cannot be reached) and starts its drainer; they stop when `shutdown`
/// turns true. `holder` names this hub in the drain leases (its hub id,
/// unique per process).
pub async fn spawn_drainers(
    outboxes: &[OutboxDrainConfig],
    writer: &StoreWriter,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
    holder: &str,
) -> Result<Vec<JoinHandle<()>>, HubError> {
    let mut drainers = Vec::with_capacity(outboxes.len());
    for config in outboxes {
        let location = config.location().map_err(HubError::Config)?;
        let failed = |source: OutboxError| HubError::Outbox {
            uri: config.uri.clone(),
            source,
        };
        let client = mongodb::Client::with_uri_str(&location.client_uri)
            .await
            .map_err(|e| failed(e.into()))?;
        let retention = Duration::from_secs(config.retention_secs);
        let store = MongoOutbox::open_for_draining(
            &client.database(&location.database),
            &location.collection,
            retention,
        )
        .await
        .map_err(failed)?;
        let options = DrainerOptions {
            batch_size: config.batch_size,
            max_attempts: config.max_attempts,
            retention,
            ..DrainerOptions::default()
        };
        let store = Arc::new(store);
        let mut sink = LogSink::new(writer.clone());
        if let Some(policy) = config.publish_policy().map_err(HubError::Config)? {
            sink = sink.limited_to(policy);
        }
        let drainer = Drainer::new(Arc::clone(&store), Arc::new(sink), options);
        let gauges = Arc::new(Mutex::new(OutboxGauges::default()));
        let source = format!("{}.{}", location.database, location.collection);
        if let Err(error) = metrics.register_outbox_source(source, {
            let gauges = Arc::clone(&gauges);
            Arc::new(move || *gauges.lock().unwrap_or_else(PoisonError::into_inner))
        }) {
            tracing::warn!(%error, collection = %location.collection, "outbox not in /metrics");
        }
        drainers.push(tokio::spawn(refresh_gauges(
            Arc::clone(drainer.metrics()),
            store,
            gauges,
            shutdown.clone(),
        )));
        let lease = DrainLease::new(
            &client.database(&location.database),
            &location.collection,
            holder,
            Duration::from_secs(config.lease_secs),
        );
        drainers.push(tokio::spawn(drain_while_leased(
            drainer,
            lease,
            location.collection.clone(),
            shutdown.clone(),
        )));
    }
    Ok(drainers)
}

/// Runs `drainer` whenever this hub holds `lease`, until shutdown; then
/// releases the lease so another hub takes the collection over at once.
async fn drain_while_leased(
    drainer: Drainer<MongoOutbox, LogSink>,
    lease: DrainLease,
    collection: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let renew_every = (lease.duration() / 3).max(Duration::from_millis(100));
    loop {
        // Wait for the lease (another hub may hold it).
        loop {
            match lease.acquire(crate::clock::now_ms()).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, %collection, "outbox drain lease: cannot take it")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(renew_every) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
        tracing::info!(%collection, holder = lease.holder(), "this hub drains the outbox collection into the log");
        let (lost_tx, mut lost) = watch::channel(false);
        let renewing = tokio::spawn(renew(
            lease.clone(),
            renew_every,
            lost_tx,
            collection.clone(),
        ));
        let mut stop = shutdown.clone();
        drainer
            .run(async {
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => {}
                    _ = lost.wait_for(|lost| *lost) => {}
                }
            })
            .await;
        renewing.abort();
        if *shutdown.borrow() {
            if let Err(error) = lease.release().await {
                tracing::warn!(%error, %collection, "outbox drain lease: cannot release it");
            }
            return;
        }
        tracing::warn!(%collection, "this hub lost the outbox drain lease; another hub drains the collection now");
    }
}

/// Renews `lease` every `period`; sets `lost` once another holder has it or
/// it ran out without a successful renewal (the store unreachable).
async fn renew(lease: DrainLease, period: Duration, lost: watch::Sender<bool>, collection: String) {
    let mut held_until = crate::clock::now_ms() + duration_ms(lease.duration());
    loop {
        tokio::time::sleep(period).await;
        let now = crate::clock::now_ms();
        match lease.acquire(now).await {
            Ok(true) => held_until = now + duration_ms(lease.duration()),
            Ok(false) => break,
            Err(error) => {
                tracing::warn!(%error, %collection, "outbox drain lease: renewal failed");
                if crate::clock::now_ms() >= held_until {
                    break;
                }
            }
        }
    }
    let _ = lost.send(true);
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Keeps an outbox's gauges for /metrics fresh: a scrape must not wait for
/// the store, so the backlog is read here once per interval.
async fn refresh_gauges(
    counters: Arc<OutboxMetrics>,
    store: Arc<MongoOutbox>,
    gauges: Arc<Mutex<OutboxGauges>>,
    mut shutdown: watch::Receiver<bool>,
) {
    const REFRESH: Duration = Duration::from_secs(1);
    loop {
        match counters.snapshot(&*store, crate::clock::now_ms()).await {
            Ok(snapshot) => {
                *gauges.lock().unwrap_or_else(PoisonError::into_inner) = OutboxGauges {
                    backlog: snapshot.backlog,
                    oldest_pending_age_secs: snapshot
                        .oldest_unsent_age_ms
                        .map_or(0.0, |ms| Duration::from_millis(ms).as_secs_f64()),
                    dead: snapshot.dead_now,
                };
            }
            Err(error) => tracing::debug!(%error, "reading the outbox backlog failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
