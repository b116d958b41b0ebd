//! The hub's performance targets (the hub issue), each measured with the
//! load and idle runs and checked. With a spawned hub every target gets a
//! fresh hub and store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::groups::{self, GroupsOptions};
use crate::idle::{self, IdleOptions};
use crate::load::{self, LoadOptions, LoadReport};
use crate::target::Hub;

/// Where each target's hub comes from.
#[derive(Debug, Clone)]
pub enum HubSource {
    /// `binary serve --listen 127.0.0.1:0 ARGS`, data under `data_base`.
    Spawn {
        binary: PathBuf,
        args: Vec<String>,
        data_base: PathBuf,
    },
    /// One running hub for every target.
    External {
        url: String,
        pid: Option<u32>,
        token: Option<String>,
    },
}

impl HubSource {
    pub(crate) async fn hub(&self) -> Result<Hub> {
        match self {
            HubSource::Spawn {
                binary,
                args,
                data_base,
            } => Hub::spawn(binary, args, data_base).await,
            HubSource::External { url, pid, token } => {
                Ok(Hub::external(url, *pid)?.with_token(token.clone()))
            }
        }
    }
}

/// Whether a measured value meets its target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub name: &'static str,
    pub measured: f64,
    pub unit: &'static str,
    /// `>= target` or `<= target`, see `at_least`.
    pub target: f64,
    pub at_least: bool,
    pub met: bool,
    /// The full report of the run.
    pub report: serde_json::Value,
    /// The numbers behind `measured`, for people (printed under the line).
    pub detail: Option<String>,
}

impl TargetResult {
    fn new(
        name: &'static str,
        measured: f64,
        unit: &'static str,
        target: f64,
        at_least: bool,
        report: impl Serialize,
    ) -> Result<TargetResult> {
        Ok(TargetResult {
            name,
            measured,
            unit,
            target,
            at_least,
            met: if at_least {
                measured >= target
            } else {
                measured <= target
            },
            report: serde_json::to_value(report)?,
            detail: None,
        })
    }

    fn with_detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn line(&self) -> String {
        let line = format!(
            "{:<44} {:>12.1} {:<14} target {} {:<10} {}",
            self.name,
            self.measured,
            self.unit,
            if self.at_least { ">=" } else { "<=" },
            self.target,
            if self.met { "met" } else { "NOT met" }
        );
        match &self.detail {
            Some(detail) => format!("{line}\n    {detail}"),
            None => line,
        }
    }
}

/// Names accepted by [`run`].
pub const ALL: [&str; 8] = [
    "publish",
    "consume",
    "fanout",
    "latency",
    "idle",
    "groups",
    "subscriptions",
    "group-memory",
];

/// Runs the named targets (all when empty), in order.
pub async fn run(source: &HubSource, names: &[String]) -> Result<Vec<TargetResult>> {
    let names: Vec<&str> = if names.is_empty() {
        ALL.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let mut results = Vec::new();
    for name in names {
        let hub = source.hub().await?;
        let result = match name {
            "publish" => Some(publish(&hub).await?),
            "consume" => Some(consume(&hub).await?),
            "fanout" => Some(fanout(&hub).await?),
            "latency" => Some(latency(&hub).await?),
            "idle" if hub.pid.is_some() => Some(idle(&hub).await?),
            "groups" => Some(many_groups(&hub).await?),
            "subscriptions" if hub.pid.is_some() => Some(many_subscriptions(&hub).await?),
            "subscriptions" => None,
            "group-memory" if hub.pid.is_some() => Some(group_memory(&hub).await?),
            "group-memory" => None,
            "idle" => None,
            other => anyhow::bail!("unknown target {other}; known: {}", ALL.join(", ")),
        };
        hub.stop().await;
        results.extend(result);
    }
    Ok(results)
}

/// Durable publish, PUBACK after sync: one connection, 256 in flight.
async fn publish(hub: &Hub) -> Result<TargetResult> {
    let options = LoadOptions {
        topic: "bench.publish".into(),
        count: Some(200_000),
        ..LoadOptions::default()
    };
    warm_up(hub).await?;
    let report = load::run(hub, &options).await?;
    TargetResult::new(
        "durable publish, PUBACK after sync",
        report.publish_rate,
        "events/s",
        50_000.0,
        true,
        report,
    )
}

/// A durable group reading a 200,000-event backlog, ACKing each.
async fn consume(hub: &Hub) -> Result<TargetResult> {
    let options = LoadOptions {
        topic: "bench.consume".into(),
        count: Some(200_000),
        subscribers: 1,
        groups: 1,
        backlog: true,
        ..LoadOptions::default()
    };
    let report = load::run(hub, &options).await?;
    TargetResult::new(
        "durable group consume with ACKs (backlog)",
        report.delivery_rate,
        "events/s",
        50_000.0,
        true,
        report,
    )
}

/// One publisher, 1,000 ephemeral subscribers.
async fn fanout(hub: &Hub) -> Result<TargetResult> {
    let options = LoadOptions {
        topic: "bench.fanout".into(),
        count: Some(2_000),
        subscribers: 1_000,
        payload_bytes: 128,
        in_flight: 64,
        ..LoadOptions::default()
    };
    let report = load::run(hub, &options).await?;
    TargetResult::new(
        "1 publisher -> 1,000 ephemeral subscribers",
        report.delivery_rate,
        "deliveries/s",
        300_000.0,
        true,
        report,
    )
}

/// p99 publish-to-deliver at a steady 5,000 events/s, ephemeral.
async fn latency(hub: &Hub) -> Result<TargetResult> {
    let options = LoadOptions {
        topic: "bench.latency".into(),
        count: None,
        duration: Some(Duration::from_secs(10)),
        rate: Some(5_000.0),
        subscribers: 1,
        payload_bytes: 64,
        ..LoadOptions::default()
    };
    let report = load::run(hub, &options).await?;
    let p99_ms = report
        .deliver_latency_us
        .map_or(f64::INFINITY, |p| p.p99 as f64 / 1000.0);
    TargetResult::new(
        "p99 publish-to-deliver at 5,000 events/s",
        p99_ms,
        "ms",
        2.0,
        false,
        report,
    )
}

/// Hub memory per idle authenticated connection at 10,000 connections.
async fn idle(hub: &Hub) -> Result<TargetResult> {
    let report = idle::run(hub, &IdleOptions::default()).await?;
    TargetResult::new(
        "memory per idle connection (10,000)",
        report.bytes_per_connection / 1024.0,
        "KiB",
        16.0,
        false,
        report,
    )
}

/// Publish cost — the hub's CPU per event — and latency (send to PUBACK),
/// paced at 2,000 events/s with one group consuming, with 10,000 more
/// groups whose members are connected (one connection each; 100 of them
/// wildcard patterns), against the same without them: a commit should cost
/// O(matching groups), not O(groups). Three rounds alternate the two (the
/// groups' connections closed in between); the medians of the CPU per
/// event are compared (the target), and of the p99s, so a burst of other
/// work on the machine does not decide the result alone.
async fn many_groups(hub: &Hub) -> Result<TargetResult> {
    const ROUNDS: usize = 3;
    fn paced(topic: String) -> LoadOptions {
        LoadOptions {
            topic,
            count: None,
            duration: Some(Duration::from_secs(8)),
            rate: Some(2_000.0),
            subscribers: 1,
            groups: 1,
            in_flight: 64,
            ..LoadOptions::default()
        }
    }
    fn ms(report: &LoadReport, pick: fn(&crate::report::Percentiles) -> u64) -> f64 {
        report
            .publish_latency_us
            .as_ref()
            .map_or(f64::INFINITY, |p| pick(p) as f64 / 1000.0)
    }
    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }
    fn cpu_us(report: &LoadReport) -> f64 {
        report.hub.as_ref().map_or(f64::INFINITY, |u| {
            u.cpu_seconds * 1e6 / report.published.max(1) as f64
        })
    }
    warm_up(hub).await?;
    let mut one = Vec::new();
    let mut many = Vec::new();
    let mut opened = Vec::new();
    for round in 0..ROUNDS {
        one.push(load::run(hub, &paced(format!("bench.one{round}"))).await?);
        let (open, report) = groups::open(hub, &GroupsOptions::default()).await?;
        opened.push(report);
        many.push(load::run(hub, &paced(format!("bench.many{round}"))).await?);
        drop(open);
        // Let the hub see the members go.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let first = opened[0].clone();
    let p99 = |runs: &[LoadReport]| median(runs.iter().map(|r| ms(r, |p| p.p99)).collect());
    let p50 = |runs: &[LoadReport]| median(runs.iter().map(|r| ms(r, |p| p.p50)).collect());
    let each = |runs: &[LoadReport]| {
        runs.iter()
            .map(|r| format!("{:.2}", ms(r, |p| p.p99)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let cpu = |runs: &[LoadReport]| median(runs.iter().map(cpu_us).collect());
    let cpus = |runs: &[LoadReport]| {
        runs.iter()
            .map(|r| format!("{:.1}", cpu_us(r)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ratio = cpu(&many) / cpu(&one);
    let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let detail = format!(
        "at 2,000 events/s, median of {ROUNDS} rounds: 1 group: hub CPU {:.1} us per event \
         (runs {}), send to PUBACK p50 {:.2} ms p99 {:.2} ms (p99s {}); with {} more groups on \
         {} connections: CPU {:.1} us per event (runs {}), p50 {:.2} ms p99 {:.2} ms (p99s {}), \
         p99 ratio {:.2}; hub RSS with them (first round) {:.1} -> {:.1} MiB ({:.0} bytes per \
         group with its member connection)",
        cpu(&one),
        cpus(&one),
        p50(&one),
        p99(&one),
        each(&one),
        first.groups,
        first.connections,
        cpu(&many),
        cpus(&many),
        p50(&many),
        p99(&many),
        each(&many),
        p99(&many) / p99(&one),
        mib(first.rss_kib_before),
        mib(first.rss_kib_after),
        first.bytes_per_group.unwrap_or(f64::NAN),
    );
    #[derive(Serialize)]
    struct Report {
        one_group_cpu_us_per_event: f64,
        many_groups_cpu_us_per_event: f64,
        one_group_p99_ms: f64,
        many_groups_p99_ms: f64,
        one_group: Vec<LoadReport>,
        many_groups: Vec<LoadReport>,
        opened: Vec<groups::GroupsReport>,
    }
    TargetResult::new(
        "publish CPU per event, 10,000 groups vs 1 group",
        ratio,
        "x",
        2.0,
        false,
        Report {
            one_group_cpu_us_per_event: cpu(&one),
            many_groups_cpu_us_per_event: cpu(&many),
            one_group_p99_ms: p99(&one),
            many_groups_p99_ms: p99(&many),
            one_group: one,
            many_groups: many,
            opened,
        },
    )
    .map(|result| result.with_detail(detail))
}

/// Publish cost — the hub's CPU per event, publish → live delivery to one
/// subscriber at a steady 5,000 events/s — with 10,000 more live
/// subscriptions (distinct exact topics plus 100 wildcard patterns, 100 per
/// connection), none of which the traffic matches, against the same
/// without them: the fan-out should cost one hash lookup per topic, not a
/// walk over every subscription. Three rounds alternate the two (the
/// subscriptions' connections closed in between); the medians of the CPU
/// per event are compared.
async fn many_subscriptions(hub: &Hub) -> Result<TargetResult> {
    const ROUNDS: usize = 3;
    fn paced(topic: String) -> LoadOptions {
        LoadOptions {
            topic,
            count: None,
            duration: Some(Duration::from_secs(6)),
            rate: Some(5_000.0),
            subscribers: 1,
            ..LoadOptions::default()
        }
    }
    fn cpu_us(report: &LoadReport) -> f64 {
        report.hub.as_ref().map_or(f64::INFINITY, |u| {
            u.cpu_seconds * 1e6 / report.published.max(1) as f64
        })
    }
    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }
    warm_up(hub).await?;
    let options = GroupsOptions {
        prefix: "subs".to_owned(),
        exact: 10_000,
        wildcard: 100,
        groups_per_connection: 100,
        live: true,
    };
    let (mut one, mut many, mut opened) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        one.push(load::run(hub, &paced(format!("bench.one{round}"))).await?);
        let (open, report) = groups::open(hub, &options).await?;
        opened.push(report);
        many.push(load::run(hub, &paced(format!("bench.many{round}"))).await?);
        drop(open);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let each = |runs: &[LoadReport]| {
        runs.iter()
            .map(|r| format!("{:.1}", cpu_us(r)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let p99 = |runs: &[LoadReport]| {
        median(
            runs.iter()
                .map(|r| {
                    r.deliver_latency_us
                        .map_or(f64::INFINITY, |p| p.p99 as f64 / 1000.0)
                })
                .collect(),
        )
    };
    let (cpu_one, cpu_many) = (
        median(one.iter().map(cpu_us).collect()),
        median(many.iter().map(cpu_us).collect()),
    );
    let detail = format!(
        "hub CPU per event at 5,000 events/s, median of {ROUNDS} rounds: 1 subscription \
         {cpu_one:.1} us (runs {}; p99 deliver {:.2} ms); with {} more subscriptions on {} \
         connections {cpu_many:.1} us (runs {}; p99 deliver {:.2} ms)",
        each(&one),
        p99(&one),
        opened[0].groups,
        opened[0].connections,
        each(&many),
        p99(&many),
    );
    #[derive(Serialize)]
    struct Report {
        one_subscription_cpu_us_per_event: f64,
        many_subscriptions_cpu_us_per_event: f64,
        one_subscription: Vec<LoadReport>,
        many_subscriptions: Vec<LoadReport>,
        opened: Vec<groups::GroupsReport>,
    }
    TargetResult::new(
        "publish CPU, 10,000 subscriptions vs 1",
        cpu_many / cpu_one,
        "x",
        1.2,
        false,
        Report {
            one_subscription_cpu_us_per_event: cpu_one,
            many_subscriptions_cpu_us_per_event: cpu_many,
            one_subscription: one,
            many_subscriptions: many,
            opened,
        },
    )
    .map(|result| result.with_detail(detail))
}

/// Hub memory per durable group: 10,000 groups with connected members,
/// 100 groups per connection (so connections add little).
async fn group_memory(hub: &Hub) -> Result<TargetResult> {
    warm_up(hub).await?;
    let options = GroupsOptions {
        prefix: "memory".to_owned(),
        exact: 10_000,
        wildcard: 0,
        groups_per_connection: 100,
        live: false,
    };
    let (open, report) = groups::open(hub, &options).await?;
    drop(open);
    let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let detail = format!(
        "hub RSS {:.1} -> {:.1} MiB for {} groups on {} connections (opened in {:.1} s)",
        mib(report.rss_kib_before),
        mib(report.rss_kib_after),
        report.groups,
        report.connections,
        report.setup_seconds
    );
    TargetResult::new(
        "memory per group (10,000, 100 per connection)",
        report.bytes_per_group.unwrap_or(f64::INFINITY) / 1024.0,
        "KiB",
        4.0,
        false,
        report,
    )
    .map(|result| result.with_detail(detail))
}

/// Unmeasured traffic first: connections, caches, file growth.
async fn warm_up(hub: &Hub) -> Result<()> {
    let options = LoadOptions {
        topic: "bench.warmup".into(),
        count: Some(20_000),
        ..LoadOptions::default()
    };
    load::run(hub, &options).await.map(drop)
}
