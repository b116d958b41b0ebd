//! Publish quotas on every publish path (semantics.md §3, finding 4), with
//! the real `promhub` binary and JWTs: `POST /events/import` takes a token
//! per line from the caller's bucket (kept across requests) and stops with
//! HTTP 429, `Retry-After` and the line to resume from; lines over
//! `max_frame_bytes` are refused one by one; a WebSocket re-AUTH never
//! refills a connection's bucket.
//!
//! No assertion on speed: the bounds on what an import may store grow with
//! the time it measurably took, and the WebSocket quotas used are so slow
//! (one token per 20 s) that no refill happens within a test.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Client;
use common::http::{self, HttpResponse};
use common::jwt::{SECRET, claims_at, hs};
use common::process::HubProcess;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "import-quota-admin-token-0123456789";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A token of `sub` with these scopes and extra claims.
fn token(sub: &str, scope: &str, extra: Value) -> String {
    let mut claims = claims_at(now_secs(), json!({ "sub": sub, "scope": scope }));
    for (key, value) in extra.as_object().expect("object") {
        claims[key] = value.clone();
    }
    hs(Algorithm::HS256, &claims)
}

async fn spawn(data: &Path, extra: &[&str]) -> HubProcess {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--admin-token",
        ADMIN_TOKEN,
    ];
    args.extend_from_slice(extra);
    HubProcess::spawn(data, &[], &args).await
}

fn lines(topic: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| json!({"id": format!("e{i}"), "topic": topic, "payload": {"i": i}}).to_string())
        .collect()
}

async fn import(hub: &HubProcess, bearer: &str, lines: &[String]) -> HttpResponse {
    let mut body = lines.join("\n");
    body.push('\n');
    http::post(
        &http::authority(&hub.url),
        "/events/import",
        Some(bearer),
        &body,
    )
    .await
}

/// The ids stored on `topic`, in seq order.
async fn stored_ids(hub: &HubProcess, topic: &str) -> Vec<String> {
    let reader = token("auditor", "subscribe:**", json!({}));
    let mut ids = Vec::new();
    let mut from = 1;
    loop {
        let page = http::get(
            &http::authority(&hub.url),
            &format!("/events?topic={topic}&from_seq={from}&limit=1000"),
            Some(&reader),
        )
        .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        for event in page["events"].as_array().expect("events") {
            ids.push(event["id"].as_str().expect("id").to_owned());
        }
        match page["next_from_seq"].as_u64() {
            Some(next) => from = next,
            None => return ids,
        }
    }
}

/// Most events a bucket of `burst` refilling at `rate` per second can
/// have given within `elapsed` (plus one for rounding).
fn allowance(burst: f64, rate: f64, elapsed: Duration) -> u64 {
    (burst + rate * elapsed.as_secs_f64()).floor() as u64 + 1
}

/// A refused import: 429, `Retry-After` in seconds, and the report.
fn refused(response: &HttpResponse) -> Value {
    assert_eq!(response.status, 429, "{}", response.body);
    let seconds: u64 = response
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(seconds >= 1, "Retry-After {seconds}");
    let report = response.json();
    assert_eq!(report["error"], "rate_limited", "{report}");
    assert!(
        report["retry_after_ms"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    report
}

#[tokio::test]
async fn an_import_is_held_to_the_callers_quota_and_a_new_request_gets_no_fresh_bucket() {
    let dir = common::data_dir();
    let hub = spawn(dir.path(), &["--publish-rate", "10"]).await;
    let writer = token("importer", "publish:imp.**", json!({}));
    let all = lines("imp.a", 0..5000);
    let before = http::refusals(&hub.url, ADMIN_TOKEN, "import_rate_limited").await;

    let started = Instant::now();
    let first = import(&hub, &writer, &all).await;
    let report = refused(&first);
    let imported = report["imported"].as_u64().expect("imported");
    let resume = report["resume_from_line"]
        .as_u64()
        .expect("resume_from_line");
    // Every line before the refused one was imported, none after it.
    assert_eq!(imported, resume - 1, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(
        imported <= allowance(10.0, 10.0, started.elapsed()),
        "{imported} imported by a 10/s quota in {:?}",
        started.elapsed()
    );

    // Right after, the rest: the caller's bucket is the one it emptied.
    let rest = &all[resume as usize - 1..];
    let second = import(&hub, &writer, rest).await;
    let report = refused(&second);
    let more = report["imported"].as_u64().expect("imported");
    let total = imported + more;
    assert!(
        total <= allowance(10.0, 10.0, started.elapsed()),
        "{total} imported by a 10/s quota in {:?}: the second request got a fresh bucket",
        started.elapsed()
    );
    let resume_again = report["resume_from_line"].as_u64().expect("resume");
    eprintln!(
        "10/s quota: {imported} + {more} of 5000 lines imported by two requests in {:?}",
        started.elapsed()
    );

    // The store holds exactly the lines the reports say were imported.
    let ids = stored_ids(&hub, "imp.a").await;
    let expected: Vec<String> = (0..total as usize).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(resume - 1 + resume_again - 1, total);
    assert!(http::refusals(&hub.url, ADMIN_TOKEN, "import_rate_limited").await >= before + 2.0);
}

#[tokio::test]
async fn a_refused_import_resumes_from_the_line_it_names_without_duplicates() {
    let dir = common::data_dir();
    let hub = spawn(dir.path(), &[]).await;
    // The token's own quota: 20/s, burst 5.
    let writer = token(
        "resumer",
        "publish:res.**",
        json!({"rate": {"publish_per_sec": 20, "burst": 5}}),
    );
    let all = lines("res.a", 0..40);
    let mut next = 0usize;
    let mut refusals = 0;
    let mut duplicates = 0;
    loop {
        let response = import(&hub, &writer, &all[next..]).await;
        if response.status == 200 {
            let report = response.json();
            duplicates += report["duplicates"].as_u64().unwrap();
            assert_eq!(report["failed"], 0, "{report}");
            break;
        }
        let report = refused(&response);
        duplicates += report["duplicates"].as_u64().unwrap();
        next += report["resume_from_line"].as_u64().unwrap() as usize - 1;
        refusals += 1;
        assert!(refusals < 100, "no progress");
        let wait = report["retry_after_ms"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(wait + 1)).await;
    }
    assert!(refusals >= 1, "40 lines at burst 5 must have been refused");
    assert_eq!(duplicates, 0, "nothing was sent twice");
    let ids = stored_ids(&hub, "res.a").await;
    let expected: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn an_import_line_over_the_frame_limit_is_refused_and_its_neighbours_imported() {
    let dir = common::data_dir();
    let hub = spawn(dir.path(), &[]).await;
    let writer = token("big", "publish:big.**", json!({}));
    let before = http::refusals(&hub.url, ADMIN_TOKEN, "import_line_too_large").await;
    let huge = json!({"id": "huge", "topic": "big.a", "payload": "x".repeat(1536 * 1024)});
    let body = [
        lines("big.a", 0..2),
        vec![huge.to_string()],
        lines("big.a", 2..4),
    ]
    .concat();
    let response = import(&hub, &writer, &body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let report = response.json();
    assert_eq!(report["imported"], 4, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(report["errors"][0]["line"], 3, "{report}");
    let error = report["errors"][0]["error"].as_str().unwrap();
    assert!(error.contains("too large"), "{error}");
    assert_eq!(stored_ids(&hub, "big.a").await, ["e0", "e1", "e2", "e3"]);
    assert_eq!(
        http::refusals(&hub.url, ADMIN_TOKEN, "import_line_too_large").await,
        before + 1.0
    );
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("kB");
    kib * 1024
}

#[tokio::test]
async fn an_import_of_large_lines_holds_a_bounded_amount_of_memory() {
    let dir = common::data_dir();
    let hub = spawn(dir.path(), &[]).await;
    let writer = token("bulk", "publish:bulk.**", json!({}));
    // Warm up (first commit, page cache of a small log).
    let warm = import(&hub, &writer, &lines("bulk.a", 0..10)).await;
    assert_eq!(warm.status, 200, "{}", warm.body);
    let before = peak_rss(hub.pid());
    // 160 valid lines of 900 KiB: 141 MiB of events.
    let body: Vec<String> = (0..160)
        .map(|i| {
            json!({"id": format!("big-{i}"), "topic": "bulk.b", "payload": "y".repeat(900 * 1024)})
                .to_string()
        })
        .collect();
    let response = import(&hub, &writer, &body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["imported"], 160);
    let grown = peak_rss(hub.pid()).saturating_sub(before);
    eprintln!("peak RSS grew by {} MiB", grown >> 20);
    // The store's page cache may take up to 64 MiB; the import itself holds
    // one commit batch (4 MiB) and one line, not the 141 MiB body.
    assert!(
        grown < 128 << 20,
        "the hub's peak RSS grew by {} MiB",
        grown >> 20
    );
}

/// AUTH with `token`; returns the answer.
async fn auth(client: &mut Client, token: &str) -> Value {
    client
        .send_json(json!({"op": "AUTH", "token": token}))
        .await;
    client.recv_json().await
}

#[tokio::test]
async fn a_re_auth_never_refills_the_connections_bucket() {
    let dir = common::data_dir();
    // The configured quota (for tokens without a rate claim): one token per
    // 20 s, burst 20.
    let hub = spawn(
        dir.path(),
        &["--publish-rate", "0.05", "--publish-burst", "20"],
    )
    .await;
    let slow = |burst: u32| {
        token(
            "alice",
            "publish:ws.**",
            json!({"rate": {"publish_per_sec": 0.05, "burst": burst}}),
        )
    };
    let first = slow(3);
    let mut client = Client::connect(&hub.url).await;
    assert_eq!(auth(&mut client, &first).await["op"], "OK");
    for n in 0..3 {
        let ack = client.publish("ws.a", json!(n), json!(null)).await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
    }
    let spent = client.publish("ws.a", json!(3), json!(null)).await;
    assert_eq!(spent["code"], "rate_limited", "{spent}");

    // The same token again, a token with a bigger burst, and one without a
    // rate claim (the configured quota): each keeps the empty bucket.
    let no_claim = token("alice", "publish:ws.**", json!({}));
    for (what, again) in [
        ("the same token", first.clone()),
        ("a rate claim with burst 50", slow(50)),
        ("no rate claim", no_claim),
    ] {
        assert_eq!(auth(&mut client, &again).await["op"], "OK", "{what}");
        let answer = client.publish("ws.a", json!(what), json!(null)).await;
        assert_eq!(
            answer["code"], "rate_limited",
            "after a re-AUTH with {what}: {answer}"
        );
    }
    // Another connection of the same subject has its own bucket.
    let mut other = Client::connect(&hub.url).await;
    assert_eq!(auth(&mut other, &first).await["op"], "OK");
    let ack = other.publish("ws.b", json!(0), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK", "{ack}");
}
