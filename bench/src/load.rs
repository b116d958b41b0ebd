//! The load run: publishers and subscribers on their own connections.
//!
//! Every publisher keeps at most `in_flight` PUBLISHes unanswered (and is
//! paced when a total `rate` is set); every payload carries its send time,
//! so subscribers measure publish-to-deliver latency and publishers
//! send-to-PUBACK latency. Subscribers are ephemeral (`groups == 0`: each
//! gets every event) or members of `groups` durable groups (each group gets
//! every event once, shared by its members, every delivery ACKed).
//!
//! Bounded: publishing stops after `count` events or `duration`; the
//! subscribers then get `drain_timeout` to receive what was stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::proc_stats::{Meter, Usage};
use crate::report::Percentiles;
use crate::target::Hub;
use crate::ws::{self, Sink, Stream};

/// Largest latency recorded (60 s, in µs); larger values are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadOptions {
    /// Publishing connections (at least 1).
    pub publishers: usize,
    /// Subscribing connections.
    pub subscribers: usize,
    /// 0: ephemeral subscriptions; N: subscribers are members of N durable
    /// groups (subscriber i joins group i mod N) and ACK every delivery.
    pub groups: usize,
    /// Payload size in bytes (JSON, at least ~20 for the send stamp).
    pub payload_bytes: usize,
    /// Unanswered PUBLISHes per publisher.
    pub in_flight: usize,
    /// Events to publish in all (split among publishers)…
    pub count: Option<u64>,
    /// …or publish for this long.
    #[serde(with = "seconds")]
    pub duration: Option<Duration>,
    /// Total publish rate in events/s (paced); `None`: as fast as the
    /// window allows.
    pub rate: Option<f64>,
    /// Topic published to; subscribers subscribe to exactly this topic.
    pub topic: String,
    /// Durable groups: `opts.max_inflight` of each member.
    pub max_inflight: u32,
    /// Durable groups: publish everything first, then consume the backlog
    /// from the store (`from: earliest`); measures consume throughput on
    /// its own. Delivery latency is not measured then.
    pub backlog: bool,
    /// How long subscribers may take after the last PUBACK.
    #[serde(with = "seconds")]
    pub drain_timeout: Option<Duration>,
    /// Subscribers that record latency (the others only count, to keep
    /// large fan-outs cheap for the harness).
    pub latency_subscribers: usize,
    /// Other hubs of the same cluster the subscribers connect to, in turn
    /// (empty: the hub the publishers use). Publish → deliver latency then
    /// includes the delivery across hubs.
    pub subscribe_urls: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            publishers: 1,
            subscribers: 0,
            groups: 0,
            payload_bytes: 256,
            in_flight: 256,
            count: Some(10_000),
            duration: None,
            rate: None,
            topic: "bench.load".to_owned(),
            max_inflight: 1000,
            backlog: false,
            drain_timeout: Some(Duration::from_secs(30)),
            latency_subscribers: 32,
            subscribe_urls: Vec::new(),
        }
    }
}

mod seconds {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

impl LoadOptions {
    pub fn validate(&self) -> Result<()> {
        if self.publishers == 0 {
            bail!("--publishers must be at least 1");
        }
        if self.in_flight == 0 {
            bail!("--in-flight must be at least 1");
        }
        if self.count.is_none() == self.duration.is_none() {
            bail!("give exactly one of --count and --duration (every run is bounded)");
        }
        if self.count == Some(0) {
            bail!("--count must be at least 1");
        }
        if self.groups > 0 && self.subscribers < self.groups {
            bail!("--subscribers must be at least --groups (every group needs a member)");
        }
        if self.backlog && self.groups == 0 {
            bail!("--backlog needs --groups (ephemeral subscribers only get new events)");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--rate must be a positive number of events per second");
        }
        if !(1..=10_000).contains(&self.max_inflight) {
            bail!("--max-inflight must be within 1..=10000");
        }
        Ok(())
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub options: LoadOptions,
    /// PUBACKs received.
    pub published: u64,
    /// PUBLISHes refused with `rate_limited` (the harness waits out
    /// `retry_after_ms` and does not send them again).
    pub rate_limited: u64,
    pub publish_seconds: f64,
    /// PUBACKs per second.
    pub publish_rate: f64,
    /// Send to PUBACK.
    pub publish_latency_us: Option<Percentiles>,
    /// `published` × subscribers (ephemeral) or × groups.
    pub expected_deliveries: u64,
    pub delivered: u64,
    /// From the first PUBLISH (backlog: from the subscriptions) to the last
    /// delivery.
    pub deliver_seconds: f64,
    pub delivery_rate: f64,
    /// Send to EVENT, on the latency subscribers.
    pub deliver_latency_us: Option<Percentiles>,
    /// The hub process over the run, when its pid is known.
    pub hub: Option<Usage>,
    /// Backlog runs: the hub process while the groups consumed.
    pub hub_consume: Option<Usage>,
    /// This harness over the run (it shares the machine with the hub).
    pub harness: Option<Usage>,
}

/// Shared counters of one run.
#[derive(Debug)]
struct Progress {
    origin: Instant,
    delivered: AtomicU64,
    /// µs since `origin` of the latest delivery.
    last_delivery_us: AtomicU64,
}

impl Progress {
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, us: u64) {
    histogram.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Runs the load against `hub`.
pub async fn run(hub: &Hub, options: &LoadOptions) -> Result<LoadReport> {
    options.validate()?;
    let progress = Arc::new(Progress {
        origin: Instant::now(),
        delivered: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
    });
    let mut hub_meter = hub.pid.map(Meter::start).transpose()?;
    let harness_meter = Meter::start(std::process::id()).ok();
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut subscribers = JoinSet::new();
    if !options.backlog {
        start_subscribers(hub, options, &progress, &stop_rx, &mut subscribers).await?;
    }

    let publish_started = progress.now_us();
    let published = publish_all(hub, options, &progress, hub_meter.as_mut()).await?;
    let publish_ended = progress.now_us();

    // Backlog: the hub's CPU while the group consumes, on its own.
    let mut consume_meter = None;
    let deliver_started = if options.backlog {
        consume_meter = hub.pid.map(Meter::start).transpose()?;
        let started = progress.now_us();
        start_subscribers(hub, options, &progress, &stop_rx, &mut subscribers).await?;
        started
    } else {
        publish_started
    };
    let factor = if options.groups > 0 {
        options.groups
    } else {
        options.subscribers
    } as u64;
    let expected = published.acked * factor;
    let drain_deadline = Instant::now() + options.drain_timeout.unwrap_or(Duration::from_secs(30));
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut samples = 0u32;
    while progress.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tick.tick().await;
        samples += 1;
        if samples.is_multiple_of(10)
            && let Some(meter) = hub_meter.as_mut()
        {
            meter.sample();
        }
        if subscribers.is_empty() {
            break;
        }
        // A subscriber that failed ends the run with its error.
        if let Some(Some(done)) = subscribers.join_next().now_or_never() {
            done??;
        }
    }
    let _ = stop_tx.send(true);
    let mut deliver_histogram = histogram();
    while let Some(done) = subscribers.join_next().await {
        if let Some(latencies) = done?? {
            deliver_histogram.add(latencies)?;
        }
    }
    let hub_usage = hub_meter.map(Meter::finish).transpose()?;
    let hub_consume = consume_meter.map(Meter::finish).transpose()?;
    let harness_usage = harness_meter.and_then(|m| m.finish().ok());

    let delivered = progress.delivered.load(Ordering::Relaxed);
    let last_delivery = progress.last_delivery_us.load(Ordering::Relaxed);
    let deliver_seconds = last_delivery.saturating_sub(deliver_started) as f64 / 1e6;
    let publish_seconds = publish_ended.saturating_sub(publish_started) as f64 / 1e6;
    Ok(LoadReport {
        options: options.clone(),
        published: published.acked,
        rate_limited: published.rate_limited,
        publish_seconds,
        publish_rate: per_second(published.acked, publish_seconds),
        publish_latency_us: Percentiles::of(&published.latency),
        expected_deliveries: expected,
        delivered,
        deliver_seconds,
        delivery_rate: per_second(delivered, deliver_seconds),
        deliver_latency_us: if options.backlog {
            None
        } else {
            Percentiles::of(&deliver_histogram)
        },
        hub: hub_usage,
        hub_consume,
        harness: harness_usage,
    })
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------
// Subscribers

type SubscriberResult = Result<Option<Histogram<u64>>>;

async fn start_subscribers(
    hub: &Hub,
    options: &LoadOptions,
    progress: &Arc<Progress>,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<SubscriberResult>,
) -> Result<()> {
    // Subscribers on other hubs of a cluster, in turn (same token).
    let others = options
        .subscribe_urls
        .iter()
        .map(|url| Hub::external(url, None).map(|other| other.with_token(hub.token.clone())))
        .collect::<Result<Vec<Hub>>>()?;
    // Connect in batches: a thousand handshakes at once only measure the
    // accept queue.
    let mut index = 0;
    while index < options.subscribers {
        let batch_end = (index + 100).min(options.subscribers);
        let connecting = (index..batch_end).map(|i| {
            let group = (options.groups > 0).then(|| format!("g{}", i % options.groups));
            let target = if others.is_empty() {
                hub
            } else {
                &others[i % others.len()]
            };
            async move {
                let (mut sink, mut stream) = ws::connect(target).await?;
                let opts = match (&group, options.backlog) {
                    (Some(_), true) => format!(
                        r#"{{"from":"earliest","max_inflight":{}}}"#,
                        options.max_inflight
                    ),
                    (Some(_), false) => format!(r#"{{"max_inflight":{}}}"#, options.max_inflight),
                    (None, _) => "{}".to_owned(),
                };
                ws::subscribe(
                    &mut sink,
                    &mut stream,
                    &options.topic,
                    group.as_deref(),
                    &opts,
                )
                .await?;
                anyhow::Ok((i, group, sink, stream))
            }
        });
        for connected in futures_util::future::join_all(connecting).await {
            let (i, group, sink, stream) = connected.context("starting a subscriber")?;
            let subscriber = Subscriber {
                topic: options.topic.clone(),
                group,
                latency: (!options.backlog && i < options.latency_subscribers).then(histogram),
                progress: Arc::clone(progress),
            };
            tasks.spawn(subscriber.run(sink, stream, stop.clone()));
        }
        index = batch_end;
    }
    Ok(())
}

struct Subscriber {
    topic: String,
    group: Option<String>,
    latency: Option<Histogram<u64>>,
    progress: Arc<Progress>,
}

impl Subscriber {
    /// Reads until told to stop; ACKs group deliveries once per read burst.
    async fn run(
        mut self,
        mut sink: Sink,
        mut stream: Stream,
        mut stop: watch::Receiver<bool>,
    ) -> SubscriberResult {
        let mut burst = Vec::new();
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                message = stream.next() => {
                    match message {
                        Some(Ok(Message::Text(text))) => burst.push(text),
                        Some(Ok(Message::Close(frame))) => bail!("the hub closed a subscriber: {frame:?}"),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(e.into()),
                        None => bail!("the hub closed a subscriber"),
                    }
                    while burst.len() < 1024
                        && let Some(Some(Ok(Message::Text(text)))) = stream.next().now_or_never()
                    {
                        burst.push(text);
                    }
                    self.handle_burst(&mut sink, &burst).await?;
                    burst.clear();
                }
            }
        }
        let _ = sink.close().await;
        Ok(self.latency)
    }

    async fn handle_burst(
        &mut self,
        sink: &mut Sink,
        burst: &[tokio_tungstenite::tungstenite::Utf8Bytes],
    ) -> Result<()> {
        let needs_parse = self.group.is_some() || self.latency.is_some();
        let mut events = 0;
        let now = self.progress.now_us();
        for text in burst {
            if !text.starts_with(r#"{"op":"EVENT""#) {
                continue;
            }
            events += 1;
            if !needs_parse {
                continue;
            }
            let frame = ws::parse(text)?;
            let event = frame.event.context("EVENT without event")?;
            if let (Some(histogram), Some(payload)) = (&mut self.latency, event.payload)
                && let Some(sent) = ws::stamp_of(payload)
            {
                record(histogram, now.saturating_sub(sent));
            }
            if let Some(group) = &self.group {
                let ack = format!(
                    r#"{{"op":"ACK","topic":"{}","group":"{group}","id":"{}"}}"#,
                    self.topic, event.id
                );
                sink.feed(Message::text(ack)).await?;
            }
        }
        if self.group.is_some() && events > 0 {
            sink.flush().await?;
        }
        if events > 0 {
            self.progress.delivered.fetch_add(events, Ordering::Relaxed);
            self.progress
                .last_delivery_us
                .fetch_max(now, Ordering::Relaxed);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Publishers

struct Published {
    acked: u64,
    rate_limited: u64,
    latency: Histogram<u64>,
}

async fn publish_all(
    hub: &Hub,
    options: &LoadOptions,
    progress: &Arc<Progress>,
    mut hub_meter: Option<&mut Meter>,
) -> Result<Published> {
    let mut tasks = JoinSet::new();
    let deadline = options.duration.map(|d| Instant::now() + d);
    for index in 0..options.publishers {
        let connection = ws::connect(hub).await.context("starting a publisher")?;
        let quota = options.count.map(|count| {
            let per = count / options.publishers as u64;
            per + u64::from((index as u64) < count % options.publishers as u64)
        });
        let publisher = Publisher {
            index,
            publishers: options.publishers,
            topic: options.topic.clone(),
            payload_bytes: options.payload_bytes,
            in_flight: options.in_flight,
            quota,
            deadline,
            interval: options.rate.map(|rate| Duration::from_secs_f64(1.0 / rate)),
            progress: Arc::clone(progress),
        };
        tasks.spawn(publisher.run(connection));
    }
    let mut total = Published {
        acked: 0,
        rate_limited: 0,
        latency: histogram(),
    };
    let mut sampler = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => {
                    let one = done??;
                    total.acked += one.acked;
                    total.rate_limited += one.rate_limited;
                    total.latency.add(&one.latency)?;
                }
                None => break,
            },
            _ = sampler.tick() => {
                if let Some(meter) = hub_meter.as_deref_mut() {
                    meter.sample();
                }
            }
        }
    }
    Ok(total)
}

struct Publisher {
    index: usize,
    publishers: usize,
    topic: String,
    payload_bytes: usize,
    in_flight: usize,
    quota: Option<u64>,
    deadline: Option<Instant>,
    /// Between two events of the whole run (paced mode).
    interval: Option<Duration>,
    progress: Arc<Progress>,
}

/// Answers the publisher's reader saw.
struct Answers {
    acked: u64,
    rate_limited: u64,
    latency: Histogram<u64>,
}

impl Publisher {
    async fn run(self, (mut sink, stream): (Sink, Stream)) -> Result<Published> {
        let window = Arc::new(Semaphore::new(self.in_flight));
        let sent = Arc::new(AtomicU64::new(0));
        // µs since origin before which nothing is sent (rate_limited).
        let paused_until = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = watch::channel(false);
        let reader = tokio::spawn(read_answers(
            stream,
            Arc::clone(&window),
            Arc::clone(&sent),
            done_rx,
            Arc::clone(&paused_until),
            Arc::clone(&self.progress),
        ));
        let started = Instant::now();
        let mut number: u64 = 0;
        loop {
            if self.quota.is_some_and(|quota| number >= quota)
                || self
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
            {
                break;
            }
            if let Some(interval) = self.interval {
                // Event k of the run is due at k × interval; this publisher
                // sends k = index, index + publishers, …
                let k = number * self.publishers as u64 + self.index as u64;
                let due = started + interval.mul_f64(k as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let pause = paused_until.load(Ordering::Relaxed);
            let now = self.progress.now_us();
            if pause > now {
                tokio::time::sleep(Duration::from_micros(pause - now)).await;
            }
            window.acquire().await?.forget();
            let stamp = self.progress.now_us();
            let frame = format!(
                r#"{{"op":"PUBLISH","topic":"{}","payload":{},"rid":"{number}.{stamp}"}}"#,
                self.topic,
                ws::stamped_payload(stamp, self.payload_bytes)
            );
            // Flush when nothing else can go right away: one write per
            // burst, not per frame.
            sink.feed(Message::text(frame)).await?;
            number += 1;
            sent.store(number, Ordering::Release);
            if self.interval.is_some() || window.available_permits() == 0 {
                sink.flush().await?;
            }
        }
        sink.flush().await?;
        let _ = done_tx.send(true);
        let answers = reader.await??;
        let _ = sink.close().await;
        Ok(Published {
            acked: answers.acked,
            rate_limited: answers.rate_limited,
            latency: answers.latency,
        })
    }
}

/// Counts PUBACKs (and refusals) until every sent PUBLISH is answered and
/// the writer is done.
async fn read_answers(
    mut stream: Stream,
    window: Arc<Semaphore>,
    sent: Arc<AtomicU64>,
    mut done: watch::Receiver<bool>,
    paused_until: Arc<AtomicU64>,
    progress: Arc<Progress>,
) -> Result<Answers> {
    let mut answers = Answers {
        acked: 0,
        rate_limited: 0,
        latency: histogram(),
    };
    loop {
        let answered = answers.acked + answers.rate_limited;
        let finished = *done.borrow();
        if finished && answered >= sent.load(Ordering::Acquire) {
            return Ok(answers);
        }
        // Always waiting on the socket (not polling) so that the PUBACK
        // latency is not inflated by the reader's own sleep.
        let text = tokio::select! {
            text = ws::next_text(&mut stream) => text?,
            changed = done.changed(), if !finished => {
                if changed.is_err() {
                    // The writer failed and is gone; its error is the
                    // publisher's result.
                    return Ok(answers);
                }
                continue;
            }
        };
        let frame = ws::parse(&text)?;
        let now = progress.now_us();
        let stamp = frame
            .rid
            .and_then(|rid| rid.split_once('.'))
            .and_then(|(_, stamp)| stamp.parse::<u64>().ok());
        match (frame.op, frame.code) {
            ("PUBACK", _) => {
                answers.acked += 1;
                if let Some(stamp) = stamp {
                    record(&mut answers.latency, now.saturating_sub(stamp));
                }
            }
            ("ERR", Some("rate_limited")) => {
                answers.rate_limited += 1;
                // Each refusal adds its wait: after k refusals the quota
                // has refilled about k tokens when sending resumes, so the
                // window does not hammer the hub (which closes connections
                // that keep publishing while refused).
                let wait_us = frame.retry_after_ms.unwrap_or(1).saturating_mul(1000);
                let from = paused_until.load(Ordering::Relaxed).max(now);
                paused_until.store(from + wait_us, Ordering::Relaxed);
            }
            _ => bail!("unexpected answer to PUBLISH: {text:.300}"),
        }
        window.add_permits(1);
    }
}
