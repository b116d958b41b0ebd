//! Memory per idle connection: the hub's RSS before and after opening N
//! authenticated connections that then do nothing.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::proc_stats::memory_kib;
use crate::target::Hub;
use crate::ws;

#[derive(Debug, Clone, Serialize)]
pub struct IdleOptions {
    pub connections: usize,
    /// Connections opened (and kept) before the baseline, so allocator
    /// arenas and runtime structures are warm and the delta is per
    /// connection.
    pub warmup: usize,
}

impl Default for IdleOptions {
    fn default() -> Self {
        IdleOptions {
            connections: 10_000,
            warmup: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub options: IdleOptions,
    pub connections: usize,
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
    pub bytes_per_connection: f64,
}

pub async fn run(hub: &Hub, options: &IdleOptions) -> Result<IdleReport> {
    let pid = hub
        .pid
        .context("idle needs the hub's pid (--spawn-hub or --hub-pid)")?;
    if options.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let mut open = Vec::with_capacity(options.warmup + options.connections);
    for _ in 0..options.warmup {
        open.push(ws::connect(hub).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = memory_kib(pid)?;
    let mut remaining = options.connections;
    while remaining > 0 {
        let batch = remaining.min(100);
        for connection in futures_util::future::join_all((0..batch).map(|_| ws::connect(hub))).await
        {
            open.push(connection.context("opening an idle connection")?);
        }
        remaining -= batch;
    }
    // Let the hub settle (connection tasks reach their idle state).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, _) = memory_kib(pid)?;
    drop(open);
    Ok(IdleReport {
        options: options.clone(),
        connections: options.connections,
        rss_kib_before: before,
        rss_kib_after: after,
        bytes_per_connection: after.saturating_sub(before) as f64 * 1024.0
            / options.connections as f64,
    })
}
