//! Reads this machine's processes every second and publishes a
//! `process.state` event for each, keyed `host:name:pid`; a process that
//! disappears gets one `exited` event. The hub's latest-by-key snapshot then
//! holds the machine's current process table.
//!
//! ```text
//! cargo run -p promhub --example process-agent -- --url ws://127.0.0.1:8090/ws
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::StreamExt;
use promhub::{Client, ClientConfig, Error, PublishOptions};
use serde::{Deserialize, Serialize};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

#[derive(Debug, Parser)]
#[command(about = "Publish this machine's processes to a promhub hub")]
pub struct Args {
    /// The hub's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8090/ws")]
    pub url: String,
    /// A JWT (none: anonymous, for a hub in development mode).
    #[arg(long, env = "PROMHUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value = "process.state")]
    pub topic: String,
    /// Time between two readings.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop after this many readings (default: run until Ctrl-C).
    #[arg(long)]
    pub ticks: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Alive,
    Exited,
}

/// The payload of a `process.state` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProcessState {
    host: String,
    name: String,
    pid: u32,
    /// Percent of one CPU core over the last interval (as `top` shows it:
    /// a process busy on two cores reads 200).
    cpu_percent: f32,
    memory_bytes: u64,
    status: Status,
    /// Unix ms.
    started_at: u64,
    /// Unix ms of the last reading that saw the process.
    last_seen: u64,
}

impl ProcessState {
    fn key(&self) -> String {
        format!("{}:{}:{}", self.host, self.name, self.pid)
    }
}

/// One process as read in one reading.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    pid: u32,
    name: String,
    cpu_percent: f32,
    memory_bytes: u64,
    /// Unix seconds, as the OS reports it.
    started_at_s: u64,
}

/// Remembers the processes of the last reading to tell which ones exited.
/// A process is identified by pid *and* start time, so a reused pid is a
/// new process (and the old one exited).
#[derive(Debug)]
struct Tracker {
    host: String,
    alive: HashMap<(u32, u64), ProcessState>,
}

impl Tracker {
    fn new(host: String) -> Self {
        Tracker {
            host,
            alive: HashMap::new(),
        }
    }

    /// The events of one reading: every process seen (`alive`), then every
    /// process of the previous reading that is gone (`exited`, once).
    fn observe(&mut self, now_ms: u64, samples: Vec<Sample>) -> Vec<ProcessState> {
        let mut events = Vec::with_capacity(samples.len());
        let mut alive = HashMap::with_capacity(samples.len());
        for sample in samples {
            let state = ProcessState {
                host: self.host.clone(),
                name: sample.name,
                pid: sample.pid,
                cpu_percent: sample.cpu_percent,
                memory_bytes: sample.memory_bytes,
                status: Status::Alive,
                started_at: sample.started_at_s.saturating_mul(1000),
                last_seen: now_ms,
            };
            alive.insert((sample.pid, sample.started_at_s), state.clone());
            events.push(state);
        }
        let previous = std::mem::replace(&mut self.alive, alive);
        let mut exited: Vec<ProcessState> = previous
            .into_iter()
            .filter(|(id, _)| !self.alive.contains_key(id))
            .map(|(_, mut state)| {
                state.status = Status::Exited;
                state.cpu_percent = 0.0;
                state
            })
            .collect();
        exited.sort_by_key(|state| state.pid);
        events.extend(exited);
        events
    }
}

fn read_processes(system: &mut System) -> Vec<Sample> {
    // CPU usage is the difference to the previous refresh. Only processes:
    // sysinfo lists every thread ("task") as a process of its own unless
    // told not to read them, and marks threads (those of a process, and
    // the kernel's own) with a `thread_kind`, which the filter drops in
    // case any still come through.
    system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .without_tasks(),
    );
    system
        .processes()
        .values()
        .filter(|process| process.thread_kind().is_none())
        .map(|process| Sample {
            pid: process.pid().as_u32(),
            name: process.name().to_string_lossy().into_owned(),
            cpu_percent: process.cpu_usage(),
            memory_bytes: process.memory(),
            started_at_s: process.start_time(),
        })
        .collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn publish_all(
    client: &Client,
    topic: &str,
    events: Vec<ProcessState>,
) -> (usize, Vec<(ProcessState, Error)>) {
    let results: Vec<_> = futures_util::stream::iter(events)
        .map(|state| async move {
            let mut opts = PublishOptions::new().key(state.key());
            if state.status == Status::Exited {
                // An id makes the exit event idempotent: the client re-sends
                // it after a reconnect and the hub stores it once.
                opts = opts.id(format!(
                    "exit:{}:{}:{}",
                    state.host, state.pid, state.started_at
                ));
            }
            let result = client.publish(topic, &state, opts).await;
            (state, result)
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let mut published = 0;
    let mut failed = Vec::new();
    for (state, result) in results {
        match result {
            Ok(_) => published += 1,
            Err(e) => failed.push((state, e)),
        }
    }
    (published, failed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    run(Args::parse()).await
}

/// The agent: one reading every `interval_ms`, published; until Ctrl-C or
/// `ticks` readings. (The integration tests run it against a real hub.)
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    if let Some(token) = args.token {
        config = config.token(token);
    }
    // Connects in the background and keeps retrying: the agent may start
    // before the hub.
    let client = Client::connect_lazy(args.url.as_str(), config)?;
    let mut connection = client.events();
    tokio::spawn(async move {
        while let Some(event) = connection.next().await {
            eprintln!("connection: {event:?}");
        }
    });

    let host = System::host_name().unwrap_or_else(|| "unknown-host".to_owned());
    let mut tracker = Tracker::new(host.clone());
    let mut system = System::new();
    // CPU usage needs two readings some time apart: take the first now.
    read_processes(&mut system);
    tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;

    let mut interval = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Exit events that could not be published are tried again.
    let mut unsent_exits: Vec<ProcessState> = Vec::new();
    let mut tick = 0u64;
    eprintln!("process-agent on {host} publishing to {}", args.url);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let samples = read_processes(&mut system);
        let mut events = tracker.observe(unix_ms(), samples);
        events.append(&mut unsent_exits);
        let total = events.len();
        let (published, failed) = publish_all(&client, &args.topic, events).await;
        let exited = failed
            .iter()
            .filter(|(state, _)| state.status == Status::Exited)
            .count();
        if let Some((_, first)) = failed.first() {
            eprintln!(
                "reading {tick}: {published}/{total} published; {} failed (first: {first}); {exited} exit events kept for the next reading",
                failed.len()
            );
        } else {
            eprintln!("reading {tick}: {published} published");
        }
        unsent_exits.extend(
            failed
                .into_iter()
                .filter(|(state, _)| state.status == Status::Exited)
                .map(|(state, _)| state),
        );
        tick += 1;
        if args.ticks.is_some_and(|ticks| tick >= ticks) {
            break;
        }
    }
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, name: &str, started_at_s: u64) -> Sample {
        Sample {
            pid,
            name: name.to_owned(),
            cpu_percent: 12.5,
            memory_bytes: 4096,
            started_at_s,
        }
    }

    #[test]
    fn a_vanished_process_gets_exactly_one_exited_event() {
        let mut tracker = Tracker::new("h".to_owned());
        let first = tracker.observe(1_000, vec![sample(1, "init", 10), sample(7, "sh", 20)]);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|s| s.status == Status::Alive));

        let second = tracker.observe(2_000, vec![sample(1, "init", 10)]);
        let exited: Vec<_> = second
            .iter()
            .filter(|s| s.status == Status::Exited)
            .collect();
        assert_eq!(exited.len(), 1);
        assert_eq!(exited[0].key(), "h:sh:7");
        // The last reading that saw it, and when it started.
        assert_eq!(exited[0].last_seen, 1_000);
        assert_eq!(exited[0].started_at, 20_000);

        let third = tracker.observe(3_000, vec![sample(1, "init", 10)]);
        assert!(third.iter().all(|s| s.status == Status::Alive));
        assert_eq!(third.len(), 1);
    }

    #[test]
    fn a_reused_pid_is_a_new_process_and_the_old_one_exited() {
        let mut tracker = Tracker::new("h".to_owned());
        tracker.observe(1_000, vec![sample(7, "sh", 20)]);
        let events = tracker.observe(2_000, vec![sample(7, "python", 25)]);
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].key(), events[0].status),
            ("h:python:7".to_owned(), Status::Alive)
        );
        assert_eq!(
            (events[1].key(), events[1].status),
            ("h:sh:7".to_owned(), Status::Exited)
        );
    }

    #[test]
    fn payload_has_the_documented_shape() {
        let mut tracker = Tracker::new("h".to_owned());
        let events = tracker.observe(1_000, vec![sample(7, "sh", 20)]);
        let json = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "host": "h", "name": "sh", "pid": 7, "cpu_percent": 12.5,
                "memory_bytes": 4096, "status": "alive", "started_at": 20_000,
                "last_seen": 1_000,
            })
        );
    }

    #[test]
    fn reads_real_processes_including_itself() {
        let mut system = System::new();
        read_processes(&mut system);
        let samples = read_processes(&mut system);
        let me = std::process::id();
        let own = samples
            .iter()
            .find(|s| s.pid == me)
            .expect("this process is listed");
        assert!(own.memory_bytes > 0);
        assert!(
            own.started_at_s > 1_500_000_000,
            "start time is Unix seconds"
        );
        assert!(own.cpu_percent >= 0.0);
    }

    /// Threads are not processes: none of this process's threads (Linux
    /// lists them in /proc/self/task) may show up as a sample of its own.
    #[cfg(target_os = "linux")]
    #[test]
    fn threads_are_not_listed_as_processes() {
        let (stop, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || wait.recv());
        let me = std::process::id();
        let thread_ids: Vec<u32> = std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&tid| tid != me)
            .collect();
        assert!(!thread_ids.is_empty(), "the spawned thread is listed");
        let mut system = System::new();
        read_processes(&mut system);
        let samples = read_processes(&mut system);
        stop.send(()).expect("thread waits");
        thread
            .join()
            .expect("thread ends")
            .expect("message received");
        assert!(samples.iter().any(|s| s.pid == me), "the process is listed");
        let listed: Vec<u32> = samples
            .iter()
            .map(|s| s.pid)
            .filter(|pid| thread_ids.contains(pid))
            .collect();
        assert!(listed.is_empty(), "threads listed as processes: {listed:?}");
    }
}
