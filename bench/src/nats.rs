//! The comparison system: a NATS JetStream server on 127.0.0.1, driven
//! through the `async-nats` JetStream client with the same scenarios as
//! the hub (see [`crate::scenarios`]).
//!
//! The server binary is found or built by [`find_or_build`]: `--nats-server
//! PATH`, `PROMHUB_BENCH_NATS_SERVER`, `target/nats-bin/nats-server`, the Go
//! bin directory, `PATH`; else `go install
//! github.com/nats-io/nats-server/v2@NATS_VERSION` into `target/nats-bin`
//! (Go and the module proxy are needed then). Each run gets a fresh server
//! with a fresh store directory, its defaults untouched: file storage,
//! `sync_interval` 2 minutes (JetStream's default: written to the page
//! cache, fsynced every 2 minutes).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::process::{Child, Command};

use crate::proc_stats::Meter;
use crate::report::Percentiles;
use crate::scenarios::{Measured, Scenario};
use crate::ws::{stamp_of_bytes, stamped_payload};

/// The NATS server version the comparison is pinned to.
pub const NATS_VERSION: &str = "v2.15.2";
/// Its Go module.
const NATS_MODULE: &str = "github.com/nats-io/nats-server/v2";
/// The stream every scenario writes to (subjects `bench.>`).
const STREAM: &str = "BENCH";
/// How long a server may take to write its ports file.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `nats-server` of [`NATS_VERSION`]: `explicit` (a flag or
/// `PROMHUB_BENCH_NATS_SERVER`) or one found on this machine, else built
/// with `go install` into `build_dir`.
pub async fn find_or_build(explicit: Option<&Path>, build_dir: &Path) -> Result<PathBuf> {
    if let Some(path) = explicit {
        check_version(path).await?;
        return Ok(path.to_owned());
    }
    let mut candidates = vec![build_dir.join("nats-server")];
    if let Some(gobin) = std::env::var_os("GOBIN") {
        candidates.push(PathBuf::from(gobin).join("nats-server"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join("go/bin/nats-server"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nats-server")));
    }
    for candidate in &candidates {
        if candidate.is_file() && check_version(candidate).await.is_ok() {
            return Ok(candidate.clone());
        }
    }
    std::fs::create_dir_all(build_dir)
        .with_context(|| format!("creating {}", build_dir.display()))?;
    let build_dir = std::path::absolute(build_dir)?;
    eprintln!(
        "building nats-server {NATS_VERSION} with go install into {}",
        build_dir.display()
    );
    let status = Command::new("go")
        .args(["install", &format!("{NATS_MODULE}@{NATS_VERSION}")])
        .env("GOBIN", &build_dir)
        .stdin(Stdio::null())
        .status()
        .await
        .context("running `go install` (is Go installed?)")?;
    if !status.success() {
        bail!("go install {NATS_MODULE}@{NATS_VERSION} failed: {status}");
    }
    let built = build_dir.join("nats-server");
    check_version(&built).await?;
    Ok(built)
}

/// Fails unless `binary --version` names [`NATS_VERSION`].
async fn check_version(binary: &Path) -> Result<()> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !text.contains(NATS_VERSION) {
        bail!(
            "{} is {}, not {NATS_VERSION}",
            binary.display(),
            text.trim()
        );
    }
    Ok(())
}

/// A running `nats-server -js` on 127.0.0.1 with a fresh store directory.
#[derive(Debug)]
pub struct NatsServer {
    pub url: String,
    pub pid: u32,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `binary` with JetStream on a random port, its store under
    /// `data_base` (a real disk), and waits for its ports file. `sync`:
    /// JetStream's `sync_interval` (its default, 2 minutes, when `None`;
    /// `always` fsyncs every write before the ack, promhub's default
    /// durability).
    pub async fn start(binary: &Path, data_base: &Path, sync: Option<&str>) -> Result<NatsServer> {
        std::fs::create_dir_all(data_base)
            .with_context(|| format!("creating {}", data_base.display()))?;
        let dir = tempfile::tempdir_in(data_base)?;
        let store = dir.path().join("store");
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports)?;
        let mut command = Command::new(binary);
        command
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(&store);
        if let Some(interval) = sync {
            // Only the configuration file has JetStream's sync interval.
            let config = dir.path().join("nats.conf");
            std::fs::write(
                &config,
                format!("jetstream {{\n  sync_interval: {interval}\n}}\n"),
            )?;
            command.arg("-c").arg(&config);
        }
        let child = command
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let pid = child.id().context("nats-server exited at once")?;
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            if let Some(url) = read_ports_file(&ports, pid)? {
                break url;
            }
            if Instant::now() > deadline {
                bail!("nats-server wrote no ports file within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        crate::target::check_nats_loopback(&url)?;
        Ok(NatsServer {
            url,
            pid,
            child,
            _dir: dir,
        })
    }

    /// Stops the server (SIGTERM, then waits up to 10 s).
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The client URL from `nats-server_PID.ports` (`{"nats": ["nats://…"]}`).
fn read_ports_file(dir: &Path, pid: u32) -> Result<Option<String>> {
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
    }
    let path = dir.join(format!("nats-server_{pid}.ports"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let Ok(ports) = serde_json::from_str::<Ports>(&text) else {
        // Still being written.
        return Ok(None);
    };
    Ok(ports.nats.into_iter().next())
}

async fn connect(url: &str) -> Result<(async_nats::Client, jetstream::Context)> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

/// The scenario's stream: file storage, JetStream's defaults otherwise.
async fn create_stream(js: &jetstream::Context) -> Result<stream::Stream> {
    js.create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["bench.>".to_owned()],
        storage: stream::StorageType::File,
        ..stream::Config::default()
    })
    .await
    .context("creating the stream")
}

/// Runs one scenario against a fresh server.
pub async fn run(
    binary: &Path,
    data_base: &Path,
    sync: Option<&str>,
    scenario: &Scenario,
) -> Result<Measured> {
    let server = NatsServer::start(binary, data_base, sync).await?;
    let result = run_on(&server, scenario).await;
    server.stop().await;
    result
}

async fn run_on(server: &NatsServer, scenario: &Scenario) -> Result<Measured> {
    let (_client, js) = connect(&server.url).await?;
    let stream = create_stream(&js).await?;
    let subject = format!("bench.{}", scenario.name);
    if scenario.backlog {
        // The backlog first, unmeasured; then the consume is measured.
        publish(&js, &subject, scenario, Instant::now()).await?;
        let meter = Meter::start(server.pid)?;
        let started = Instant::now();
        let consumed = consume(&stream, scenario.count).await?;
        let seconds = started.elapsed().as_secs_f64();
        let usage = meter.finish()?;
        return Ok(Measured::new(consumed, seconds, usage, None, None));
    }
    let origin = Instant::now();
    let mut receiver = None;
    if scenario.subscribers > 0 {
        receiver = Some(start_ordered_consumer(&server.url, &subject, origin).await?);
    }
    let meter = Meter::start(server.pid)?;
    let publish_started = now_us(origin);
    let published = publish(&js, &subject, scenario, origin).await?;
    let publish_ended = now_us(origin);
    let mut seconds = publish_ended.saturating_sub(publish_started) as f64 / 1e6;
    let mut deliver_latency = None;
    if let Some(receiver) = receiver {
        receiver.target.store(published.count, Ordering::Release);
        let (latency, last_us, got) = tokio::time::timeout(Duration::from_secs(30), receiver.task)
            .await
            .context("the ordered consumer did not get every event within 30 s")???;
        if got < published.count {
            bail!(
                "the ordered consumer got {got} of {} events",
                published.count
            );
        }
        seconds = last_us.saturating_sub(publish_started) as f64 / 1e6;
        deliver_latency = Percentiles::of(&latency);
    }
    let usage = meter.finish()?;
    Ok(Measured::new(
        published.count,
        seconds,
        usage,
        Percentiles::of(&published.ack_latency),
        deliver_latency,
    ))
}

/// An ordered push consumer on its own connection, recording publish →
/// deliver latency until it has `target` events.
struct Receiver {
    target: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<(Histogram<u64>, u64, u64)>>,
}

async fn start_ordered_consumer(url: &str, subject: &str, origin: Instant) -> Result<Receiver> {
    let (client, js) = connect(url).await?;
    let stream = js.get_stream(STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..consumer::push::OrderedConfig::default()
        })
        .await
        .context("creating the ordered consumer")?;
    let mut messages = consumer.messages().await?;
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let wanted = Arc::clone(&target);
    let task = tokio::spawn(async move {
        let _client = client;
        let mut latency = histogram();
        let (mut last_us, mut got) = (0u64, 0u64);
        while got < wanted.load(Ordering::Acquire) {
            // Wakes now and then to see whether the target is known yet.
            let Ok(next) = tokio::time::timeout(Duration::from_millis(100), messages.next()).await
            else {
                continue;
            };
            let Some(message) = next else { break };
            let message = message.map_err(|e| anyhow::anyhow!("ordered consumer: {e}"))?;
            let now = now_us(origin);
            if let Some(stamp) = stamp_of_bytes(&message.payload) {
                latency.saturating_record(now.saturating_sub(stamp).max(1));
            }
            last_us = now;
            got += 1;
        }
        Ok((latency, last_us, got))
    });
    Ok(Receiver { target, task })
}

fn now_us(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

struct Published {
    count: u64,
    ack_latency: Histogram<u64>,
}

/// Publishes the scenario's events with at most `in_flight` unacknowledged
/// (JetStream publish acks), paced when the scenario has a rate.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    scenario: &Scenario,
    origin: Instant,
) -> Result<Published> {
    let interval = scenario
        .rate
        .map(|rate| Duration::from_secs_f64(1.0 / rate));
    let deadline = scenario.duration.map(|d| Instant::now() + d);
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut ack_latency = histogram();
    let mut sent = 0u64;
    let mut acked = 0u64;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d)
            || (deadline.is_none() && sent >= scenario.count)
        {
            break;
        }
        if let Some(interval) = interval {
            tokio::time::sleep_until((started + interval.mul_f64(sent as f64)).into()).await;
        }
        while pending.len() >= scenario.in_flight {
            let (stamp, ack): (u64, Result<_, _>) = pending.next().await.context("acks")?;
            ack.context("publish ack")?;
            ack_latency.saturating_record(now_us(origin).saturating_sub(stamp).max(1));
            acked += 1;
        }
        let stamp = now_us(origin);
        let payload = stamped_payload(stamp, scenario.payload_bytes);
        let ack = js
            .publish(subject.to_owned(), payload.into())
            .await
            .context("publish")?;
        pending.push(async move { (stamp, ack.await) });
        sent += 1;
    }
    while let Some((stamp, ack)) = pending.next().await {
        ack.context("publish ack")?;
        ack_latency.saturating_record(now_us(origin).saturating_sub(stamp).max(1));
        acked += 1;
    }
    Ok(Published {
        count: acked,
        ack_latency,
    })
}

/// A durable pull consumer reads `count` events, acknowledging each.
async fn consume(stream: &stream::Stream, count: u64) -> Result<u64> {
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("g".to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..consumer::pull::Config::default()
        })
        .await
        .context("creating the pull consumer")?;
    let mut messages = consumer.messages().await?;
    let mut got = 0u64;
    while got < count {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .context("the pull consumer stalled")?
            .context("the pull consumer ended")?
            .map_err(|e| anyhow::anyhow!("pull: {e}"))?;
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        got += 1;
    }
    Ok(got)
}
