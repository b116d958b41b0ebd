//! Client benchmarks against a real hub running in a child process (this
//! binary again), so that what is measured here — time and memory — is the
//! client's alone:
//!
//! - publish: one `Client`, 256 publishes in flight, each awaited to its
//!   `PUBACK` (events/s);
//! - consume: one `Client` working through a backlog as a group worker,
//!   acknowledging every delivery (events/s);
//! - idle memory: resident memory per connected, idle `Client`.
//!
//! `cargo bench -p promhub --bench client` (optionally `-- --events N
//! --clients N`). Prints one line per measurement.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use promhub::{Client, ClientConfig, PublishOptions, SubscribeOptions};
use serde::{Deserialize, Serialize};

const HUB_ENV: &str = "PROMHUB_BENCH_HUB_DATA";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sample {
    host: String,
    pid: u32,
    cpu_percent: f32,
    memory_bytes: u64,
}

fn sample(i: u32) -> Sample {
    Sample {
        host: "bench-host".to_owned(),
        pid: i,
        cpu_percent: 1.5,
        memory_bytes: 123_456_789,
    }
}

fn main() {
    if let Ok(data) = std::env::var(HUB_ENV) {
        run_hub(Path::new(&data));
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: u32| -> u32 {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let events = flag("--events", 50_000);
    let clients = flag("--clients", 1_000);

    let data = tempfile::tempdir().expect("tempdir");
    let mut hub = HubChild::start(data.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        publish(&hub.url, events).await;
        consume(&hub.url, events, 100).await;
        consume(&hub.url, events, 1000).await;
        idle_memory(&hub.url, clients).await;
    });
    hub.stop();
}

async fn connect(url: &str) -> Client {
    Client::connect(url, ClientConfig::new())
        .await
        .expect("connect to the bench hub")
}

async fn publish(url: &str, events: u32) {
    let client = connect(url).await;
    // Warm-up: the store's first pages, the connection's buffers.
    publish_n(&client, "bench.warmup", 2_000).await;
    let started = Instant::now();
    publish_n(&client, "bench.publish", events).await;
    let elapsed = started.elapsed();
    println!(
        "publish, 256 in flight:        {:>9.0} events/s ({events} events in {:.2?})",
        f64::from(events) / elapsed.as_secs_f64(),
        elapsed
    );
    client.close().await;
}

async fn publish_n(client: &Client, topic: &str, events: u32) {
    let failures = futures_util::stream::iter(0..events)
        .map(|i| async move {
            client
                .publish(topic, &sample(i), PublishOptions::new())
                .await
        })
        .buffer_unordered(256)
        .filter(|result| std::future::ready(result.is_err()))
        .count()
        .await;
    assert_eq!(failures, 0, "publishes failed");
}

/// Works through the `bench.publish` backlog as a new group starting at the
/// earliest event, acknowledging each delivery.
async fn consume(url: &str, events: u32, max_inflight: u32) {
    let client = connect(url).await;
    let group = format!("bench-{max_inflight}");
    let mut sub = client
        .subscribe::<Sample>(
            "bench.publish",
            Some(&group),
            SubscribeOptions::new()
                .from_earliest()
                .max_inflight(max_inflight),
        )
        .await
        .expect("subscribe");
    let started = Instant::now();
    for _ in 0..events {
        let delivery = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("a delivery within a minute")
            .expect("the stream goes on");
        assert!(delivery.payload().is_ok());
        delivery.ack().await.expect("ack");
    }
    let elapsed = started.elapsed();
    println!(
        "consume + ack, max_inflight {max_inflight:>4}: {:>9.0} events/s ({events} events in {:.2?})",
        f64::from(events) / elapsed.as_secs_f64(),
        elapsed
    );
    drop(sub);
    client.close().await;
}

async fn idle_memory(url: &str, clients: u32) {
    // One client first, so the runtime, TLS-free connector and allocator
    // pools that every client shares are already counted in the baseline.
    let first = connect(url).await;
    settle().await;
    let before = rss_kib();
    let mut all = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        all.push(connect(url).await);
    }
    settle().await;
    let after = rss_kib();
    let per_client = (after.saturating_sub(before)) as f64 * 1024.0 / f64::from(clients);
    println!(
        "idle client memory:            {:>9.1} KiB per Client (RSS {before} KiB -> {after} KiB for {clients} clients)",
        per_client / 1024.0
    );
    for client in &all {
        client.close().await;
    }
    first.close().await;
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

// ---------------------------------------------------------------------------
// The hub child process

struct HubChild {
    url: String,
    child: Child,
}

impl HubChild {
    fn start(data: &Path) -> Self {
        let exe = std::env::current_exe().expect("bench binary");
        let mut child = Command::new(exe)
            .env(HUB_ENV, data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the hub");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the hub printed its address")
                .expect("hub stdout");
            if let Some((_, url)) = line.split_once("listening on ") {
                break url.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        HubChild { url, child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_hub(data: &Path) {
    // Exit with the parent (it holds our stdin).
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = promhub_hub::HubConfig {
            data: data.to_path_buf(),
            ..promhub_hub::HubConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!(
            "listening on ws://{}{}",
            listener.local_addr().expect("addr"),
            config.ws_path
        );
        promhub_hub::run(listener, config, std::future::pending())
            .await
            .expect("hub");
    });
}
