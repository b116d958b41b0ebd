//! Retention on a large embedded log, and what it costs publishers. Fills a
//! store with `PROMHUB_BENCH_EVENTS` events (default 1,000,000) over 20
//! topics, then applies a count limit that removes half of them with the
//! hub's own `retention::apply_once` (bounded, paced passes) while a
//! publisher commits one event every 2 ms. Prints events removed per
//! second and the publisher's commit latency before and during retention.
//!
//! `cargo bench -p promhub-hub --bench retention`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use promhub_core::frames::to_payload;
use promhub_core::{Pattern, Topic};
use promhub_hub::retention;
use promhub_hub::store::sqlite::{SqliteOptions, SqliteStore};
use promhub_hub::store::{CommitBatch, NewEvent, RetentionLimits, RetentionPolicy, Store};

mod support;
use support::{env_usize, fill, percentile};

const TOPICS: usize = 20;

/// Commits one event every 2 ms until `stop`; returns each commit's time.
async fn publish_until(store: Arc<SqliteStore>, stop: Arc<AtomicBool>) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let event = NewEvent {
            id: format!("live-{n}"),
            client_id: false,
            topic: Topic::parse("live.x")?,
            ts: 1_700_000_000_000,
            key: None,
            payload: to_payload(&n)?,
            headers: None,
            tags: None,
            caused_by: None,
            sid: None,
        };
        let started = Instant::now();
        store
            .commit(CommitBatch {
                events: vec![event],
                ..CommitBatch::default()
            })
            .await?;
        times.push(started.elapsed());
        n += 1;
    }
    Ok(times)
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort_unstable();
    format!(
        "{} commits: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let events = env_usize("PROMHUB_BENCH_EVENTS", 1_000_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&root)?;
    let dir = tempfile::tempdir_in(&root)?;
    let store = Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default())?);
    fill(store.as_ref(), events, TOPICS).await?;

    // Baseline: the publisher alone for one second.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_until(Arc::clone(&store), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let baseline = publisher.await??;

    // Keep the newest half of every bench topic.
    let keep = (events / TOPICS / 2) as u64;
    let policy = RetentionPolicy {
        default: RetentionLimits::default(),
        rules: vec![(
            Pattern::parse("bench.*")?,
            RetentionLimits {
                max_age_ms: None,
                max_events: Some(keep),
            },
        )],
    };
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_until(Arc::clone(&store), Arc::clone(&stop)));
    let started = Instant::now();
    let (_keep_running, running) = tokio::sync::watch::channel(false);
    let removed = retention::apply_once(store.as_ref(), &policy, &running).await?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = publisher.await??;

    let left = store.count_after(0).await?;
    println!(
        "removed {removed} of {events} events in {:.2} s: {:.0} events/s; {left} left",
        elapsed.as_secs_f64(),
        removed as f64 / elapsed.as_secs_f64(),
    );
    println!("publisher before retention: {}", summary(baseline));
    println!("publisher during retention: {}", summary(during));
    store.close().await?;
    Ok(())
}
