//! Shared by the store benches: filling an embedded store and percentiles.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::Result;
use promhub_core::Topic;
use promhub_core::frames::to_payload;
use promhub_hub::store::{CommitBatch, NewEvent, Store};

/// Events per fill commit.
const BATCH: usize = 10_000;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub async fn fill(store: &dyn Store, events: usize, topics: usize) -> Result<()> {
    let started = Instant::now();
    let mut written = 0;
    while written < events {
        let count = BATCH.min(events - written);
        let batch = (0..count)
            .map(|i| {
                let n = written + i;
                Ok(NewEvent {
                    id: format!("e{n}"),
                    client_id: false,
                    topic: Topic::parse(&format!("bench.t{}", n % topics))?,
                    ts: 1_700_000_000_000 + n as u64,
                    key: None,
                    payload: to_payload(&n)?,
                    headers: None,
                    tags: None,
                    caused_by: None,
                    sid: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        store
            .commit(CommitBatch {
                events: batch,
                ..CommitBatch::default()
            })
            .await?;
        written += count;
    }
    println!(
        "filled {events} events over {topics} topics in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}
