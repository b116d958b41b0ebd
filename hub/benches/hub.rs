//! Hub benchmarks over loopback against the real `promhub` binary (a
//! subprocess, so client and hub compete for the machine's cores like two
//! real processes would, and the hub's memory is measured alone).
//!
//! `cargo bench -p promhub-hub --bench hub [-- SCENARIO...]` with scenarios
//! `publish`, `consume`, `fanout`, `latency`, `idle` (default: all). Each
//! run is bounded (fixed event counts / durations) and prints one result
//! line per measurement. `--url ws://...` targets an already running hub
//! instead (then `idle` cannot read the hub's memory and is skipped).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

const PUBLISH_EVENTS: usize = 200_000;
const PUBLISH_IN_FLIGHT: usize = 256;
const PAYLOAD_BYTES: usize = 256;
const CONSUME_EVENTS: usize = 200_000;
const CONSUME_MAX_INFLIGHT: u32 = 1000;
const FANOUT_SUBSCRIBERS: usize = 1000;
const FANOUT_EVENTS: usize = 2000;
const FANOUT_PAYLOAD_BYTES: usize = 128;
const LATENCY_RATE: u64 = 5000;
const LATENCY_SECONDS: u64 = 10;
const IDLE_CONNECTIONS: usize = 10_000;

fn main() -> Result<()> {
    let mut scenarios = Vec::new();
    let mut url = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Passed by `cargo bench`.
            "--bench" => {}
            "--url" => url = Some(args.next().context("--url needs a value")?),
            name if !name.starts_with('-') => scenarios.push(name.to_owned()),
            other => bail!("unknown argument {other}"),
        }
    }
    if scenarios.is_empty() {
        scenarios = ["publish", "consume", "fanout", "latency", "idle"]
            .map(str::to_owned)
            .to_vec();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        for scenario in &scenarios {
            // A fresh hub and store per scenario, so one does not slow the
            // next (except `consume`, which needs a filled log).
            let hub = match &url {
                Some(url) => Hub::external(url.clone()),
                None => Hub::spawn().await?,
            };
            match scenario.as_str() {
                "publish" => publish(&hub).await?,
                "consume" => consume(&hub).await?,
                "fanout" => fanout(&hub).await?,
                "latency" => latency(&hub).await?,
                "idle" => idle(&hub).await?,
                other => bail!("unknown scenario {other}"),
            }
            hub.stop().await;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The hub under test

struct Hub {
    url: String,
    child: Option<Child>,
    _data: Option<tempfile::TempDir>,
}

impl Hub {
    fn external(url: String) -> Hub {
        Hub {
            url,
            child: None,
            _data: None,
        }
    }

    async fn spawn() -> Result<Hub> {
        // Under the target dir: a real disk (tmp may be tmpfs, where fsync
        // is free and the numbers would lie).
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
        std::fs::create_dir_all(&base)?;
        let data = tempfile::tempdir_in(&base)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_promhub"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("PROMHUB_DATA", data.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning promhub")?;
        let stdout = child.stdout.take().context("stdout")?;
        let line = BufReader::new(stdout)
            .lines()
            .next_line()
            .await?
            .context("promhub exited")?;
        let url = line
            .strip_prefix("listening on ")
            .context("unexpected first line")?
            .to_owned();
        Ok(Hub {
            url,
            child: Some(child),
            _data: Some(data),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        }
    }

    async fn connect(&self) -> Result<(Sink, Stream)> {
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(&self.url, Some(config), true).await?;
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text(r#"{"op":"AUTH"}"#)).await?;
        let ok = next_text(&mut stream).await?;
        if !ok.starts_with(r#"{"op":"OK""#) {
            bail!("AUTH answered {ok}");
        }
        Ok((sink, stream))
    }
}

async fn next_text(stream: &mut Stream) -> Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Err(_) => bail!("no frame for 60 s"),
            Ok(None) => bail!("connection closed"),
            Ok(Some(message)) => match message? {
                Message::Text(text) => return Ok(text.to_string()),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => continue,
            },
        }
    }
}

fn payload(bytes: usize) -> String {
    // A JSON string of exactly `bytes` bytes, quotes included.
    format!("\"{}\"", "p".repeat(bytes - 2))
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

// ---------------------------------------------------------------------------
// Durable publish: PUBACK after sync, 256 in flight

/// Publishes `total` events on one connection keeping `in_flight` PUBLISHes
/// unanswered; returns the elapsed time once every PUBACK arrived.
async fn publish_load(hub: &Hub, topic: &str, total: usize, in_flight: usize) -> Result<Duration> {
    let (mut sink, mut stream) = hub.connect().await?;
    let body = payload(PAYLOAD_BYTES);
    let window = Arc::new(Semaphore::new(in_flight));
    let reader_window = Arc::clone(&window);
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            let text = next_text(&mut stream).await?;
            if !text.starts_with(r#"{"op":"PUBACK""#) {
                bail!("expected PUBACK, got {text}");
            }
            acked += 1;
            reader_window.add_permits(1);
        }
        Ok(started.elapsed())
    });
    let mut sent = 0;
    while sent < total {
        window.acquire().await?.forget();
        let mut batch = 1;
        while sent + batch < total && window.try_acquire().map(|p| p.forget()).is_ok() {
            batch += 1;
        }
        for i in sent..sent + batch {
            let frame =
                format!(r#"{{"op":"PUBLISH","topic":"{topic}","payload":{body},"rid":"{i}"}}"#);
            sink.feed(Message::text(frame)).await?;
        }
        sink.flush().await?;
        sent += batch;
    }
    reader.await?
}

async fn publish(hub: &Hub) -> Result<()> {
    // Warm-up (connections, caches, file growth) not measured.
    publish_load(hub, "bench.warmup", 20_000, PUBLISH_IN_FLIGHT).await?;
    let elapsed = publish_load(hub, "bench.publish", PUBLISH_EVENTS, PUBLISH_IN_FLIGHT).await?;
    println!(
        "publish: {} durable events ({} B payload, {} in flight, 1 connection) in {:.2} s = {:.0} events/s (target >= 50000)",
        PUBLISH_EVENTS,
        PAYLOAD_BYTES,
        PUBLISH_IN_FLIGHT,
        elapsed.as_secs_f64(),
        rate(PUBLISH_EVENTS, elapsed)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Durable group consuming with ACKs

#[derive(Deserialize)]
struct EventFrame<'a> {
    #[serde(borrow)]
    op: &'a str,
    #[serde(borrow, default)]
    event: Option<EventId<'a>>,
    #[serde(borrow, default)]
    ctx: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct EventId<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(default)]
    seq: u64,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

async fn consume(hub: &Hub) -> Result<()> {
    // A backlog read from the store.
    publish_load(hub, "bench.consume", CONSUME_EVENTS, PUBLISH_IN_FLIGHT).await?;
    let started = Instant::now();
    consume_group(hub, "bench.*", "backlog", "earliest", CONSUME_EVENTS).await?;
    let elapsed = started.elapsed();
    println!(
        "consume (backlog): {} events read from the store by one group member (max_inflight {}), each ACKed, in {:.2} s = {:.0} events/s (target >= 50000)",
        CONSUME_EVENTS,
        CONSUME_MAX_INFLIGHT,
        elapsed.as_secs_f64(),
        rate(CONSUME_EVENTS, elapsed)
    );

    // Live: published (256 in flight) and consumed at the same time.
    let started = Instant::now();
    let consumer = {
        let (sink, stream) = subscribe_group(hub, "live.*", "live", "latest").await?;
        tokio::spawn(ack_events(sink, stream, "live.*", "live", CONSUME_EVENTS))
    };
    publish_load(hub, "live.x", CONSUME_EVENTS, PUBLISH_IN_FLIGHT).await?;
    consumer.await??;
    let elapsed = started.elapsed();
    println!(
        "consume (live): {} events published (256 in flight) and consumed by one group member with ACKs at the same time in {:.2} s = {:.0} events/s end to end",
        CONSUME_EVENTS,
        elapsed.as_secs_f64(),
        rate(CONSUME_EVENTS, elapsed)
    );
    Ok(())
}

async fn subscribe_group(
    hub: &Hub,
    pattern: &str,
    group: &str,
    from: &str,
) -> Result<(Sink, Stream)> {
    let (mut sink, mut stream) = hub.connect().await?;
    sink.send(Message::text(format!(
        r#"{{"op":"SUBSCRIBE","topic":"{pattern}","group":"{group}","opts":{{"from":"{from}","max_inflight":{CONSUME_MAX_INFLIGHT}}},"rid":"s"}}"#
    )))
    .await?;
    let suback = next_text(&mut stream).await?;
    if !suback.contains("SUBACK") {
        bail!("SUBSCRIBE answered {suback}");
    }
    Ok((sink, stream))
}

async fn consume_group(
    hub: &Hub,
    pattern: &'static str,
    group: &'static str,
    from: &str,
    count: usize,
) -> Result<()> {
    let (sink, stream) = subscribe_group(hub, pattern, group, from).await?;
    ack_events(sink, stream, pattern, group, count).await
}

/// Receives `count` EVENTs in seq order and ACKs each, one flush per read
/// burst.
async fn ack_events(
    mut sink: Sink,
    mut stream: Stream,
    pattern: &'static str,
    group: &'static str,
    count: usize,
) -> Result<()> {
    let mut received = 0;
    let mut last_seq = 0;
    while received < count {
        let mut pending = vec![next_text(&mut stream).await?];
        while let Some(Some(Ok(Message::Text(text)))) = stream.next().now_or_never() {
            pending.push(text.to_string());
        }
        for text in &pending {
            let frame: EventFrame<'_> = serde_json::from_str(text)?;
            let Some(event) = frame.event.filter(|_| frame.op == "EVENT") else {
                bail!("expected EVENT, got {text}");
            };
            if event.seq <= last_seq {
                bail!("out of order: {} after {last_seq}", event.seq);
            }
            last_seq = event.seq;
            let ack = format!(
                r#"{{"op":"ACK","topic":"{pattern}","group":"{group}","id":"{}"}}"#,
                event.id
            );
            sink.feed(Message::text(ack)).await?;
            received += 1;
        }
        sink.flush().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Fan-out to 1,000 ephemeral subscribers

async fn fanout(hub: &Hub) -> Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let expected = FANOUT_EVENTS;
    for _ in 0..FANOUT_SUBSCRIBERS {
        let (mut sink, mut stream) = hub.connect().await?;
        sink.send(Message::text(
            r#"{"op":"SUBSCRIBE","topic":"fan.out","rid":"s"}"#,
        ))
        .await?;
        let suback = next_text(&mut stream).await?;
        if !suback.contains("SUBACK") {
            bail!("SUBSCRIBE answered {suback}");
        }
        let received = Arc::clone(&received);
        readers.push(tokio::spawn(async move {
            let _sink = sink;
            let mut count = 0;
            while count < expected {
                match stream.next().await {
                    Some(Ok(Message::Text(_))) => {
                        count += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::from(e)),
                    None => bail!("subscriber closed after {count} events"),
                }
            }
            Ok(())
        }));
    }
    let started = Instant::now();
    let (mut sink, mut stream) = hub.connect().await?;
    let body = payload(FANOUT_PAYLOAD_BYTES);
    // Publish in windows of 64 so the hub's commits carry several events.
    let window = Arc::new(Semaphore::new(64));
    let reader_window = Arc::clone(&window);
    let acks = tokio::spawn(async move {
        for _ in 0..FANOUT_EVENTS {
            next_text(&mut stream).await?;
            reader_window.add_permits(1);
        }
        anyhow::Ok(())
    });
    for i in 0..FANOUT_EVENTS {
        window.acquire().await?.forget();
        sink.send(Message::text(format!(
            r#"{{"op":"PUBLISH","topic":"fan.out","payload":{body},"rid":"{i}"}}"#
        )))
        .await?;
    }
    acks.await??;
    for reader in readers {
        reader.await??;
    }
    let elapsed = started.elapsed();
    let deliveries = received.load(Ordering::Relaxed) as usize;
    println!(
        "fanout: {} events ({} B payload) to {} ephemeral subscribers = {} deliveries in {:.2} s = {:.0} deliveries/s (target >= 300000)",
        FANOUT_EVENTS,
        FANOUT_PAYLOAD_BYTES,
        FANOUT_SUBSCRIBERS,
        deliveries,
        elapsed.as_secs_f64(),
        rate(deliveries, elapsed)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Publish-to-deliver latency at a steady 5,000 events/s

async fn latency(hub: &Hub) -> Result<()> {
    for group in [None, Some("latency")] {
        latency_run(hub, group).await?;
    }
    Ok(())
}

async fn latency_run(hub: &Hub, group: Option<&str>) -> Result<()> {
    let topic = format!("lat.{}", group.unwrap_or("live"));
    let (mut sub_sink, mut sub_stream) = hub.connect().await?;
    let subscribe = match group {
        Some(group) => format!(
            r#"{{"op":"SUBSCRIBE","topic":"{topic}","group":"{group}","opts":{{"max_inflight":1000}},"rid":"s"}}"#
        ),
        None => format!(r#"{{"op":"SUBSCRIBE","topic":"{topic}","rid":"s"}}"#),
    };
    sub_sink.send(Message::text(subscribe)).await?;
    let suback = next_text(&mut sub_stream).await?;
    if !suback.contains("SUBACK") {
        bail!("SUBSCRIBE answered {suback}");
    }
    let origin = Instant::now();
    let total = (LATENCY_RATE * LATENCY_SECONDS) as usize;
    let ack_topic = topic.clone();
    let group_name = group.map(str::to_owned);
    let subscriber = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..total {
            let text = next_text(&mut sub_stream).await?;
            let now = origin.elapsed().as_micros() as u64;
            let frame: EventFrame<'_> = serde_json::from_str(&text)?;
            let event = frame.event.context("EVENT without event")?;
            let sent: u64 = event.payload.context("no payload")?.get().parse()?;
            histogram.record(now.saturating_sub(sent).max(1))?;
            let _ = frame.ctx;
            if let Some(group) = &group_name {
                sub_sink
                    .send(Message::text(format!(
                        r#"{{"op":"ACK","topic":"{ack_topic}","group":"{group}","id":"{}"}}"#,
                        event.id
                    )))
                    .await?;
            }
        }
        anyhow::Ok(histogram)
    });
    let (mut sink, mut stream) = hub.connect().await?;
    // Drain PUBACKs in the background.
    let acks = tokio::spawn(async move {
        for _ in 0..total {
            next_text(&mut stream).await?;
        }
        anyhow::Ok(())
    });
    let interval = Duration::from_nanos(1_000_000_000 / LATENCY_RATE);
    let start = Instant::now();
    for i in 0..total {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        // The payload is the send time in µs since `origin`.
        let sent = origin.elapsed().as_micros() as u64;
        sink.send(Message::text(format!(
            r#"{{"op":"PUBLISH","topic":"{topic}","payload":{sent},"rid":"{i}"}}"#
        )))
        .await?;
    }
    let achieved = rate(total, start.elapsed());
    acks.await??;
    let histogram = subscriber.await??;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "latency ({}): {} events at {:.0} events/s: publish-to-deliver p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (target p99 <= 2 ms)",
        if group.is_some() {
            "durable group, ACKed"
        } else {
            "ephemeral"
        },
        total,
        achieved,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Memory per idle connection

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

async fn idle(hub: &Hub) -> Result<()> {
    let Some(pid) = hub.pid() else {
        println!("idle: skipped (the hub is not our subprocess)");
        return Ok(());
    };
    // Warm up allocator arenas and runtime structures with a few
    // connections first, so the delta is per connection.
    let mut connections = Vec::with_capacity(IDLE_CONNECTIONS + 100);
    for _ in 0..100 {
        connections.push(hub.connect().await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut pending = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        pending.push(hub.connect());
        if pending.len() == 100 {
            for connection in futures_util::future::join_all(pending.drain(..)).await {
                connections.push(connection?);
            }
        }
    }
    for connection in futures_util::future::join_all(pending.drain(..)).await {
        connections.push(connection?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    let per_connection = (after.saturating_sub(before)) as f64 * 1024.0 / IDLE_CONNECTIONS as f64;
    println!(
        "idle: {} authenticated idle connections: hub RSS {} KiB -> {} KiB = {:.0} bytes ({:.1} KiB) per connection (target <= 16 KiB)",
        IDLE_CONNECTIONS,
        before,
        after,
        per_connection,
        per_connection / 1024.0
    );
    drop(connections);
    Ok(())
}
