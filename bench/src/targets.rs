//! The hub's performance targets (the hub issue), each measured with the
//! load and idle runs and checked. With a spawned hub every target gets a
//! fresh hub and store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::idle::{self, IdleOptions};
use crate::load::{self, LoadOptions};
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
    async fn hub(&self) -> Result<Hub> {
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
        })
    }

    pub fn line(&self) -> String {
        format!(
            "{:<44} {:>12.1} {:<14} target {} {:<10} {}",
            self.name,
            self.measured,
            self.unit,
            if self.at_least { ">=" } else { "<=" },
            self.target,
            if self.met { "met" } else { "NOT met" }
        )
    }
}

/// Names accepted by [`run`].
pub const ALL: [&str; 5] = ["publish", "consume", "fanout", "latency", "idle"];

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

/// Unmeasured traffic first: connections, caches, file growth.
async fn warm_up(hub: &Hub) -> Result<()> {
    let options = LoadOptions {
        topic: "bench.warmup".into(),
        count: Some(20_000),
        ..LoadOptions::default()
    };
    load::run(hub, &options).await.map(drop)
}
