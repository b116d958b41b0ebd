//! Consumer groups against a hostile or restricted client (issue 13,
//! findings 2, 6 and 7), on a real `promhub` subprocess:
//! - memory: groups reading a backlog for members that never read stay
//!   within the shared group buffer (`limits.group_buffer_bytes`), measured
//!   as the hub's VmRSS;
//! - caps: `limits.max_groups` and `limits.max_groups_per_connection`
//!   answer `limit_exceeded` and the existing groups keep working;
//! - a member settles only what it holds (finding 6);
//! - an event no connected member may read stays pending, visible in the
//!   ops API, until a member that may read it joins (finding 7).
//!
//! Timeouts are hang guards; no assertion is about speed.

mod common;

use std::time::{Duration, Instant};

use common::http::{self, authority};
use common::jwt;
use common::process::HubProcess;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ADMIN_TOKEN: &str = "group-limits-admin-token-0123456789";
const MIB: u64 = 1024;

/// (VmRSS, RssFile) of a process in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("RssFile:"))
}

/// The hub's memory while it settles: the largest VmRSS, and the largest
/// VmRSS without file-backed pages (KiB).
#[derive(Debug, Clone, Copy)]
struct Peak {
    rss: u64,
    own: u64,
}

/// Samples the hub until its memory has not grown for 3 s (at most
/// `guard`). `own` leaves out RssFile: the pages of the log that SQLite
/// maps to read it (`mmap_size`) are the kernel's page cache, reclaimable
/// and the same whether read through a mapping or `read()`; what the hub
/// holds itself is its anonymous memory.
async fn settled_peak(pid: u32, guard: Duration) -> Peak {
    let start = Instant::now();
    let (rss, file) = memory_kib(pid);
    let mut peak = Peak {
        rss,
        own: rss - file,
    };
    let mut last_growth = Instant::now();
    while last_growth.elapsed() < Duration::from_secs(3) && start.elapsed() < guard {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss, file) = memory_kib(pid);
        if rss > peak.rss || rss - file > peak.own {
            peak.rss = peak.rss.max(rss);
            peak.own = peak.own.max(rss - file);
            last_growth = Instant::now();
        }
    }
    peak
}

/// A hub subprocess with the default settings, an admin token and the
/// given TOML lines (on top of the defaults).
async fn spawn_hub(data: &tempfile::TempDir, toml: &str, args: &[&str]) -> HubProcess {
    let config = data.path().join("hub.toml");
    std::fs::write(&config, toml).expect("config");
    let mut all = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-token",
        ADMIN_TOKEN,
        "--config",
        config.to_str().expect("path"),
    ];
    all.extend_from_slice(args);
    HubProcess::spawn(&data.path().join("store"), &[], &all).await
}

/// Publishes `count` events of about `bytes` bytes each to `topic` from one
/// connection with up to 512 in flight (a backlog, fast); returns their seqs.
async fn publish_backlog(url: &str, topic: &str, count: usize, bytes: usize) -> Vec<u64> {
    let mut client = common::Client::connect(url).await;
    client.auth().await;
    let (mut sink, mut stream) = client.into_inner().split();
    let pad = "b".repeat(bytes);
    let mut seqs = Vec::with_capacity(count);
    let mut sent = 0;
    while seqs.len() < count {
        while sent < count && sent - seqs.len() < 512 {
            let frame = json!({
                "op": "PUBLISH", "topic": topic, "rid": format!("p{sent}"),
                "payload": {"n": sent, "pad": pad},
            });
            sink.feed(Message::text(frame.to_string()))
                .await
                .expect("send");
            sent += 1;
        }
        sink.flush().await.expect("flush");
        let message = tokio::time::timeout(common::HANG_GUARD, stream.next())
            .await
            .expect("no PUBACK within the hang guard")
            .expect("connection closed")
            .expect("read");
        if let Message::Text(text) = message {
            let ack: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(ack["op"], "PUBACK", "{ack}");
            seqs.push(ack["seq"].as_u64().expect("seq"));
        }
    }
    seqs
}

/// The largest VmRSS (KiB) seen while the hub settles: sampled until it
/// has not grown for 3 s (at most `guard`).
/// Prints the growth from `before` to `peak`; returns the growth of the
/// hub's own memory (KiB).
fn report(what: &str, before: Peak, peak: Peak) -> u64 {
    let own = peak.own.saturating_sub(before.own);
    println!(
        "{what}: hub VmRSS {} -> {} KiB (+{} KiB), without mapped log pages {} -> {} KiB (+{own} KiB)",
        before.rss,
        peak.rss,
        peak.rss.saturating_sub(before.rss),
        before.own,
        peak.own,
    );
    own
}

/// Members that subscribe and then never read: each on its own
/// connection, `from: earliest`, with room for 10,000 deliveries so that
/// only the byte bounds hold them back.
async fn idle_members(url: &str, pattern: &str, groups: &[&str]) -> Vec<common::Client> {
    let mut members = Vec::new();
    for group in groups {
        let mut member = common::Client::connect(url).await;
        member.auth().await;
        let suback = member
            .subscribe(
                pattern,
                Some(group),
                json!({"from": "earliest", "max_inflight": 10_000}),
            )
            .await;
        assert_eq!(suback["op"], "SUBACK", "{suback}");
        members.push(member);
    }
    members
}

async fn admin_json(url: &str, path: &str) -> Value {
    let response = http::get(&authority(url), path, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    response.json()
}

#[tokio::test]
async fn four_groups_over_a_60_mb_backlog_with_members_that_never_read_stay_bounded() {
    let data = common::data_dir();
    let hub = spawn_hub(&data, "", &[]).await;
    // 10,000 events of 6 KB: a 60 MB backlog.
    publish_backlog(&hub.url, "backlog.x", 10_000, 6_000).await;
    let before = settled_peak(hub.pid(), Duration::from_secs(30)).await;

    let members = idle_members(&hub.url, "backlog.*", &["g1", "g2", "g3", "g4"]).await;
    let peak = settled_peak(hub.pid(), Duration::from_secs(120)).await;
    let groups = admin_json(&hub.url, "/groups").await;
    let inflight: Vec<u64> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["inflight"].as_u64().expect("inflight"))
        .collect();
    let grown = report("4 groups over 60 MB", before, peak);
    println!("in flight per group: {inflight:?}");
    assert_eq!(inflight.len(), 4);
    assert!(
        inflight.iter().all(|&n| n > 0),
        "every group delivers: {inflight:?}"
    );
    assert!(grown < 64 * MIB, "the hub grew by {grown} KiB");
    drop(members);
}

#[tokio::test]
async fn one_group_over_a_200_mb_backlog_is_held_by_the_shared_buffer() {
    let data = common::data_dir();
    // The connection's own bound out of the way: only the shared group
    // buffer (default 32 MiB) holds the group back.
    let hub = spawn_hub(&data, "[groups]\nmax_inflight_bytes = 1073741824\n", &[]).await;
    // 10,000 events of 20 KB: a 200 MB backlog.
    publish_backlog(&hub.url, "large.x", 10_000, 20_000).await;
    let before = settled_peak(hub.pid(), Duration::from_secs(30)).await;
    let waits_before = http::refusals(&hub.url, ADMIN_TOKEN, "group_budget_wait").await as u64;

    let members = idle_members(&hub.url, "large.*", &["g"]).await;
    let peak = settled_peak(hub.pid(), Duration::from_secs(120)).await;
    let groups = admin_json(&hub.url, "/groups").await;
    let inflight = groups["groups"][0]["inflight"].as_u64().expect("inflight");
    let waits =
        (http::refusals(&hub.url, ADMIN_TOKEN, "group_budget_wait").await as u64) - waits_before;
    let grown = report("1 group over 200 MB", before, peak);
    println!("{inflight} in flight; {waits} waits for the group buffer");
    assert!(inflight > 0, "the group delivers");
    assert!(waits > 0, "the group waited for the shared buffer");
    assert!(grown < 64 * MIB, "the hub grew by {grown} KiB");
    drop(members);
}

// ------------------------------------------------------------------ caps

/// A SUBSCRIBE to a group on a raw client; returns the answer.
async fn subscribe_group(client: &mut common::Client, pattern: &str, group: &str) -> Value {
    client.subscribe(pattern, Some(group), json!(null)).await
}

fn assert_limit_exceeded(answer: &Value, setting: &str) {
    assert_eq!(answer["op"], "ERR", "{answer}");
    assert_eq!(answer["code"], "limit_exceeded", "{answer}");
    let msg = answer["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(setting),
        "the message names {setting}: {answer}"
    );
}

#[tokio::test]
async fn group_caps_answer_limit_exceeded_and_existing_groups_keep_working() {
    let data = common::data_dir();
    let hub = spawn_hub(
        &data,
        "[limits]\nmax_groups = 3\nmax_groups_per_connection = 2\n",
        &[],
    )
    .await;
    let caps_before = http::refusals(&hub.url, ADMIN_TOKEN, "group_cap").await as u64;
    let per_conn_before =
        http::refusals(&hub.url, ADMIN_TOKEN, "groups_per_connection").await as u64;

    // Per connection: the third group subscription is refused.
    let mut a = hub.client().await;
    for group in ["g1", "g2"] {
        let answer = subscribe_group(&mut a, "cap.*", group).await;
        assert_eq!(answer["op"], "SUBACK", "{answer}");
    }
    let answer = subscribe_group(&mut a, "cap.*", "g3").await;
    assert_limit_exceeded(&answer, "limits.max_groups_per_connection");
    // A live subscription is not a group: still fine.
    let answer = a.subscribe("cap.*", None, json!(null)).await;
    assert_eq!(answer["op"], "SUBACK", "{answer}");

    // Per hub: a third group may be created, a fourth may not.
    let mut b = hub.client().await;
    let answer = subscribe_group(&mut b, "cap.*", "g3").await;
    assert_eq!(answer["op"], "SUBACK", "{answer}");
    let answer = subscribe_group(&mut b, "cap.*", "g4").await;
    assert_limit_exceeded(&answer, "limits.max_groups");
    // The refused group is not held against the connection: it may still
    // join an existing group (its second).
    let answer = subscribe_group(&mut b, "cap.*", "g1").await;
    assert_eq!(answer["op"], "SUBACK", "{answer}");
    let answer = subscribe_group(&mut b, "other.*", "g9").await;
    assert_eq!(answer["code"], "limit_exceeded", "{answer}");

    assert_eq!(
        http::refusals(&hub.url, ADMIN_TOKEN, "group_cap").await as u64,
        caps_before + 1
    );
    assert!(
        (http::refusals(&hub.url, ADMIN_TOKEN, "groups_per_connection").await as u64)
            > per_conn_before
    );
    let groups = admin_json(&hub.url, "/groups").await;
    assert_eq!(groups["total"], 3, "{groups}");

    // Every existing group still gets every event, and a connection that
    // leaves a group has room for another.
    let mut publisher = hub.client().await;
    let ack = publisher
        .publish("cap.x", json!("hello"), json!(null))
        .await;
    assert_eq!(ack["op"], "PUBACK", "{ack}");
    // PONG comes after every event committed before the PING.
    let mut seen = Vec::new();
    for client in [&mut a, &mut b] {
        for frame in client.ping().await {
            assert_eq!(frame["op"], "EVENT", "{frame}");
            seen.push(frame["group"].as_str().unwrap_or("live").to_owned());
            if !frame["group"].is_null() {
                client.ack(&frame).await;
            }
        }
    }
    seen.sort();
    assert_eq!(seen, ["g1", "g2", "g3", "live"]);
    a.send_json(json!({"op": "UNSUBSCRIBE", "topic": "cap.*", "group": "g2", "rid": "u"}))
        .await;
    assert_eq!(a.recv_op("UNSUBACK", 0).await["group"], "g2");
    let answer = subscribe_group(&mut a, "cap.*", "g3").await;
    assert_eq!(answer["op"], "SUBACK", "{answer}");
}

// ------------------------------------------- permissions (findings 6, 7)

/// An HS256 token with these scopes, valid for an hour.
fn token(scopes: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    jwt::hs(
        jsonwebtoken::Algorithm::HS256,
        &jwt::claims_at(now, json!({ "scopes": scopes, "exp": now + 3600 })),
    )
}

/// A connection authenticated with `scopes`.
async fn client_with(url: &str, scopes: &[&str]) -> common::Client {
    let mut client = common::Client::connect(url).await;
    client
        .send_json(json!({"op": "AUTH", "token": token(scopes)}))
        .await;
    let ok = client.recv_json().await;
    assert_eq!(ok["op"], "OK", "AUTH answered {ok}");
    client
}

async fn jwt_hub(data: &tempfile::TempDir) -> HubProcess {
    spawn_hub(data, "", &["--jwt-secret", jwt::SECRET]).await
}

fn settle(op: &str, event: &Value, seq: Option<u64>, extra: Value) -> Value {
    let mut frame = json!({
        "op": op, "topic": event["topic"], "group": event["group"], "id": event["event"]["id"],
    });
    if let Some(seq) = seq {
        frame["seq"] = json!(seq);
    }
    if let (Some(frame), Some(extra)) = (frame.as_object_mut(), extra.as_object()) {
        frame.extend(extra.clone());
    }
    frame
}

#[tokio::test]
async fn a_member_cannot_settle_a_delivery_another_member_holds() {
    let data = common::data_dir();
    let hub = jwt_hub(&data).await;
    let mut holder = client_with(&hub.url, &["subscribe:jobs.*"]).await;
    let answer = holder
        .subscribe("jobs.*", Some("workers"), json!(null))
        .await;
    assert_eq!(answer["op"], "SUBACK", "{answer}");
    let mut intruder = client_with(&hub.url, &["subscribe:jobs.a"]).await;
    let answer = intruder
        .subscribe("jobs.*", Some("workers"), json!(null))
        .await;
    assert_eq!(answer["op"], "SUBACK", "{answer}");
    let mut publisher = client_with(&hub.url, &["publish:jobs.*"]).await;
    let ack = publisher
        .publish("jobs.secret", json!({"salary": 1}), json!(null))
        .await;
    let seq = ack["seq"].as_u64().expect("seq");
    // Only the holder may read jobs.secret: it gets the delivery.
    let event = holder.recv_event().await;
    assert_eq!(event["event"]["seq"], seq);

    // The intruder knows the id and seq and answers for it every way.
    for frame in [
        settle(
            "NACK",
            &event,
            Some(seq),
            json!({"final": true, "reason": "x"}),
        ),
        settle("NACK", &event, None, json!({"final": true})),
        settle("NACK", &event, Some(seq), json!({"delay_ms": 0})),
        settle("ACK", &event, Some(seq), json!({})),
        settle("ACK", &event, None, json!({})),
        settle("WORKING", &event, Some(seq), json!({})),
    ] {
        intruder.send_json(frame).await;
    }
    // PONG once those answers are handled and any change is durable.
    assert!(intruder.ping().await.is_empty(), "the intruder got nothing");
    let dead = admin_json(&hub.url, "/dead-letters?topic=jobs.*&group=workers").await;
    assert_eq!(dead["count"], 0, "no dead letter: {dead}");
    let lag = admin_json(&hub.url, "/lag?topic=jobs.*&group=workers").await;
    assert_eq!(lag["cursor"], seq - 1, "cursor unchanged: {lag}");
    assert_eq!(lag["lag_events"], 1, "{lag}");
    // Still the holder's, attempt 1, not redelivered.
    assert!(holder.ping().await.is_empty(), "no redelivery");
    holder
        .send_json(settle("ACK", &event, Some(seq), json!({})))
        .await;
    holder.ping().await;
    let lag = admin_json(&hub.url, "/lag?topic=jobs.*&group=workers").await;
    assert_eq!(
        (lag["cursor"].as_u64(), lag["lag_events"].as_u64()),
        (Some(seq), Some(0)),
        "{lag}"
    );
}

/// The group's entry in `/groups`.
async fn group_status(url: &str, group: &str) -> Value {
    let groups = admin_json(url, "/groups").await;
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["group"] == group)
        .cloned()
        .unwrap_or_else(|| panic!("no group {group} in {groups}"))
}

#[tokio::test]
async fn events_a_restricted_member_may_not_read_wait_for_a_member_that_may() {
    let data = common::data_dir();
    let hub = jwt_hub(&data).await;
    let mut restricted = client_with(&hub.url, &["subscribe:jobs.a"]).await;
    let answer = restricted
        .subscribe("jobs.*", Some("mixed"), json!({"from": "earliest"}))
        .await;
    assert_eq!(answer["op"], "SUBACK", "{answer}");
    let mut publisher = client_with(&hub.url, &["publish:jobs.*"]).await;
    let mut published = Vec::new();
    for topic in ["jobs.secret", "jobs.secret", "jobs.a", "jobs.secret"] {
        let ack = publisher
            .publish(topic, json!({"t": topic}), json!(null))
            .await;
        published.push((topic, ack["seq"].as_u64().expect("seq")));
    }
    let secret: Vec<u64> = published
        .iter()
        .filter(|(t, _)| *t == "jobs.secret")
        .map(|&(_, s)| s)
        .collect();
    // The restricted member alone gets what it may read, and ACKs it.
    let event = restricted.recv_event().await;
    assert_eq!(event["event"]["topic"], "jobs.a");
    restricted.ack(&event).await;
    assert!(restricted.ping().await.is_empty());

    // The others wait: counted in the lag, holding the cursor, and the ops
    // API says why.
    let status = group_status(&hub.url, "mixed").await;
    assert_eq!(status["blocked"], 3, "{status}");
    assert_eq!(status["oldest_blocked_seq"], secret[0], "{status}");
    assert_eq!(status["lag_events"], 3, "{status}");
    assert_eq!(status["cursor"]["seq"], secret[0] - 1, "{status}");
    let lag = admin_json(&hub.url, "/lag?topic=jobs.*&group=mixed").await;
    assert_eq!(
        (lag["blocked"].as_u64(), lag["oldest_blocked_seq"].as_u64()),
        (Some(3), Some(secret[0])),
        "{lag}"
    );
    assert_eq!(lag["lag_events"], 3, "{lag}");

    // A member that may read them joins later: it gets them all, in order.
    let mut full = client_with(&hub.url, &["subscribe:jobs.*"]).await;
    let answer = full.subscribe("jobs.*", Some("mixed"), json!(null)).await;
    assert_eq!(answer["op"], "SUBACK", "{answer}");
    let mut got = Vec::new();
    for _ in 0..secret.len() {
        let event = full.recv_event().await;
        assert_eq!(event["event"]["topic"], "jobs.secret");
        assert_eq!(event["ctx"]["attempt"], 1);
        got.push(event["event"]["seq"].as_u64().expect("seq"));
        full.ack(&event).await;
    }
    assert_eq!(got, secret);
    assert!(full.ping().await.is_empty());
    assert!(
        restricted.ping().await.is_empty(),
        "nothing for the restricted member"
    );
    let status = group_status(&hub.url, "mixed").await;
    assert_eq!(
        (status["blocked"].as_u64(), status["lag_events"].as_u64()),
        (Some(0), Some(0)),
        "{status}"
    );
    assert_eq!(status["cursor"]["seq"], published[3].1, "{status}");
}

// ----------------------------------------------------------- ops pages

#[tokio::test]
async fn groups_are_listed_in_pages() {
    let data = common::data_dir();
    let hub = spawn_hub(&data, "", &[]).await;
    let mut member = hub.client().await;
    let keys = [
        ("b.*", "x"),
        ("a.*", "z"),
        ("a.**", "a"),
        ("a.*", "b"),
        ("a", "q"),
    ];
    for (pattern, group) in keys {
        let answer = subscribe_group(&mut member, pattern, group).await;
        assert_eq!(answer["op"], "SUBACK", "{answer}");
    }
    let mut sorted: Vec<(String, String)> = keys
        .iter()
        .map(|(p, g)| ((*p).to_owned(), (*g).to_owned()))
        .collect();
    sorted.sort();

    // All of them on the default page, with the total and no next page.
    let all = admin_json(&hub.url, "/groups").await;
    assert_eq!(all["total"], 5, "{all}");
    assert_eq!(all["next_after"], Value::Null, "{all}");
    assert_eq!(all["groups"].as_array().map(Vec::len), Some(5));
    assert!(all["group_buffer"]["limit"].as_u64() > Some(0), "{all}");

    // Pages of two, in (pattern, group) order, each continuing the last.
    let mut seen = Vec::new();
    let mut path = "/groups?limit=2".to_owned();
    loop {
        let page = admin_json(&hub.url, &path).await;
        let groups = page["groups"].as_array().expect("groups");
        assert!(groups.len() <= 2, "{page}");
        assert_eq!(page["total"], 5);
        seen.extend(groups.iter().map(|g| {
            (
                g["topic"].as_str().expect("topic").to_owned(),
                g["group"].as_str().expect("group").to_owned(),
            )
        }));
        match page["next_after"].as_str() {
            Some(after) => path = format!("/groups?limit=2&after={}", after.replace(' ', "%20")),
            None => break,
        }
        assert!(seen.len() <= 5, "pages end: {seen:?}");
    }
    assert_eq!(seen, sorted);

    // A bad `after` is a clear 400.
    for bad in ["nospace", "a..b%20g", "a.*%20"] {
        let response = http::get(
            &authority(&hub.url),
            &format!("/groups?after={bad}"),
            Some(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(response.status, 400, "{bad}: {}", response.body);
        assert_eq!(response.json()["error"], "bad_request");
    }
    // /cursors lists one pattern's groups only.
    let cursors = admin_json(&hub.url, "/cursors?topic=a.*").await;
    let names: Vec<&str> = cursors["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["group"].as_str().expect("group"))
        .collect();
    assert_eq!(names, ["b", "z"]);
}
