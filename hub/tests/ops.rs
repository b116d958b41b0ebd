//! The ops API over real HTTP on a real hub: admin authentication (401 /
//! 403), the subscribe ACL on `/latest-by-key`, exact lag numbers, dead
//! letters and their replay, Prometheus metrics, and a 10,000-event burst
//! whose lag drains to zero (the CI smoke check).

mod common;

use std::time::Duration;

use common::http::{self, HttpResponse, authority};
use common::{Client, TestHub};
use promhub_hub::auth::{MintOptions, Secret, mint_dev_token};
use promhub_hub::store::mongo::MongoStore;
use promhub_hub::store::mongo::test_server::FerretDb;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "ops-test-admin-token-0123456789";
const SECRET: &str = "ops-test-jwt-secret-0123456789abcdef";

/// A development-mode hub with a static admin token.
async fn dev_hub() -> TestHub {
    TestHub::start_with(|c| c.admin_token = Some(Secret::new(ADMIN_TOKEN))).await
}

/// A JWT hub with a static admin token.
async fn jwt_hub() -> TestHub {
    TestHub::start_with(|c| {
        c.admin_token = Some(Secret::new(ADMIN_TOKEN));
        c.auth.jwt_secret = Some(Secret::new(SECRET));
    })
    .await
}

fn token(scopes: &str) -> String {
    mint_dev_token(MintOptions {
        secret: SECRET.to_owned(),
        scopes: scopes.to_owned(),
        ttl: Duration::from_secs(600),
        sub: None,
        aud: None,
        iss: None,
    })
    .expect("mint")
}

async fn admin_get(hub: &TestHub, path: &str) -> HttpResponse {
    http::get(&authority(&hub.url), path, Some(ADMIN_TOKEN)).await
}

async fn admin_json(hub: &TestHub, path: &str) -> Value {
    let response = admin_get(hub, path).await;
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    response.json()
}

async fn lag(hub: &TestHub, topic: &str, group: &str) -> Value {
    admin_json(hub, &format!("/lag?topic={topic}&group={group}")).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Every ops endpoint, as (method, path, body).
fn endpoints() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/cursors?topic=jobs.*", None),
        ("GET", "/lag?topic=jobs.*&group=g", None),
        ("GET", "/latest-by-key?topic=jobs.a&key=k", None),
        ("GET", "/groups", None),
        ("GET", "/cluster", None),
        ("GET", "/dead-letters?topic=jobs.*&group=g", None),
        (
            "POST",
            "/dead-letters/replay",
            Some(r#"{"topic":"jobs.*","group":"g","seq":1}"#),
        ),
    ]
}

#[tokio::test]
async fn every_endpoint_needs_an_admin_credential() {
    let hub = jwt_hub().await;
    let host = authority(&hub.url);
    let not_admin = token("publish:** subscribe:**");
    let admin = token("admin subscribe:**");
    for (method, path, body) in endpoints() {
        let none = http::request(&host, method, path, None, body).await;
        assert_eq!(none.status, 401, "{path} without a token: {}", none.body);
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        assert_eq!(none.json()["error"], "unauthorized");
        let wrong = http::request(&host, method, path, Some("not-the-token"), body).await;
        assert_eq!(wrong.status, 401, "{path} with a bad token");
        let forbidden = http::request(&host, method, path, Some(&not_admin), body).await;
        assert_eq!(forbidden.status, 403, "{path} without admin scope");
        assert_eq!(forbidden.json()["error"], "forbidden");
        for credential in [ADMIN_TOKEN, admin.as_str()] {
            let allowed = http::request(&host, method, path, Some(credential), body).await;
            assert!(
                ![401, 403].contains(&allowed.status),
                "{path} with an admin credential: {} {}",
                allowed.status,
                allowed.body
            );
        }
    }
    // A token signed with another secret is not an admin either.
    let foreign = mint_dev_token(MintOptions {
        secret: "another-secret-0123456789abcdef-xyz".to_owned(),
        scopes: "admin".to_owned(),
        ttl: Duration::from_secs(600),
        sub: None,
        aud: None,
        iss: None,
    })
    .expect("mint");
    assert_eq!(
        http::get(&host, "/groups", Some(&foreign)).await.status,
        401
    );
    // The dashboard page itself holds no data; it logs in with the token.
    let page = http::get(&host, "/ops", None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("promhub ops") && page.body.contains("Bearer"));
    let health = admin_json(&hub, "/healthz").await;
    assert_eq!(health["status"], "ok");
    let ready = admin_json(&hub, "/readyz").await;
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn development_mode_without_an_admin_token_keeps_the_ops_api_closed() {
    let hub = TestHub::start().await;
    let host = authority(&hub.url);
    for (method, path, body) in endpoints() {
        // The development authenticator accepts any token for WebSockets;
        // the ops API must not.
        for bearer in [None, Some("anything"), Some(ADMIN_TOKEN)] {
            let response = http::request(&host, method, path, bearer, body).await;
            assert_eq!(response.status, 401, "{path} with {bearer:?}");
        }
    }
}

#[tokio::test]
async fn a_short_admin_token_is_refused_at_start() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = promhub_hub::HubConfig {
        data: dir.path().to_path_buf(),
        admin_token: Some(Secret::new("short")),
        ..promhub_hub::HubConfig::default()
    };
    let result = promhub_hub::run(listener, config, async {}).await;
    let error = result.expect_err("a short admin token must be refused");
    assert!(error.to_string().contains("admin_token"), "{error}");
}

#[tokio::test]
async fn latest_by_key_applies_the_callers_subscribe_acl() {
    let hub = jwt_hub().await;
    let host = authority(&hub.url);
    let mut publisher = hub.connect().await;
    publisher
        .send_json(json!({"op": "AUTH", "token": token("publish:**")}))
        .await;
    assert_eq!(publisher.recv_json().await["op"], "OK");
    for (topic, body) in [("orders.eu", 1), ("orders.eu", 2), ("secret.plans", 3)] {
        let ack = publisher
            .publish(topic, json!(body), json!({"key": "k"}))
            .await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
    }
    let orders_admin = token("admin subscribe:orders.*");
    let latest = http::get(
        &host,
        "/latest-by-key?topic=orders.eu&key=k",
        Some(&orders_admin),
    )
    .await;
    assert_eq!(latest.status, 200, "{}", latest.body);
    assert_eq!(latest.json()["event"]["payload"], 2);
    assert_eq!(latest.json()["event"]["topic"], "orders.eu");
    // An admin whose own ACL does not cover the topic is refused.
    let hidden = http::get(
        &host,
        "/latest-by-key?topic=secret.plans&key=k",
        Some(&orders_admin),
    )
    .await;
    assert_eq!(hidden.status, 403, "{}", hidden.body);
    // The static token is the operator's own and sees every topic.
    let operator = admin_json(&hub, "/latest-by-key?topic=secret.plans&key=k").await;
    assert_eq!(operator["event"]["payload"], 3);
    let missing = admin_get(&hub, "/latest-by-key?topic=orders.eu&key=nope").await;
    assert_eq!(missing.status, 404);
    let bad = admin_get(&hub, "/latest-by-key?topic=orders.*&key=k").await;
    assert_eq!(bad.status, 400, "a pattern is not a topic");
    let incomplete = admin_get(&hub, "/latest-by-key?topic=orders.eu").await;
    assert_eq!(incomplete.status, 400);
}

/// Publishes `topic` events and returns their (seq, ts).
async fn publish_all(client: &mut Client, topics: &[&str]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let ack = client.publish(topic, json!(i), Value::Null).await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        seqs.push(ack["seq"].as_u64().expect("seq"));
    }
    seqs
}

#[tokio::test]
async fn lag_is_exact_for_a_known_backlog() {
    exact_lag(dev_hub().await).await;
}

/// The same on the MongoDB store (FerretDB): both stores answer alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_exact_on_the_mongodb_store_too() {
    let Some(server) = FerretDb::shared_or_skip("ops lag on MongoDB") else {
        return;
    };
    let store = MongoStore::connect(&server.uri("ops_lag"))
        .await
        .expect("connect to FerretDB");
    let hub = TestHub::start_with_parts(
        |c| c.admin_token = Some(Secret::new(ADMIN_TOKEN)),
        promhub_hub::HubParts {
            store: Some(std::sync::Arc::new(store)),
            ..promhub_hub::HubParts::default()
        },
    )
    .await;
    exact_lag(hub).await;
}

async fn exact_lag(hub: TestHub) {
    let mut publisher = hub.client().await;
    let seqs = publish_all(
        &mut publisher,
        &[
            "jobs.a",
            "other.x",
            "jobs.b",
            "jobs.a",
            "other.y",
            "jobs.c",
            "jobs.a.deep",
            "jobs.d",
        ],
    )
    .await;
    // jobs.* matches 5 of them (not other.*, not jobs.a.deep).
    let matching = [seqs[0], seqs[2], seqs[3], seqs[5], seqs[7]];
    let mut consumer = hub.client().await;
    let suback = consumer
        .subscribe(
            "jobs.*",
            Some("workers"),
            json!({"from": "earliest", "max_inflight": 10}),
        )
        .await;
    assert_eq!(suback["op"], "SUBACK");
    let mut events = Vec::new();
    for _ in 0..matching.len() {
        events.push(consumer.recv_event().await);
    }
    let first_ts = events[0]["event"]["ts"].as_u64().expect("ts");
    let before = now_ms();
    let answer = lag(&hub, "jobs.*", "workers").await;
    let after = now_ms();
    assert_eq!(answer["lag_events"], 5, "{answer}");
    assert_eq!(answer["cursor"], 0);
    assert_eq!(answer["oldest_pending_seq"], matching[0]);
    let lag_ms = answer["lag_ms"].as_u64().expect("lag_ms");
    assert!(
        lag_ms >= before.saturating_sub(first_ts) && lag_ms <= after - first_ts,
        "lag_ms {lag_ms} is the age of event {} at ts {first_ts}",
        matching[0]
    );
    // Out-of-order ACKs count as done, the cursor waits for the first.
    consumer.ack(&events[1]).await;
    consumer.ack(&events[3]).await;
    consumer.ping().await;
    let answer = lag(&hub, "jobs.*", "workers").await;
    assert_eq!(answer["lag_events"], 3, "{answer}");
    assert_eq!(answer["oldest_pending_seq"], matching[0]);
    // /cursors and /groups show the same group.
    let cursors = admin_json(&hub, "/cursors?topic=jobs.*").await;
    let group = &cursors["groups"][0];
    assert_eq!(group["group"], "workers");
    assert_eq!(group["lag_events"], 3);
    assert_eq!(group["inflight"], 3);
    assert_eq!(group["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(group["cursor"]["seq"], 0);
    let groups = admin_json(&hub, "/groups").await;
    assert_eq!(groups["groups"].as_array().map(Vec::len), Some(1));
    assert!(groups["connections"].as_i64().expect("connections") >= 2);
    // Once the consumer is gone the answer comes from the store alone (its
    // done marks): the same numbers.
    consumer.close().await;
    let mut unloaded = Value::Null;
    for _ in 0..200 {
        let groups = admin_json(&hub, "/groups").await;
        if groups["groups"][0]["members"]
            .as_array()
            .is_some_and(Vec::is_empty)
        {
            unloaded = lag(&hub, "jobs.*", "workers").await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(unloaded["lag_events"], 3, "{unloaded}");
    assert_eq!(unloaded["oldest_pending_seq"], matching[0]);
    // A new member finishes the work: no lag.
    let mut consumer = hub.client().await;
    consumer
        .subscribe("jobs.*", Some("workers"), Value::Null)
        .await;
    for _ in 0..3 {
        let event = consumer.recv_event().await;
        consumer.ack(&event).await;
    }
    consumer.ping().await;
    let answer = lag(&hub, "jobs.*", "workers").await;
    assert_eq!(answer["lag_events"], 0, "{answer}");
    assert_eq!(answer["lag_ms"], 0);
    assert_eq!(answer["oldest_pending_seq"], Value::Null);
    assert_eq!(answer["cursor"], seqs[7]);
    // More events: lag counts exactly the new matching ones.
    // (Delivered but not acknowledged: still lag.)
    publish_all(&mut publisher, &["other.z", "jobs.e", "jobs.f"]).await;
    consumer.recv_event().await;
    consumer.recv_event().await;
    let answer = lag(&hub, "jobs.*", "workers").await;
    assert_eq!(answer["lag_events"], 2, "{answer}");
    // Unknown groups and bad input.
    assert_eq!(
        admin_get(&hub, "/lag?topic=jobs.*&group=nobody")
            .await
            .status,
        404
    );
    assert_eq!(
        admin_get(&hub, "/lag?topic=jobs..x&group=g").await.status,
        400
    );
    assert_eq!(admin_get(&hub, "/lag?topic=jobs.*").await.status, 400);
}

#[tokio::test]
async fn replay_redelivers_a_dead_letter_to_a_live_member() {
    let hub = dev_hub().await;
    let host = authority(&hub.url);
    let mut publisher = hub.client().await;
    let seqs = publish_all(&mut publisher, &["mail.send", "mail.send"]).await;
    let mut consumer = hub.client().await;
    consumer
        .subscribe("mail.*", Some("senders"), json!({"from": "earliest"}))
        .await;
    let first = consumer.recv_event().await;
    let second = consumer.recv_event().await;
    consumer
        .send_json(json!({
            "op": "NACK", "topic": "mail.*", "group": "senders",
            "id": first["event"]["id"], "reason": "smtp down", "final": true
        }))
        .await;
    consumer.ack(&second).await;
    consumer.ping().await;
    let listed = admin_json(&hub, "/dead-letters?topic=mail.*&group=senders").await;
    assert_eq!(listed["count"], 1, "{listed}");
    let letter = &listed["dead_letters"][0];
    assert_eq!(letter["seq"], seqs[0]);
    assert_eq!(letter["reason"], "smtp down");
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["event_id"], first["event"]["id"]);
    assert_eq!(lag(&hub, "mail.*", "senders").await["lag_events"], 0);

    let body = json!({"topic": "mail.*", "group": "senders", "seq": seqs[0]}).to_string();
    let replayed = http::post(&host, "/dead-letters/replay", Some(ADMIN_TOKEN), &body).await;
    assert_eq!(replayed.status, 202, "{}", replayed.body);
    assert_eq!(replayed.json()["replayed"], seqs[0]);
    let again = http::post(&host, "/dead-letters/replay", Some(ADMIN_TOKEN), &body).await;
    assert_eq!(again.status, 409, "already being replayed: {}", again.body);
    let redelivered = consumer.recv_event().await;
    assert_eq!(redelivered["event"]["id"], first["event"]["id"]);
    assert_eq!(redelivered["ctx"]["attempt"], 1, "attempts start again");
    consumer.ack(&redelivered).await;
    consumer.ping().await;
    let listed = admin_json(&hub, "/dead-letters?topic=mail.*&group=senders").await;
    assert_eq!(
        listed["count"], 0,
        "an acknowledged replay removes the dead letter"
    );
    let gone = http::post(&host, "/dead-letters/replay", Some(ADMIN_TOKEN), &body).await;
    assert_eq!(gone.status, 404);

    // Without a connected member there is nobody to deliver to.
    publish_all(&mut publisher, &["mail.send"]).await;
    let third = consumer.recv_event().await;
    consumer
        .send_json(json!({
            "op": "NACK", "topic": "mail.*", "group": "senders",
            "id": third["event"]["id"], "final": true
        }))
        .await;
    consumer.ping().await;
    consumer.close().await;
    // Wait until the broker saw the disconnect.
    for _ in 0..500 {
        let groups = admin_json(&hub, "/groups").await;
        if groups["groups"][0]["members"]
            .as_array()
            .is_some_and(Vec::is_empty)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seq = third["event"]["seq"].as_u64().expect("seq");
    let body = json!({"topic": "mail.*", "group": "senders", "seq": seq}).to_string();
    let refused = http::post(&host, "/dead-letters/replay", Some(ADMIN_TOKEN), &body).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("member"), "{}", refused.body);
    let bad = http::post(
        &host,
        "/dead-letters/replay",
        Some(ADMIN_TOKEN),
        "{\"seq\":1}",
    )
    .await;
    assert_eq!(bad.status, 400);
}

/// Samples of a scrape: name{labels} → value. Asserts every sample line
/// parses.
fn scrape(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_owned())).collect();
    let sample_lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let parsed = prometheus_parse::Scrape::parse(lines.into_iter()).expect("parse");
    // A histogram's bucket lines become one sample.
    let bucket_lines = text.lines().filter(|l| l.contains("_bucket{")).count();
    let histograms = parsed
        .samples
        .iter()
        .filter(|s| matches!(s.value, prometheus_parse::Value::Histogram(_)))
        .count();
    assert_eq!(
        parsed.samples.len(),
        sample_lines - bucket_lines + histograms,
        "every sample parses: {text}"
    );
    parsed.samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[tokio::test]
async fn metrics_parse_and_change_as_traffic_flows() {
    let hub = dev_hub().await;
    let response = admin_get(&hub, "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        response.headers
    );
    let before = scrape(&response.body);
    let published_before = value(&before, "promhub_publishes_total", &[]);
    let mut publisher = hub.client().await;
    let mut consumer = hub.client().await;
    consumer
        .subscribe("metered.*", Some("meter"), json!({"from": "latest"}))
        .await;
    publish_all(&mut publisher, &["metered.a"; 12]).await;
    // 10 ACKed, 2 left unacknowledged: lag 2.
    let mut unacked = Vec::new();
    for i in 0..12 {
        let event = consumer.recv_event().await;
        if i < 10 {
            consumer.ack(&event).await;
        } else {
            unacked.push(event);
        }
    }
    consumer.ping().await;
    let after = scrape(&admin_get(&hub, "/metrics").await.body);
    assert_eq!(
        value(&after, "promhub_publishes_total", &[]),
        published_before + 12.0
    );
    assert_eq!(
        value(&after, "promhub_frames_in_total", &[("op", "publish")]),
        12.0
    );
    assert!(value(&after, "promhub_frames_out_total", &[("op", "puback")]) >= 12.0);
    assert!(value(&after, "promhub_frames_out_total", &[("op", "event")]) >= 12.0);
    assert_eq!(
        value(&after, "promhub_deliveries_total", &[("kind", "group")]),
        12.0
    );
    assert_eq!(value(&after, "promhub_acks_total", &[]), 10.0);
    assert_eq!(value(&after, "promhub_connections", &[]), 2.0);
    assert!(value(&after, "promhub_store_commit_seconds_count", &[]) >= 1.0);
    assert_eq!(
        value(
            &after,
            "promhub_group_lag_events",
            &[("pattern", "metered.*"), ("group", "meter")]
        ),
        2.0
    );
    assert!(
        value(
            &after,
            "promhub_group_lag_seconds",
            &[("pattern", "metered.*"), ("group", "meter")]
        ) >= 0.0
    );
    assert_eq!(value(&after, "promhub_dead_letters_total", &[]), 0.0);
    assert!(
        !after.iter().any(|s| s.labels.get("topic").is_some()),
        "no topic labels"
    );
    // A NACK redelivers (attempt 2); a final NACK dead-letters.
    let nack = |event: &Value, final_: bool| {
        json!({"op": "NACK", "topic": "metered.*", "group": "meter",
               "id": event["event"]["id"], "delay_ms": 0, "final": final_})
    };
    consumer.send_json(nack(&unacked[0], false)).await;
    let again = consumer.recv_event().await;
    assert_eq!(again["ctx"]["attempt"], 2);
    consumer.send_json(nack(&again, true)).await;
    consumer.ping().await;
    let last = scrape(&admin_get(&hub, "/metrics").await.body);
    assert_eq!(value(&last, "promhub_nacks_total", &[]), 2.0);
    assert_eq!(value(&last, "promhub_redeliveries_total", &[]), 1.0);
    assert_eq!(value(&last, "promhub_dead_letters_total", &[]), 1.0);
    assert_eq!(
        value(
            &last,
            "promhub_group_lag_events",
            &[("pattern", "metered.*"), ("group", "meter")]
        ),
        1.0
    );
    assert_eq!(value(&last, "promhub_groups", &[]), 1.0);
}

#[tokio::test]
async fn registered_outbox_sources_appear_in_the_metrics() {
    let metrics = std::sync::Arc::new(promhub_hub::Metrics::new());
    let backlog = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(42));
    let reading = std::sync::Arc::clone(&backlog);
    metrics
        .register_outbox_source(
            "orders-db",
            std::sync::Arc::new(move || promhub_hub::OutboxGauges {
                backlog: reading.load(std::sync::atomic::Ordering::Relaxed),
                oldest_pending_age_secs: 12.5,
                dead: 1,
            }),
        )
        .expect("register");
    let hub = TestHub::start_with_parts(
        |c| c.admin_token = Some(Secret::new(ADMIN_TOKEN)),
        promhub_hub::HubParts {
            metrics: Some(metrics),
            ..promhub_hub::HubParts::default()
        },
    )
    .await;
    let source = [("source", "orders-db")];
    let samples = scrape(&admin_get(&hub, "/metrics").await.body);
    assert_eq!(value(&samples, "promhub_outbox_backlog", &source), 42.0);
    assert_eq!(
        value(
            &samples,
            "promhub_outbox_oldest_pending_age_seconds",
            &source
        ),
        12.5
    );
    assert_eq!(value(&samples, "promhub_outbox_dead", &source), 1.0);
    backlog.store(0, std::sync::atomic::Ordering::Relaxed);
    let samples = scrape(&admin_get(&hub, "/metrics").await.body);
    assert_eq!(value(&samples, "promhub_outbox_backlog", &source), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_of_a_10000_event_burst_drains_to_zero() {
    const BURST: usize = 10_000;
    const CHUNK: usize = 500;
    let hub = dev_hub().await;
    let mut consumer = hub.client().await;
    consumer
        .subscribe("burst.*", Some("drain"), json!({"max_inflight": 500}))
        .await;
    let consuming = tokio::spawn(async move {
        for _ in 0..BURST {
            let event = consumer.recv_event().await;
            consumer.ack(&event).await;
        }
        consumer
    });
    let mut publisher = hub.client().await;
    let mut published = 0;
    while published < BURST {
        for i in 0..CHUNK {
            let frame = json!({"op": "PUBLISH", "topic": "burst.x", "payload": published + i, "rid": format!("p{}", published + i)});
            publisher.send_json(frame).await;
        }
        for _ in 0..CHUNK {
            let ack = publisher.recv_json().await;
            assert_eq!(ack["op"], "PUBACK", "{ack}");
        }
        published += CHUNK;
    }
    // Generous bound: a functional check that the lag returns to 0, not a
    // benchmark.
    let mut drained = None;
    for _ in 0..600 {
        let answer = lag(&hub, "burst.*", "drain").await;
        if answer["lag_events"] == 0 {
            drained = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = drained.expect("lag did not return to 0 within 60 s");
    assert_eq!(drained["lag_ms"], 0);
    let consumer = tokio::time::timeout(Duration::from_secs(60), consuming)
        .await
        .expect("consumer hung")
        .expect("consumer panicked");
    consumer.close().await;
}
