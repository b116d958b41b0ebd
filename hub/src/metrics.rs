//! The hub's Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! Hot paths (connection reader and writer, broker, store writer) hold
//! clones of plain counters: each is one shared atomic, so counting costs a
//! relaxed add and no lookup. Every label set is bounded: frame ops and
//! delivery kinds are fixed lists; per-group lag is exported for at most
//! [`MAX_GROUP_SERIES`] groups (the most lagging; group names come from
//! clients) and outbox sources are registered by code, at most
//! [`MAX_OUTBOX_SOURCES`]. No label ever carries a topic.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::cluster::HubSnapshot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::limits::{BackpressureSnapshot, COUNTERS};
use crate::refusals::Refusal;

/// Per-group lag series exported at most (the groups with the most lag).
pub const MAX_GROUP_SERIES: usize = 50;
/// Outbox sources that may register at most.
pub const MAX_OUTBOX_SOURCES: usize = 16;

/// Ops of client frames (`frames_in`); anything else counts as `invalid`.
const IN_OPS: [&str; 10] = [
    "auth",
    "publish",
    "subscribe",
    "unsubscribe",
    "ack",
    "nack",
    "working",
    "ping",
    "pong",
    "invalid",
];
/// Ops of hub frames (`frames_out`); anything else counts as `other`.
const OUT_OPS: [&str; 10] = [
    "ok", "err", "puback", "suback", "unsuback", "event", "ping", "pong", "expiring", "other",
];

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    pattern: String,
    group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubCountLabels {
    hub: String,
    what: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: Cow<'static, str>,
}

/// One counter per op of a fixed list, resolved once.
#[derive(Debug, Clone)]
pub struct OpCounters {
    counters: Vec<(&'static str, Counter)>,
}

impl OpCounters {
    fn new(family: &Family<OpLabel, Counter>, ops: &[&'static str]) -> Self {
        OpCounters {
            counters: ops
                .iter()
                .map(|&op| (op, family.get_or_create_owned(&OpLabel { op })))
                .collect(),
        }
    }

    /// Counts one frame of `op` (the last entry when `op` is not listed).
    pub fn inc(&self, op: &str) {
        let counter = self
            .counters
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(op))
            .or(self.counters.last())
            .map(|(_, c)| c);
        if let Some(counter) = counter {
            counter.inc();
        }
    }
}

/// What the broker's groups count (one set shared by every group).
#[derive(Debug, Clone, Default)]
pub struct GroupCounters {
    pub deliveries: Counter,
    pub redeliveries: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    pub dead_letters: Counter,
    pub replays: Counter,
}

/// What an outbox drainer reports at each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxGauges {
    /// Records waiting to be published (pending or claimed).
    pub backlog: u64,
    /// Age of the oldest record waiting, in seconds (0 when none).
    pub oldest_pending_age_secs: f64,
    /// Records given up on (`dead`).
    pub dead: u64,
}

/// Reads an outbox's gauges; called once per scrape, so it must be cheap
/// and must not block (report the drainer's last known numbers).
pub type OutboxSource = Arc<dyn Fn() -> OutboxGauges + Send + Sync>;

/// A group's lag, as the ops API computed it for a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupLag {
    pub pattern: String,
    pub group: String,
    pub lag_events: u64,
    pub lag_secs: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    #[error("at most {MAX_OUTBOX_SOURCES} outbox sources can be registered")]
    TooManyOutboxSources,
    #[error("an outbox source named {0:?} is already registered")]
    DuplicateOutboxSource(String),
}

/// Every metric of one hub.
pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub frames_in: OpCounters,
    pub frames_out: OpCounters,
    pub publishes: Counter,
    pub duplicate_publishes: Counter,
    pub live_deliveries: Counter,
    pub groups: GroupCounters,
    pub store_commit_seconds: Histogram,
    /// Events removed by the retention policy.
    pub retention_removed: Counter,
    groups_known: Gauge,
    group_lag_events: Family<GroupLabels, Gauge>,
    group_lag_seconds: Family<GroupLabels, FloatGauge>,
    outbox_sources: Mutex<Vec<(Cow<'static, str>, OutboxSource)>>,
    outbox_backlog: Family<SourceLabel, Gauge>,
    outbox_oldest_age: Family<SourceLabel, FloatGauge>,
    outbox_dead: Family<SourceLabel, Gauge>,
    started: Instant,
    uptime: FloatGauge,
    backpressure: BackpressureMetrics,
    cluster_hubs: Gauge,
    cluster_hub_counts: Family<HubCountLabels, Gauge>,
}

/// Rate limiting and slow consumers (counted in `limits::COUNTERS`, moved
/// into these counters at each scrape).
struct BackpressureMetrics {
    /// `refusals_total{what}`, one series per [`Refusal`].
    refusals: Vec<(Refusal, Counter)>,
    refusals_exported: Mutex<Vec<u64>>,
    rate_limited: Counter,
    rate_limit_closes: Counter,
    slow_consumer_closes: Counter,
    group_lagging: Counter,
    exported: Mutex<BackpressureSnapshot>,
}

impl BackpressureMetrics {
    fn register(registry: &mut Registry) -> Self {
        let refusals_family = Family::<WhatLabel, Counter>::default();
        registry.register(
            "refusals",
            "What the hub refused, cut or made wait to protect itself (semantics.md §4a), by what",
            refusals_family.clone(),
        );
        let metrics = BackpressureMetrics {
            refusals: Refusal::ALL
                .iter()
                .map(|&what| {
                    let label = WhatLabel {
                        what: what.as_str(),
                    };
                    (what, refusals_family.get_or_create_owned(&label))
                })
                .collect(),
            refusals_exported: Mutex::new(vec![0; Refusal::ALL.len()]),
            rate_limited: Counter::default(),
            rate_limit_closes: Counter::default(),
            slow_consumer_closes: Counter::default(),
            group_lagging: Counter::default(),
            exported: Mutex::new(BackpressureSnapshot::default()),
        };
        registry.register(
            "rate_limited",
            "PUBLISHes refused with rate_limited (publish quotas)",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "rate_limit_closes",
            "Connections closed with 4029 for publishing on while refused",
            metrics.rate_limit_closes.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Connections closed with 4009: live deliveries overflowed their buffer",
            metrics.slow_consumer_closes.clone(),
        );
        registry.register(
            "group_lagging",
            "Times a group delivery waited on a member's unacknowledged-bytes bound",
            metrics.group_lagging.clone(),
        );
        metrics
    }

    /// Adds what the process-wide counters gained since the last scrape.
    fn update(&self) {
        let now = COUNTERS.snapshot();
        let mut exported = self
            .exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gained = |now: u64, before: u64| now.saturating_sub(before);
        self.rate_limited
            .inc_by(gained(now.rate_limited, exported.rate_limited));
        self.rate_limit_closes
            .inc_by(gained(now.rate_limit_closes, exported.rate_limit_closes));
        self.slow_consumer_closes.inc_by(gained(
            now.slow_consumer_closes,
            exported.slow_consumer_closes,
        ));
        self.group_lagging
            .inc_by(gained(now.group_lagging, exported.group_lagging));
        *exported = now;
        let mut refusals_exported = self
            .refusals_exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((what, counter), before) in self.refusals.iter().zip(refusals_exported.iter_mut()) {
            let now = crate::refusals::total(*what);
            counter.inc_by(gained(now, *before));
            *before = now;
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("promhub");
        let connections_open = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections_open.clone(),
        );
        let connections_total = Counter::default();
        registry.register(
            "connections_accepted",
            "WebSocket connections accepted",
            connections_total.clone(),
        );
        let frames_in_family = Family::<OpLabel, Counter>::default();
        registry.register(
            "frames_in",
            "Frames received from clients, by op",
            frames_in_family.clone(),
        );
        let frames_out_family = Family::<OpLabel, Counter>::default();
        registry.register(
            "frames_out",
            "Frames queued for clients, by op",
            frames_out_family.clone(),
        );
        let publishes = Counter::default();
        registry.register("publishes", "Events stored", publishes.clone());
        let duplicate_publishes = Counter::default();
        registry.register(
            "duplicate_publishes",
            "Publishes answered as duplicates (opts.id seen within the window)",
            duplicate_publishes.clone(),
        );
        let deliveries = Family::<KindLabel, Counter>::default();
        registry.register(
            "deliveries",
            "EVENT frames queued for subscribers (kind: group or live)",
            deliveries.clone(),
        );
        let live_deliveries = deliveries.get_or_create_owned(&KindLabel { kind: "live" });
        let groups = GroupCounters {
            deliveries: deliveries.get_or_create_owned(&KindLabel { kind: "group" }),
            ..GroupCounters::default()
        };
        registry.register(
            "redeliveries",
            "Group deliveries with attempt > 1",
            groups.redeliveries.clone(),
        );
        registry.register("acks", "ACKs of inflight group events", groups.acks.clone());
        registry.register(
            "nacks",
            "NACKs of inflight group events",
            groups.nacks.clone(),
        );
        registry.register(
            "dead_letters",
            "Events dead-lettered by a group",
            groups.dead_letters.clone(),
        );
        registry.register(
            "dead_letter_replays",
            "Dead letters replayed into their group",
            groups.replays.clone(),
        );
        // 100 µs .. ~3.3 s.
        let store_commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "store_commit_seconds",
            "Time of one group commit (applied and synced)",
            store_commit_seconds.clone(),
        );
        let retention_removed = Counter::default();
        registry.register(
            "retention_removed_events",
            "Events removed by the retention policy",
            retention_removed.clone(),
        );
        let groups_known = Gauge::default();
        registry.register(
            "groups",
            "Durable consumer groups known to the store",
            groups_known.clone(),
        );
        let group_lag_events = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "group_lag_events",
            "Events matching a group's pattern after its cursor and not done (the most lagging groups only)",
            group_lag_events.clone(),
        );
        let group_lag_seconds = Family::<GroupLabels, FloatGauge>::default();
        registry.register(
            "group_lag_seconds",
            "Age of a group's oldest unacknowledged event (the most lagging groups only)",
            group_lag_seconds.clone(),
        );
        let outbox_backlog = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "outbox_backlog",
            "Outbox records waiting to be published, per registered source",
            outbox_backlog.clone(),
        );
        let outbox_oldest_age = Family::<SourceLabel, FloatGauge>::default();
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox record waiting, per registered source",
            outbox_oldest_age.clone(),
        );
        let outbox_dead = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "outbox_dead",
            "Outbox records given up on, per registered source",
            outbox_dead.clone(),
        );
        let cluster_hubs = Gauge::default();
        registry.register(
            "cluster_hubs",
            "Live hubs on this hub's database, this one included (1 on the embedded store)",
            cluster_hubs.clone(),
        );
        let cluster_hub_counts = Family::<HubCountLabels, Gauge>::default();
        registry.register(
            "cluster_hub_counts",
            "Each live hub's counters (what: connections open, publishes, live_deliveries, \
             group_deliveries, acks, nacks, redeliveries, dead_letters), the others' as of \
             their last registry renewal; sum by (what) for the cluster",
            cluster_hub_counts.clone(),
        );
        let backpressure = BackpressureMetrics::register(&mut registry);
        let uptime = FloatGauge::default();
        registry.register(
            "uptime_seconds",
            "Seconds since the hub started",
            uptime.clone(),
        );
        Metrics {
            frames_in: OpCounters::new(&frames_in_family, &IN_OPS),
            frames_out: OpCounters::new(&frames_out_family, &OUT_OPS),
            registry,
            connections_open,
            connections_total,
            publishes,
            duplicate_publishes,
            live_deliveries,
            groups,
            store_commit_seconds,
            retention_removed,
            groups_known,
            group_lag_events,
            group_lag_seconds,
            outbox_sources: Mutex::new(Vec::new()),
            outbox_backlog,
            outbox_oldest_age,
            cluster_hubs,
            cluster_hub_counts,
            outbox_dead,
            started: Instant::now(),
            uptime,
            backpressure,
        }
    }

    /// Registers an outbox whose backlog is exported as
    /// `promhub_outbox_*{source="NAME"}`. `name` is chosen by code (a
    /// drainer's configured name), never by a client.
    pub fn register_outbox_source(
        &self,
        name: impl Into<Cow<'static, str>>,
        source: OutboxSource,
    ) -> Result<(), MetricsError> {
        let name = name.into();
        let mut sources = self
            .outbox_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sources.iter().any(|(n, _)| *n == name) {
            return Err(MetricsError::DuplicateOutboxSource(name.into_owned()));
        }
        if sources.len() >= MAX_OUTBOX_SOURCES {
            return Err(MetricsError::TooManyOutboxSources);
        }
        sources.push((name, source));
        Ok(())
    }

    /// The metrics in OpenMetrics text format (which Prometheus scrapes),
    /// with the per-group lag given (the caller computed it from the
    /// store) and every outbox source read now.
    /// `hubs`: every live hub's counters by hub id when several share the
    /// database (this one's included), empty otherwise.
    pub fn encode(
        &self,
        groups_known: usize,
        mut lags: Vec<GroupLag>,
        hubs: &[(String, HubSnapshot)],
    ) -> String {
        self.cluster_hubs
            .set(i64::try_from(hubs.len().max(1)).unwrap_or(i64::MAX));
        self.cluster_hub_counts.clear();
        for (hub, snapshot) in hubs {
            for (what, value) in snapshot.counts() {
                self.cluster_hub_counts
                    .get_or_create(&HubCountLabels {
                        hub: hub.clone(),
                        what,
                    })
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        self.groups_known
            .set(i64::try_from(groups_known).unwrap_or(i64::MAX));
        self.uptime.set(self.started.elapsed().as_secs_f64());
        self.backpressure.update();
        lags.sort_by(|a, b| {
            b.lag_events
                .cmp(&a.lag_events)
                .then(b.lag_secs.total_cmp(&a.lag_secs))
        });
        lags.truncate(MAX_GROUP_SERIES);
        self.group_lag_events.clear();
        self.group_lag_seconds.clear();
        for lag in lags {
            let labels = GroupLabels {
                pattern: lag.pattern,
                group: lag.group,
            };
            self.group_lag_events
                .get_or_create(&labels)
                .set(i64::try_from(lag.lag_events).unwrap_or(i64::MAX));
            self.group_lag_seconds
                .get_or_create(&labels)
                .set(lag.lag_secs);
        }
        let sources: Vec<(Cow<'static, str>, OutboxSource)> = self
            .outbox_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (name, source) in sources {
            let gauges = source();
            let label = SourceLabel { source: name };
            self.outbox_backlog
                .get_or_create(&label)
                .set(i64::try_from(gauges.backlog).unwrap_or(i64::MAX));
            self.outbox_oldest_age
                .get_or_create(&label)
                .set(gauges.oldest_pending_age_secs);
            self.outbox_dead
                .get_or_create(&label)
                .set(i64::try_from(gauges.dead).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing into a String cannot fail; keep the scrape usable.
            tracing::error!(error = %e, "encoding metrics failed");
        }
        text
    }
}

/// The op of an encoded hub frame (`{"op":"EVENT",...`: serde writes the
/// tag first), for counting what a connection's writer sends without
/// decoding it.
pub fn encoded_op(frame: &str) -> &str {
    frame
        .strip_prefix("{\"op\":\"")
        .and_then(|rest| rest.get(..rest.find('"')?))
        .unwrap_or("other")
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, line_start: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
    }

    #[test]
    fn counters_and_ops_are_exported_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.frames_in.inc("publish");
        metrics.frames_in.inc("publish");
        metrics.frames_in.inc("no-such-op");
        metrics.frames_out.inc("event");
        metrics.publishes.inc();
        metrics.store_commit_seconds.observe(0.002);
        let text = metrics.encode(0, Vec::new(), &[]);
        assert_eq!(
            sample(&text, "promhub_frames_in_total{op=\"publish\"}"),
            Some("2")
        );
        assert_eq!(
            sample(&text, "promhub_frames_in_total{op=\"invalid\"}"),
            Some("1")
        );
        assert_eq!(
            sample(&text, "promhub_frames_out_total{op=\"event\"}"),
            Some("1")
        );
        assert_eq!(sample(&text, "promhub_publishes_total "), Some("1"));
        assert_eq!(
            sample(&text, "promhub_store_commit_seconds_count"),
            Some("1")
        );
        assert!(!text.contains("no-such-op"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn encoded_op_reads_the_tag() {
        assert_eq!(encoded_op(r#"{"op":"EVENT","topic":"a"}"#), "EVENT");
        assert_eq!(encoded_op(r#"{"op":"PUBACK"}"#), "PUBACK");
        assert_eq!(encoded_op(r#"{"x":1}"#), "other");
        assert_eq!(encoded_op(r#"{"op":"unterminated"#), "other");
    }

    #[test]
    fn group_lag_keeps_only_the_most_lagging_groups() {
        let metrics = Metrics::new();
        let lags = (0..MAX_GROUP_SERIES as u64 + 10)
            .map(|i| GroupLag {
                pattern: "jobs.*".into(),
                group: format!("g{i}"),
                lag_events: i,
                lag_secs: i as f64 / 10.0,
            })
            .collect();
        let text = metrics.encode(60, lags, &[]);
        let series = text
            .lines()
            .filter(|l| l.starts_with("promhub_group_lag_events{"))
            .count();
        assert_eq!(series, MAX_GROUP_SERIES);
        assert!(text.contains("group=\"g59\""));
        assert!(!text.contains("group=\"g0\""), "least lagging dropped");
        assert_eq!(sample(&text, "promhub_groups "), Some("60"));
        // The next scrape replaces the set instead of accumulating.
        let text = metrics.encode(1, Vec::new(), &[]);
        assert!(!text.contains("promhub_group_lag_events{"));
    }

    #[test]
    fn outbox_sources_are_read_at_each_scrape_and_bounded() {
        let metrics = Metrics::new();
        let backlog = Arc::new(AtomicU64::new(7));
        let seen = Arc::clone(&backlog);
        metrics
            .register_outbox_source(
                "orders",
                Arc::new(move || OutboxGauges {
                    backlog: seen.load(std::sync::atomic::Ordering::Relaxed),
                    oldest_pending_age_secs: 1.5,
                    dead: 2,
                }),
            )
            .unwrap();
        let text = metrics.encode(0, Vec::new(), &[]);
        assert_eq!(
            sample(&text, "promhub_outbox_backlog{source=\"orders\"}"),
            Some("7")
        );
        assert_eq!(
            sample(
                &text,
                "promhub_outbox_oldest_pending_age_seconds{source=\"orders\"}"
            ),
            Some("1.5")
        );
        assert_eq!(
            sample(&text, "promhub_outbox_dead{source=\"orders\"}"),
            Some("2")
        );
        backlog.store(0, std::sync::atomic::Ordering::Relaxed);
        let text = metrics.encode(0, Vec::new(), &[]);
        assert_eq!(
            sample(&text, "promhub_outbox_backlog{source=\"orders\"}"),
            Some("0")
        );
        assert_eq!(
            metrics.register_outbox_source("orders", Arc::new(OutboxGauges::default)),
            Err(MetricsError::DuplicateOutboxSource("orders".into()))
        );
        for i in 1..MAX_OUTBOX_SOURCES {
            metrics
                .register_outbox_source(format!("s{i}"), Arc::new(OutboxGauges::default))
                .unwrap();
        }
        assert_eq!(
            metrics.register_outbox_source("one-too-many", Arc::new(OutboxGauges::default)),
            Err(MetricsError::TooManyOutboxSources)
        );
    }
}
