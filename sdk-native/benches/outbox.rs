//! Outbox commit-to-delivery latency (prints numbers; nothing is
//! asserted): from the application's commit (embedded outbox) to a
//! subscriber's receipt, through a [`Drainer`] publishing with a [`Client`]
//! to a real hub (in this process), p50/p99/max. The drain rate per store is
//! promhub-outbox's `drain` bench.
//!
//! `cargo bench -p promhub --bench outbox`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use promhub::outbox::sqlite::{SqliteOutbox, with_transaction};
use promhub::outbox::{Drainer, DrainerOptions, NewRecord};
use promhub::{Client, ClientConfig, SubscribeOptions};

/// The measurement stops after this long (and reports what it received).
const BUDGET: Duration = Duration::from_secs(60);

fn record(n: usize) -> NewRecord {
    NewRecord::new(
        "orders.created",
        &serde_json::json!({ "order": n, "total": 42 }),
    )
    .expect("record")
}

async fn bench_latency() -> Result<()> {
    const EVENTS: usize = 2_000;
    let poll = Duration::from_millis(5);
    println!(
        "== commit-to-delivery through a real hub (embedded outbox, embedded hub store, \
         drainer polling every {poll:?} when idle) =="
    );
    let dir = tempfile::tempdir()?;
    let config = promhub_hub::HubConfig {
        data: dir.path().join("hub"),
        ..promhub_hub::HubConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}{}", listener.local_addr()?, config.ws_path);
    let hub = tokio::spawn(promhub_hub::run(listener, config, std::future::pending()));

    let subscriber = Client::connect(&url, ClientConfig::new()).await?;
    let mut events = subscriber
        .subscribe::<serde_json::Value>("orders.**", None, SubscribeOptions::new())
        .await?;
    let publisher = Arc::new(Client::connect(&url, ClientConfig::new()).await?);
    let path = dir.path().join("app.db");
    let store = Arc::new(SqliteOutbox::open(&path)?);
    let drainer = Drainer::new(
        store,
        publisher,
        DrainerOptions {
            poll_interval: poll,
            ..DrainerOptions::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let draining = tokio::spawn(async move {
        drainer
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });

    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let writer = {
        let committed = Arc::clone(&committed);
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut conn = rusqlite::Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            for n in 0..EVENTS {
                let id = with_transaction(&mut conn, |tx| SqliteOutbox::enqueue_in(tx, record(n)))?;
                committed.lock().expect("lock").insert(id, Instant::now());
                // About 500 orders/s.
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })
    };
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    let start = Instant::now();
    while (histogram.len() as usize) < EVENTS && start.elapsed() < BUDGET {
        let Ok(Some(delivery)) = tokio::time::timeout(BUDGET, events.next()).await else {
            break;
        };
        let received = Instant::now();
        // The commit instant is recorded just after the commit returns; a
        // delivery can (rarely) win that race: counted as 0.
        let at = committed.lock().expect("lock").get(delivery.id()).copied();
        let micros = at.map_or(0, |at| received.saturating_duration_since(at).as_micros());
        histogram.record(u64::try_from(micros)?)?;
    }
    writer.await??;
    let _ = stop.send(());
    draining.await?;
    hub.abort();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{} events: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        histogram.len(),
        ms(0.5),
        ms(0.99),
        histogram.max() as f64 / 1000.0
    );
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench_latency())
}
