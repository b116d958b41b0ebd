//! Many durable groups at once: N groups, each with a connected member
//! (distinct exact patterns, plus some wildcard ones), none of which the
//! measured traffic matches. What they cost the hub: memory per group, and
//! (with [`crate::load`] before and after) whether a publish still costs
//! the same — a commit should touch only the groups it matches.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::proc_stats::memory_kib;
use crate::target::Hub;
use crate::ws;

#[derive(Debug, Clone, Serialize)]
pub struct GroupsOptions {
    /// First segment of every pattern.
    pub prefix: String,
    /// Groups with exact patterns (`PREFIX.N`).
    pub exact: usize,
    /// Groups with wildcard patterns (`PREFIX.wN.*`).
    pub wildcard: usize,
    /// Groups per member connection (at most the hub's
    /// `limits.max_groups_per_connection`, default 128; for live
    /// subscriptions `max_subscriptions_per_connection`, default 1024).
    pub groups_per_connection: usize,
    /// Live (ephemeral) subscriptions instead of durable groups.
    pub live: bool,
}

impl Default for GroupsOptions {
    fn default() -> Self {
        GroupsOptions {
            prefix: "many".to_owned(),
            exact: 9_900,
            wildcard: 100,
            groups_per_connection: 1,
            live: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupsReport {
    pub options: GroupsOptions,
    pub groups: usize,
    pub connections: usize,
    pub setup_seconds: f64,
    pub rss_kib_before: Option<u64>,
    pub rss_kib_after: Option<u64>,
    /// Hub memory per group with its member connection.
    pub bytes_per_group: Option<f64>,
}

/// The member connections, kept open (and read, so the hub's pings are
/// answered) until dropped.
#[derive(Debug)]
pub struct OpenGroups {
    readers: JoinSet<()>,
}

impl Drop for OpenGroups {
    fn drop(&mut self) {
        self.readers.abort_all();
    }
}

/// Subscribes the groups, each member waiting for its SUBACKs, 100
/// connections at a time.
pub async fn open(hub: &Hub, options: &GroupsOptions) -> Result<(OpenGroups, GroupsReport)> {
    if options.groups_per_connection == 0 {
        bail!("groups per connection must be at least 1");
    }
    let prefix = &options.prefix;
    let patterns: Vec<String> = (0..options.exact)
        .map(|i| format!("{prefix}.{i}"))
        .chain((0..options.wildcard).map(|i| format!("{prefix}.w{i}.*")))
        .collect();
    let chunks: Vec<Vec<String>> = patterns
        .chunks(options.groups_per_connection)
        .map(<[String]>::to_vec)
        .collect();
    let before = hub.pid.map(memory_kib).transpose()?.map(|(rss, _)| rss);
    let started = Instant::now();
    let mut readers = JoinSet::new();
    for batch in chunks.chunks(100) {
        let group = (!options.live).then_some("g");
        let connecting = batch.iter().map(|chunk| async move {
            let (mut sink, mut stream) = ws::connect(hub).await?;
            for pattern in chunk {
                ws::subscribe(&mut sink, &mut stream, pattern, group, "{}").await?;
            }
            anyhow::Ok((sink, stream))
        });
        for connected in futures_util::future::join_all(connecting).await {
            let (sink, mut stream) = connected.context("opening a group member")?;
            readers.spawn(async move {
                let _sink = sink;
                while let Some(Ok(_)) = stream.next().await {}
            });
        }
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    // Let the hub settle (group state written, connection tasks idle).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = hub.pid.map(memory_kib).transpose()?.map(|(rss, _)| rss);
    let groups = patterns.len();
    let report = GroupsReport {
        options: options.clone(),
        groups,
        connections: chunks.len(),
        setup_seconds,
        rss_kib_before: before,
        rss_kib_after: after,
        bytes_per_group: before
            .zip(after)
            .map(|(b, a)| a.saturating_sub(b) as f64 * 1024.0 / groups.max(1) as f64),
    };
    Ok((OpenGroups { readers }, report))
}
