//! The hub's scenarios, run against the hub and, with `--compare nats`,
//! against NATS JetStream ([`crate::nats`]) in the same run: each run of
//! each scenario starts a fresh server with a fresh store, the systems
//! alternate, and the medians of the runs are reported next to every run's
//! value and the machine's load average.
//!
//! | scenario | what | promhub | JetStream |
//! |---|---|---|---|
//! | `publish` | durable publish flat out, 1 connection, 256 in flight, 256 B | PUBACK after fsync | publish acks, default sync |
//! | `consume` | a 100,000-event backlog read with an ACK per event | durable group, `max_inflight` 1000 | durable pull consumer, explicit acks |
//! | `flat` | publish → live delivery flat out, 1 subscriber | ephemeral subscription | ordered consumer |
//! | `paced` | publish → live delivery at 5,000 events/s for 10 s | ephemeral subscription | ordered consumer |
//!
//! CPU per event is the server's user + system time (`/proc`) over the
//! measured phase divided by its events. With `paced`, the report also
//! gives the disk's floor ([`crate::disk_floor`]): the CPU of one commit's
//! append and `fdatasync` with no server, at one commit per 1-ms burst.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::disk_floor::{self, Floor, FloorOptions};
use crate::load::{self, LoadOptions};
use crate::proc_stats::Usage;
use crate::report::Percentiles;
use crate::targets::HubSource;

/// One scenario's shape; the same for every system.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub title: &'static str,
    /// Events to publish (flat out) or the backlog's size.
    pub count: u64,
    /// Paced: publish for this long at `rate`.
    #[serde(skip)]
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub payload_bytes: usize,
    pub in_flight: usize,
    /// Live subscribers (0 or 1).
    pub subscribers: usize,
    /// Publish first, then measure a durable group / pull consumer reading
    /// it with an ACK per event.
    pub backlog: bool,
}

/// Names accepted by [`run`], in order.
pub const ALL: [&str; 4] = ["publish", "consume", "flat", "paced"];

pub fn scenario(name: &str) -> Result<Scenario> {
    let base = Scenario {
        name: "publish",
        title: "durable publish, 1 connection, 256 in flight, 256 B",
        count: 200_000,
        duration: None,
        rate: None,
        payload_bytes: 256,
        in_flight: 256,
        subscribers: 0,
        backlog: false,
    };
    Ok(match name {
        "publish" => base,
        "consume" => Scenario {
            name: "consume",
            title: "group consume with an ACK per event, 100,000 backlog",
            count: 100_000,
            backlog: true,
            subscribers: 1,
            ..base
        },
        "flat" => Scenario {
            name: "flat",
            title: "durable publish -> live delivery flat out, 1 subscriber",
            count: 100_000,
            subscribers: 1,
            ..base
        },
        "paced" => Scenario {
            name: "paced",
            title: "durable publish -> live delivery at 5,000 events/s for 10 s",
            count: 0,
            duration: Some(Duration::from_secs(10)),
            rate: Some(5_000.0),
            subscribers: 1,
            ..base
        },
        other => bail!("unknown scenario {other}; known: {}", ALL.join(", ")),
    })
}

/// What one run of one scenario measured on one system.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Events published (acknowledged), or consumed for `consume`.
    pub events: u64,
    /// Publishing (`publish`, `paced`), to the last delivery (`flat`), or
    /// consuming (`consume`).
    pub seconds: f64,
    pub rate: f64,
    /// The server's CPU time over the measured phase.
    pub cpu_seconds: f64,
    pub cpu_us_per_event: f64,
    /// Events per second of server CPU.
    pub events_per_cpu_second: f64,
    /// Send to PUBACK / publish ack.
    pub ack_latency_us: Option<Percentiles>,
    /// Send to live delivery.
    pub deliver_latency_us: Option<Percentiles>,
    pub server: Usage,
}

impl Measured {
    pub fn new(
        events: u64,
        seconds: f64,
        server: Usage,
        ack_latency_us: Option<Percentiles>,
        deliver_latency_us: Option<Percentiles>,
    ) -> Measured {
        let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Measured {
            events,
            seconds,
            rate: per(events as f64, seconds),
            cpu_seconds: server.cpu_seconds,
            cpu_us_per_event: per(server.cpu_seconds * 1e6, events as f64),
            events_per_cpu_second: per(events as f64, server.cpu_seconds),
            ack_latency_us,
            deliver_latency_us,
            server,
        }
    }
}

/// Medians over the runs of one system in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rate: f64,
    pub cpu_us_per_event: f64,
    pub events_per_cpu_second: f64,
    /// Of the delivery latency when there is one, else of the ack latency
    /// (ms).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl Summary {
    fn of(runs: &[Measured]) -> Summary {
        let latency = |m: &Measured| m.deliver_latency_us.or(m.ack_latency_us);
        let pick = |f: fn(&Percentiles) -> u64| -> Option<f64> {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|m| latency(m).map(|p| f(&p) as f64 / 1000.0))
                .collect();
            (!values.is_empty()).then(|| median(values))
        };
        Summary {
            rate: median(runs.iter().map(|m| m.rate).collect()),
            cpu_us_per_event: median(runs.iter().map(|m| m.cpu_us_per_event).collect()),
            events_per_cpu_second: median(runs.iter().map(|m| m.events_per_cpu_second).collect()),
            p50_ms: pick(|p| p.p50),
            p99_ms: pick(|p| p.p99),
            p999_ms: pick(|p| p.p999),
        }
    }
}

/// One system's runs of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SystemRuns {
    pub system: &'static str,
    pub runs: Vec<Measured>,
    pub median: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub systems: Vec<SystemRuns>,
}

/// A target of the hub issue, checked on the medians.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub measured: f64,
    pub target: f64,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub runs: usize,
    /// `/proc/loadavg` before and after.
    pub load_before: String,
    pub load_after: String,
    pub compared_with: Option<String>,
    pub scenarios: Vec<ScenarioReport>,
    pub checks: Vec<Check>,
    /// With `paced`: the CPU of the disk's part of a commit alone.
    pub disk_floor: Option<DiskFloor>,
}

/// [`Floor`] in the paced scenario's terms, over as many runs as the
/// scenarios had.
#[derive(Debug, Clone, Serialize)]
pub struct DiskFloor {
    pub runs: Vec<Floor>,
    /// Median over the runs.
    pub cpu_us_per_commit: f64,
    /// Paced events per commit at one commit per burst: the harness's
    /// timer wakes once per millisecond, so 5,000 events/s leave in bursts
    /// of 5.
    pub events_per_commit: f64,
    pub cpu_us_per_event: f64,
}

/// Measures the disk's floor under `data_base` for the paced scenario,
/// `runs` times.
async fn disk_floor(data_base: &Path, paced: &Scenario, runs: usize) -> Result<DiskFloor> {
    let options = FloorOptions::default();
    let mut floors = Vec::new();
    for _ in 0..runs.max(1) {
        let (dir, options) = (data_base.to_path_buf(), options.clone());
        floors
            .push(tokio::task::spawn_blocking(move || disk_floor::measure(&dir, &options)).await??);
    }
    let cpu_us_per_commit = median(floors.iter().map(|f| f.cpu_us_per_commit).collect());
    let events_per_commit =
        paced.rate.unwrap_or(options.commits_per_second) / options.commits_per_second;
    Ok(DiskFloor {
        runs: floors,
        cpu_us_per_commit,
        events_per_commit,
        cpu_us_per_event: cpu_us_per_commit / events_per_commit,
    })
}

/// Which comparison system, if any.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub nats_server: PathBuf,
    pub data_base: PathBuf,
    /// JetStream's `sync_interval`; `None`: its default (2 minutes).
    pub nats_sync: Option<String>,
}

/// Runs the named scenarios (all when empty) `runs` times, alternating the
/// systems.
pub async fn run(
    source: &HubSource,
    names: &[String],
    runs: usize,
    comparison: Option<&Comparison>,
    data_base: &Path,
) -> Result<CompareReport> {
    let names: Vec<&str> = if names.is_empty() {
        ALL.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let scenarios: Vec<Scenario> = names.iter().map(|n| scenario(n)).collect::<Result<_>>()?;
    let load_before = loadavg();
    let mut hub_runs: Vec<Vec<Measured>> = vec![Vec::new(); scenarios.len()];
    let mut nats_runs: Vec<Vec<Measured>> = vec![Vec::new(); scenarios.len()];
    for round in 0..runs.max(1) {
        for (i, scenario) in scenarios.iter().enumerate() {
            // Alternate which system goes first.
            let nats_first = round % 2 == 1;
            for nats_turn in [nats_first, !nats_first] {
                match (nats_turn, comparison) {
                    (true, Some(c)) => nats_runs[i].push(
                        crate::nats::run(
                            &c.nats_server,
                            &c.data_base,
                            c.nats_sync.as_deref(),
                            scenario,
                        )
                        .await?,
                    ),
                    (true, None) => {}
                    (false, _) => hub_runs[i].push(run_hub(source, scenario).await?),
                }
            }
        }
    }
    let mut reports = Vec::new();
    for (i, scenario) in scenarios.into_iter().enumerate() {
        let mut systems = vec![SystemRuns {
            system: "promhub",
            median: Summary::of(&hub_runs[i]),
            runs: std::mem::take(&mut hub_runs[i]),
        }];
        if comparison.is_some() {
            systems.push(SystemRuns {
                system: "nats-jetstream",
                median: Summary::of(&nats_runs[i]),
                runs: std::mem::take(&mut nats_runs[i]),
            });
        }
        reports.push(ScenarioReport { scenario, systems });
    }
    let checks = checks(&reports);
    let paced = reports
        .iter()
        .find(|r| r.scenario.name == "paced")
        .map(|r| r.scenario.clone());
    let disk_floor = match paced {
        Some(paced) => Some(disk_floor(data_base, &paced, runs).await?),
        None => None,
    };
    Ok(CompareReport {
        runs,
        load_before,
        load_after: loadavg(),
        compared_with: comparison.map(|c| {
            let sync = c.nats_sync.as_deref().unwrap_or("default (2m)");
            format!(
                "nats-server {}, JetStream sync_interval {sync}",
                crate::nats::NATS_VERSION
            )
        }),
        scenarios: reports,
        checks,
        disk_floor,
    })
}

/// The scenario on a hub (fresh when spawned).
async fn run_hub(source: &HubSource, scenario: &Scenario) -> Result<Measured> {
    let hub = source.hub().await?;
    let options = LoadOptions {
        topic: format!("bench.{}", scenario.name),
        count: scenario.duration.is_none().then_some(scenario.count),
        duration: scenario.duration,
        rate: scenario.rate,
        payload_bytes: scenario.payload_bytes,
        in_flight: scenario.in_flight,
        subscribers: scenario.subscribers,
        groups: usize::from(scenario.backlog),
        backlog: scenario.backlog,
        latency_subscribers: scenario.subscribers,
        ..LoadOptions::default()
    };
    let report = load::run(&hub, &options).await;
    hub.stop().await;
    let report = report?;
    let Some(usage) = (if scenario.backlog {
        report.hub_consume.clone()
    } else {
        report.hub.clone()
    }) else {
        bail!("the hub's pid is unknown: its CPU cannot be measured (spawn it, or give --hub-pid)");
    };
    let (events, seconds) = if scenario.backlog {
        (report.delivered, report.deliver_seconds)
    } else if scenario.subscribers > 0 && scenario.rate.is_none() {
        (report.published, report.deliver_seconds)
    } else {
        (report.published, report.publish_seconds)
    };
    Ok(Measured::new(
        events,
        seconds,
        usage,
        report.publish_latency_us,
        report.deliver_latency_us,
    ))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn checks(reports: &[ScenarioReport]) -> Vec<Check> {
    let get = |name: &str, system: &str| {
        reports
            .iter()
            .find(|r| r.scenario.name == name)
            .and_then(|r| r.systems.iter().find(|s| s.system == system))
            .map(|s| s.median.clone())
    };
    let mut checks = Vec::new();
    let mut check = |what: &str, measured: f64, target: f64, at_most: bool| {
        checks.push(Check {
            what: what.to_owned(),
            measured,
            target,
            met: if at_most {
                measured <= target
            } else {
                measured >= target
            },
        });
    };
    let (paced, flat) = (get("paced", "promhub"), get("flat", "promhub"));
    if let (Some(paced), Some(flat)) = (&paced, &flat) {
        check(
            "paced CPU per event / flat-out CPU per event (promhub)",
            paced.cpu_us_per_event / flat.cpu_us_per_event,
            2.0,
            true,
        );
    }
    if let Some(paced) = &paced {
        if let Some(p99) = paced.p99_ms {
            check("paced publish -> deliver p99 (ms)", p99, 1.0, true);
        }
        if let Some(p999) = paced.p999_ms {
            check("paced publish -> deliver p99.9 (ms)", p999, 3.0, true);
        }
        if let Some(nats) = get("paced", "nats-jetstream") {
            check(
                "paced CPU per event, promhub / JetStream ordered consumer",
                paced.cpu_us_per_event / nats.cpu_us_per_event,
                1.0,
                true,
            );
        }
    }
    for (name, what) in [
        ("publish", "durable publish rate, promhub / JetStream"),
        (
            "consume",
            "group consume rate, promhub / JetStream pull consumer",
        ),
    ] {
        if let (Some(hub), Some(nats)) = (get(name, "promhub"), get(name, "nats-jetstream")) {
            check(what, hub.rate / nats.rate, 1.0, false);
        }
    }
    checks
}

impl CompareReport {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{} run(s) each; load average before: {}; after: {}\n",
            self.runs, self.load_before, self.load_after
        );
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        for report in &self.scenarios {
            out.push_str(&format!(
                "\n{} ({})\n  {:<16} {:>12} {:>12} {:>14} {:>8} {:>8} {:>8}\n",
                report.scenario.name,
                report.scenario.title,
                "system",
                "events/s",
                "CPU us/ev",
                "events/CPU-s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms"
            ));
            for system in &report.systems {
                let m = &system.median;
                out.push_str(&format!(
                    "  {:<16} {:>12.0} {:>12.1} {:>14.0} {:>8} {:>8} {:>8}\n",
                    system.system,
                    m.rate,
                    m.cpu_us_per_event,
                    m.events_per_cpu_second,
                    ms(m.p50_ms),
                    ms(m.p99_ms),
                    ms(m.p999_ms)
                ));
                let each: Vec<String> = system
                    .runs
                    .iter()
                    .map(|r| format!("{:.0} ev/s {:.1} us/ev", r.rate, r.cpu_us_per_event))
                    .collect();
                out.push_str(&format!("    runs: {}\n", each.join("; ")));
            }
        }
        if let Some(floor) = &self.disk_floor {
            out.push_str(&format!(
                "\ndisk floor (no server), median {:.1} us CPU per commit = {:.1} us per paced event at {:.0} events per commit\n",
                floor.cpu_us_per_commit, floor.cpu_us_per_event, floor.events_per_commit
            ));
            for run in &floor.runs {
                out.push_str(&format!("    {}\n", run.line()));
            }
        }
        if !self.checks.is_empty() {
            out.push_str("\nchecks (medians):\n");
            for c in &self.checks {
                out.push_str(&format!(
                    "  {:<60} {:>8.2} target {:>5} {}\n",
                    c.what,
                    c.measured,
                    c.target,
                    if c.met { "met" } else { "NOT met" }
                ));
            }
        }
        out
    }
}
