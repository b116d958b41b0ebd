//! `/lag` with 1,000,000 events in the log (known bug 8: the original design
//! scanned the log per request). Fills an embedded store under the target
//! dir, starts a real hub on it, and times `GET /lag` over one keep-alive
//! HTTP connection for groups far behind, half way and caught up, with a
//! wildcard and an exact pattern. Prints p50 / p99 / max per case, and the
//! store's own `count_matching_after` for comparison.
//!
//! `cargo bench -p promhub-hub --bench ops_lag`
//! (`PROMHUB_BENCH_EVENTS`: log size, default 1,000,000;
//! `PROMHUB_BENCH_TOPICS`: distinct topics, default 20.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

mod support;
use promhub_core::Pattern;
use promhub_hub::auth::Secret;
use promhub_hub::store::sqlite::{SqliteOptions, SqliteStore};
use promhub_hub::store::{CommitBatch, GroupKey, GroupProgress, Store};
use promhub_hub::{HubConfig, HubParts};
use support::{env_usize, fill, percentile};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const REQUESTS: usize = 2_000;

/// One keep-alive HTTP/1.1 connection.
struct Http {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Http {
    async fn connect(host: &str) -> Result<Http> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Http {
            reader: BufReader::new(stream),
            host: host.to_owned(),
        })
    }

    async fn get(&mut self, path: &str) -> Result<String> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n",
            self.host
        );
        self.reader.get_mut().write_all(request.as_bytes()).await?;
        let mut status = String::new();
        self.reader.read_line(&mut status).await?;
        if !status.contains(" 200 ") {
            bail!("GET {path}: {status}");
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await?;
        Ok(String::from_utf8(body)?)
    }
}

fn report(case: &str, mut times: Vec<Duration>, answer: &str) {
    times.sort_unstable();
    println!(
        "{case:<44} p50 {:>7.1} µs  p99 {:>7.1} µs  max {:>7.1} µs   {answer}",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let events = env_usize("PROMHUB_BENCH_EVENTS", 1_000_000);
    let topics = env_usize("PROMHUB_BENCH_TOPICS", 20).max(1);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&root)?;
    let dir = tempfile::tempdir_in(&root)?;
    let store = Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default())?);
    fill(store.as_ref(), events, topics).await?;
    let head = store.last_seq().await?;
    let groups = [
        ("bench.*", "behind", 0),
        ("bench.*", "halfway", head / 2),
        ("bench.*", "caught-up", head.saturating_sub(10)),
        ("bench.t3", "exact-behind", 0),
    ];
    store
        .commit(CommitBatch {
            progress: groups
                .iter()
                .map(|&(pattern, group, cursor)| GroupProgress {
                    key: GroupKey {
                        pattern: pattern.to_owned(),
                        group: group.to_owned(),
                    },
                    cursor,
                    done_above: Vec::new(),
                    attempt_changes: Vec::new(),
                })
                .collect(),
            ..CommitBatch::default()
        })
        .await?;

    for &(pattern, group, cursor) in &groups {
        let pattern_parsed = Pattern::parse(pattern)?;
        let mut times = Vec::with_capacity(REQUESTS);
        let mut count = 0;
        for _ in 0..REQUESTS {
            let started = Instant::now();
            count = store.count_matching_after(&pattern_parsed, cursor).await?;
            times.push(started.elapsed());
        }
        report(
            &format!("store count_matching_after {pattern} {group}"),
            times,
            &format!("count {count}"),
        );
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let host = listener.local_addr()?.to_string();
    let config = HubConfig {
        data: dir.path().to_path_buf(),
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        ..HubConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let store_for_hub: Arc<dyn Store> = store;
    let hub = tokio::spawn(promhub_hub::run_with(
        listener,
        config,
        HubParts {
            store: Some(store_for_hub),
            ..HubParts::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let mut http = None;
    for _ in 0..100 {
        match Http::connect(&host).await {
            Ok(connected) => {
                http = Some(connected);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut http = http.context("hub did not start")?;
    for &(pattern, group, _) in &groups {
        let path = format!("/lag?topic={pattern}&group={group}");
        // Warm-up (page cache, prepared statements).
        let mut answer = String::new();
        for _ in 0..50 {
            answer = http.get(&path).await?;
        }
        let mut times = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let started = Instant::now();
            answer = http.get(&path).await?;
            times.push(started.elapsed());
        }
        let value: serde_json::Value = serde_json::from_str(&answer)?;
        report(
            &format!("GET /lag {pattern} {group}"),
            times,
            &format!(
                "lag_events {} lag_ms {}",
                value["lag_events"], value["lag_ms"]
            ),
        );
    }
    drop(http);
    let _ = stop.send(());
    hub.await??;
    Ok(())
}
