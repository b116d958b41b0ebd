//! The replay API over real HTTP: exact seq ranges in order, JSON pages and
//! the NDJSON export agree, the caller's token decides what is readable,
//! an import re-publishes with de-duplication, and an export of 1,000,000
//! events streams with the hub's memory staying flat.

mod common;

use std::time::Duration;

use common::jwt::{SECRET, claims_at};
use common::process::HubProcess;
use common::{Client, TestHub};
use promhub_core::Topic;
use promhub_hub::auth::Secret;
use promhub_hub::store::sqlite::{SqliteOptions, SqliteStore};
use promhub_hub::store::{CommitBatch, NewEvent, Store};
use serde_json::{Value, json};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(scope: &str) -> String {
    common::jwt::hs(
        jsonwebtoken::Algorithm::HS256,
        &claims_at(now_secs(), json!({ "scope": scope })),
    )
}

async fn jwt_hub() -> TestHub {
    TestHub::start_with(|config| {
        config.auth.jwt_secret = Some(Secret::new(SECRET));
    })
    .await
}

fn http_base(ws_url: &str) -> String {
    let addr = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port");
    format!("http://{addr}")
}

async fn client_with(hub: &TestHub, scope: &str) -> Client {
    let mut client = hub.connect().await;
    client
        .send_json(json!({ "op": "AUTH", "token": token(scope) }))
        .await;
    let ok = client.recv_json().await;
    assert_eq!(ok["op"], "OK", "{ok}");
    client
}

/// A plain-HTTP client (reqwest wants a TLS provider chosen even so).
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// GET with an optional bearer token: status and body.
async fn get(url: &str, bearer: Option<&str>, accept: Option<&str>) -> (u16, String) {
    let mut request = http().get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = tokio::time::timeout(common::HANG_GUARD, request.send())
        .await
        .expect("answer in time")
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .map(|line| serde_json::from_str(line).expect("an NDJSON line"))
        .collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// Publishes `count` events cycling over three topics; returns (seq, topic).
async fn publish_mix(publisher: &mut Client, count: usize) -> Vec<(u64, String)> {
    let topics = ["orders.created", "orders.cancelled", "secret.audit"];
    let mut stored = Vec::new();
    for i in 0..count {
        let topic = topics[i % topics.len()];
        let ack = publisher
            .publish(
                topic,
                json!({ "n": i }),
                json!({ "key": format!("k{}", i % 5) }),
            )
            .await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        stored.push((ack["seq"].as_u64().unwrap(), topic.to_owned()));
    }
    stored
}

#[tokio::test]
async fn an_exact_seq_range_comes_back_in_order_as_pages_and_as_ndjson() {
    let hub = jwt_hub().await;
    let base = http_base(&hub.url);
    let mut publisher = client_with(&hub, "publish:**").await;
    let stored = publish_mix(&mut publisher, 60).await;
    let reader = token("subscribe:orders.**");

    let (from, to) = (stored[10].0, stored[45].0);
    let expected: Vec<u64> = stored
        .iter()
        .filter(|(seq, topic)| (from..=to).contains(seq) && topic.starts_with("orders."))
        .map(|(seq, _)| *seq)
        .collect();
    assert!(expected.len() > 20);

    // One page holding the whole range.
    let url = format!("{base}/events?topic=orders.**&from_seq={from}&to_seq={to}&limit=1000");
    let (status, body) = get(&url, Some(&reader), None).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(seqs(events), expected);
    assert_eq!(page["next_from_seq"], Value::Null);
    assert_eq!(events[0]["payload"], json!({ "n": 10 }));
    assert!(events[0]["id"].as_str().is_some_and(|id| !id.is_empty()));

    // Pages of 7 followed by their cursor give the same events.
    let mut paged = Vec::new();
    let mut cursor = Some(from);
    let mut pages = 0;
    while let Some(from_seq) = cursor {
        let url = format!("{base}/events?topic=orders.**&from_seq={from_seq}&to_seq={to}&limit=7");
        let (status, body) = get(&url, Some(&reader), None).await;
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 7);
        paged.extend(seqs(events));
        cursor = page["next_from_seq"].as_u64();
        pages += 1;
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(paged, expected);

    // The NDJSON export, by path and by Accept header.
    let url = format!("{base}/events.ndjson?topic=orders.**&from_seq={from}&to_seq={to}");
    let (status, body) = get(&url, Some(&reader), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seqs(&ndjson(&body)), expected);
    let url = format!("{base}/events?topic=orders.**&from_seq={from}&to_seq={to}");
    let (status, body) = get(&url, Some(&reader), Some("application/x-ndjson")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seqs(&ndjson(&body)), expected);

    // A time range: everything was published just now.
    let first_ts = events[0]["ts"].as_u64().unwrap();
    let url = format!(
        "{base}/events.ndjson?topic=orders.created&from_ts={first_ts}&to_ts={}",
        first_ts + 3_600_000
    );
    let (status, body) = get(&url, Some(&reader), None).await;
    assert_eq!(status, 200, "{body}");
    let created = ndjson(&body);
    assert!(!created.is_empty());
    assert!(
        created
            .iter()
            .all(|e| e["topic"] == "orders.created" && e["ts"].as_u64().unwrap() >= first_ts)
    );
}

#[tokio::test]
async fn the_callers_token_decides_what_is_readable() {
    let hub = jwt_hub().await;
    let base = http_base(&hub.url);
    let mut publisher = client_with(&hub, "publish:**").await;
    let stored = publish_mix(&mut publisher, 30).await;
    let reader = token("subscribe:orders.**");

    // `**` is allowed (it overlaps orders.**) but only orders.* come back,
    // as a live subscription would receive them.
    let (status, body) = get(
        &format!("{base}/events.ndjson?topic=**"),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let visible = ndjson(&body);
    let expected: Vec<u64> = stored
        .iter()
        .filter(|(_, topic)| topic.starts_with("orders."))
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(seqs(&visible), expected);

    let (status, body) = get(
        &format!("{base}/events?topic=secret.*"),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "forbidden"
    );

    let (status, body) = get(&format!("{base}/events?topic=orders.**"), None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "no_token"
    );
    let (status, body) = get(
        &format!("{base}/events?topic=orders.**"),
        Some("forged.token.here"),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "jwt_invalid"
    );

    for bad in [
        "topic=orders..x",
        "topic=orders.**&limit=0",
        "topic=orders.**&limit=5000",
        "topic=orders.**&from_seq=abc",
        "topic=orders.**&from_seq=9&to_seq=3",
        "topic=orders.**&colour=blue",
        "from_seq=1",
    ] {
        let (status, body) = get(&format!("{base}/events?{bad}"), Some(&reader), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "bad_request",
            "{bad}"
        );
    }
}

async fn import(base: &str, bearer: &str, body: String) -> Value {
    let response = http()
        .post(format!("{base}/events/import"))
        .bearer_auth(bearer)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("import");
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.expect("report");
    serde_json::from_str(&body).expect("a JSON report")
}

#[tokio::test]
async fn an_import_republishes_once_and_live_subscribers_receive_it() {
    let source = jwt_hub().await;
    let mut publisher = client_with(&source, "publish:**").await;
    publish_mix(&mut publisher, 24).await;
    let admin = token("publish:** subscribe:**");
    let (status, export) = get(
        &format!("{}/events.ndjson?topic=orders.**", http_base(&source.url)),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let exported = ndjson(&export);
    assert_eq!(exported.len(), 16);

    let target = jwt_hub().await;
    let base = http_base(&target.url);
    let mut watcher = client_with(&target, "subscribe:orders.**").await;
    let suback = watcher.subscribe("orders.**", None, json!({})).await;
    assert_eq!(suback["op"], "SUBACK", "{suback}");

    // A malformed line and a forbidden one are reported, the rest imported.
    let body =
        format!("{export}not json\n{{\"id\":\"x1\",\"topic\":\"secret.audit\",\"payload\":1}}\n");
    let only_orders = token("publish:orders.**");
    let report = import(&base, &only_orders, body).await;
    assert_eq!(report["lines"], 18, "{report}");
    assert_eq!(report["imported"], 16, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["failed"], 2, "{report}");
    assert_eq!(report["errors"][0]["line"], 17, "{report}");
    assert_eq!(report["errors"][1]["line"], 18, "{report}");

    for original in &exported {
        let event = watcher.recv_event().await;
        assert_eq!(event["event"]["id"], original["id"]);
        assert_eq!(event["event"]["payload"], original["payload"]);
    }

    // The same export again: every event is a duplicate, nothing new stored.
    let again = import(&base, &only_orders, export.clone()).await;
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["duplicates"], 16, "{again}");

    let (status, body) = get(
        &format!("{base}/events.ndjson?topic=**"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let imported = ndjson(&body);
    assert_eq!(imported.len(), 16);
    for (copy, original) in imported.iter().zip(&exported) {
        for field in ["id", "topic", "ts", "key", "payload"] {
            assert_eq!(copy[field], original[field], "{field}");
        }
    }
    watcher.assert_alive_and_quiet().await;
}

// ---------------------------------------------------------------------------

const MILLION: u64 = 1_000_000;

/// One `/proc/PID/status` field in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The hub's own memory (heap, stacks): resident anonymous pages. Pages
/// of the store's memory-mapped file are not counted: the kernel can drop
/// them at any time, and SQLite caps the mapping (`mmap_size`).
fn anon_kib(pid: u32) -> u64 {
    proc_kib(pid, "RssAnon:")
}

/// Writes `count` events straight into an embedded store (the hub is not
/// running yet), in large batches.
async fn fill_store(dir: &std::path::Path, count: u64) {
    let store = SqliteStore::open(dir, SqliteOptions::default()).expect("open store");
    let topic = Topic::parse("metrics.cpu").unwrap();
    let batch_size = 20_000;
    let mut written = 0;
    while written < count {
        let events = (written..(written + batch_size).min(count))
            .map(|n| NewEvent {
                id: format!("evt-{n}"),
                client_id: false,
                topic: topic.clone(),
                ts: 1_700_000_000_000 + n,
                key: None,
                payload: serde_json::value::RawValue::from_string(format!(
                    "{{\"n\":{n},\"host\":\"web-1\"}}"
                ))
                .unwrap(),
                headers: None,
                tags: None,
                caused_by: None,
                sid: None,
            })
            .collect::<Vec<_>>();
        written += events.len() as u64;
        store
            .commit(CommitBatch {
                events,
                ..CommitBatch::default()
            })
            .await
            .expect("commit");
    }
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_a_million_events_streams_in_constant_memory() {
    let data = common::data_dir();
    fill_store(data.path(), MILLION).await;
    let hub = HubProcess::spawn(data.path(), &[], &["--listen", "127.0.0.1:0"]).await;
    let pid = hub.pid();
    let base = http_base(&hub.url);
    // Warm up: the first small read opens the read connections.
    let (status, _) = get(&format!("{base}/events?topic=**&limit=10"), None, None).await;
    assert_eq!(status, 200);
    let baseline = anon_kib(pid);

    let mut response = http()
        .get(format!("{base}/events.ndjson?topic=metrics.*"))
        .send()
        .await
        .expect("export");
    assert_eq!(response.status().as_u16(), 200);
    let mut lines = 0u64;
    let mut bytes = 0u64;
    let mut peak = baseline;
    let mut partial = Vec::new();
    let mut next_seq = 1u64;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), response.chunk())
        .await
        .expect("the export stalled")
        .expect("reading the export")
    {
        bytes += chunk.len() as u64;
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).expect("an event per line");
            assert_eq!(event["seq"], next_seq, "in seq order, none missing");
            next_seq += 1;
            lines += 1;
            if lines.is_multiple_of(50_000) {
                peak = peak.max(anon_kib(pid));
            }
        }
    }
    assert!(partial.is_empty(), "the export ends with a full line");
    assert_eq!(lines, MILLION);
    let growth_kib = peak.saturating_sub(baseline);
    eprintln!(
        "exported {lines} events ({} MiB); hub anonymous RSS {baseline} KiB before, peak {peak} KiB \
         (+{growth_kib} KiB); total RSS at the end {} KiB",
        bytes / (1024 * 1024),
        proc_kib(pid, "VmRSS:")
    );
    // Holding the export would take over 40 MiB (its size); streaming keeps
    // the hub within a few chunks and the store's page caches.
    assert!(bytes > 40 * 1024 * 1024, "the export is {bytes} bytes");
    assert!(
        growth_kib < 32 * 1024,
        "hub memory grew by {growth_kib} KiB while streaming {bytes} bytes"
    );
    hub.kill9().await;
}

#[tokio::test]
async fn a_websocket_path_on_a_replay_route_is_refused_at_start() {
    let data = common::data_dir();
    let config = promhub_hub::HubConfig {
        data: data.path().to_path_buf(),
        ws_path: "/events".to_owned(),
        ..promhub_hub::HubConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = promhub_hub::run(listener, config, std::future::pending())
        .await
        .expect_err("/events is the replay API's");
    assert!(refused.to_string().contains("replay API"), "{refused}");
}
