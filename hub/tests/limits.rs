//! Publish quotas over real sockets: `ERR rate_limited` with a usable
//! `retry_after_ms`, the per-topic quota shared by connections, the
//! token's `rate` claim, and the 4029 close for a connection that keeps
//! publishing while refused.
//!
//! Waiting out `retry_after_ms` before the next publish makes these tests
//! independent of machine speed: a slow machine only waits longer, which
//! refills more. Nothing asserts on elapsed time.

mod common;

use std::time::Duration;

use common::TestHub;
use common::jwt::{SECRET, claims_at, hs};
use jsonwebtoken::Algorithm;
use promhub_hub::auth::Secret;
use promhub_hub::limits::COUNTERS;
use serde_json::{Value, json};

fn retry_after(answer: &Value) -> u64 {
    assert_eq!(answer["op"], "ERR", "{answer}");
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    answer["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after_ms in {answer}"))
}

const ADMIN_TOKEN: &str = "limits-test-admin-token-0123456789";

/// `promhub_rate_limited_total` as /metrics reports it.
async fn rate_limited_metric(hub: &TestHub) -> f64 {
    let response = common::http::get(
        &common::http::authority(&hub.url),
        "/metrics",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let lines = response.body.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    scrape
        .samples
        .iter()
        .find(|sample| sample.metric == "promhub_rate_limited_total")
        .map(|sample| match sample.value {
            // OpenMetrics names the family without `_total`, so the parser
            // may not tie the sample to its `counter` type.
            prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Untyped(value) => {
                value
            }
            ref other => panic!("not a counter: {other:?}"),
        })
        .expect("promhub_rate_limited_total in /metrics")
}

async fn wait_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms + 1)).await;
}

#[tokio::test]
async fn over_the_connection_quota_publish_is_refused_with_retry_after_then_admitted() {
    let mut hub = TestHub::start_with(|config| {
        config.limits.publish_rate = Some(10.0);
        config.limits.publish_burst = Some(2);
        config.admin_token = Some(Secret::new(ADMIN_TOKEN));
    })
    .await;
    let mut client = hub.client().await;
    let refused_before = COUNTERS.snapshot().rate_limited;
    let scraped_before = rate_limited_metric(&hub).await;
    for n in 0..2 {
        let ack = client.publish("q.a", json!(n), json!(null)).await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
    }
    let refused = client.publish("q.a", json!(2), json!(null)).await;
    let wait = retry_after(&refused);
    // One token every 100 ms: the wait is at most that, and never zero.
    assert!((1..=100).contains(&wait), "retry_after_ms {wait}");
    assert!(refused["rid"].is_string(), "the refusal answers the rid");
    assert!(COUNTERS.snapshot().rate_limited > refused_before);
    // The refusal shows in /metrics.
    assert!(rate_limited_metric(&hub).await > scraped_before);
    wait_ms(wait).await;
    let ack = client.publish("q.a", json!(2), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK", "{ack}");

    // The refused publish was not stored: seqs are consecutive.
    let mut reader = hub.client().await;
    reader
        .subscribe("q.a", Some("check"), json!({"from": "earliest"}))
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(reader.recv_event().await["event"]["payload"].clone());
    }
    assert_eq!(got, [json!(0), json!(1), json!(2)]);
    reader.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_topic_quota_is_shared_by_every_connection() {
    let mut hub = TestHub::start_with(|config| {
        config.limits.topic_publish_rate = Some(1.0);
        config.limits.topic_publish_burst = Some(1);
    })
    .await;
    let mut first = hub.client().await;
    let mut second = hub.client().await;
    let ack = first.publish("hot.topic", json!(1), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK");
    let refused = second.publish("hot.topic", json!(2), json!(null)).await;
    let wait = retry_after(&refused);
    assert!((1..=1000).contains(&wait), "retry_after_ms {wait}");
    // Other topics have their own quota.
    let ack = second.publish("cold.topic", json!(3), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK");
    wait_ms(wait).await;
    let ack = second.publish("hot.topic", json!(2), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK", "{ack}");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_tokens_rate_claim_replaces_the_configured_quota() {
    let mut hub = TestHub::start_with(|config| {
        config.auth.jwt_secret = Some(Secret::new(SECRET));
        config.limits.publish_rate = Some(1000.0);
    })
    .await;
    let now = promhub_now_secs();
    let scopes = json!(["publish:**", "subscribe:**"]);
    let limited = hs(
        Algorithm::HS256,
        &claims_at(
            now,
            json!({"scopes": scopes, "rate": {"publish_per_sec": 1, "burst": 1}}),
        ),
    );
    let generous = hs(Algorithm::HS256, &claims_at(now, json!({"scopes": scopes})));

    let mut slow = hub.connect().await;
    slow.send_json(json!({"op": "AUTH", "token": limited}))
        .await;
    assert_eq!(slow.recv_json().await["op"], "OK");
    assert_eq!(
        slow.publish("c.x", json!(1), json!(null)).await["op"],
        "PUBACK"
    );
    let wait = retry_after(&slow.publish("c.x", json!(2), json!(null)).await);
    assert!((1..=1000).contains(&wait), "retry_after_ms {wait}");

    let mut fast = hub.connect().await;
    fast.send_json(json!({"op": "AUTH", "token": generous}))
        .await;
    assert_eq!(fast.recv_json().await["op"], "OK");
    for n in 0..5 {
        let ack = fast.publish("c.y", json!(n), json!(null)).await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_that_keeps_publishing_while_refused_is_closed_with_4029() {
    let mut hub = TestHub::start_with(|config| {
        config.limits.publish_rate = Some(0.5);
        config.limits.publish_burst = Some(1);
        config.limits.max_rate_limited = 3;
    })
    .await;
    let mut client = hub.client().await;
    let closes_before = COUNTERS.snapshot().rate_limit_closes;
    assert_eq!(
        client.publish("h.x", json!(0), json!(null)).await["op"],
        "PUBACK"
    );
    // Fire without waiting for answers, like a client ignoring them.
    for n in 1..=10 {
        client
            .send_json(
                json!({"op": "PUBLISH", "topic": "h.x", "payload": n, "rid": format!("h{n}")}),
            )
            .await;
    }
    let mut refusals = 0;
    let closed = loop {
        match client.recv().await {
            Ok(frame) => {
                retry_after(&frame);
                refusals += 1;
                assert!(refusals <= 10, "no close after {refusals} refusals");
            }
            Err(closed) => break closed,
        }
    };
    assert_eq!(closed.code, 4029, "{closed:?}");
    // Three refusals are tolerated; the fourth closes.
    assert_eq!(refusals, 4);
    let reason: Value = serde_json::from_str(&closed.reason).expect("JSON close reason");
    let wait = reason["retry_after_ms"].as_u64().expect("retry_after_ms");
    // The bucket refills one token in 2 s.
    assert!((1..=2000).contains(&wait), "retry_after_ms {wait}");
    assert!(COUNTERS.snapshot().rate_limit_closes > closes_before);

    // Other connections are not affected.
    let mut other = hub.client().await;
    assert_eq!(
        other.publish("h.y", json!(1), json!(null)).await["op"],
        "PUBACK"
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn without_configured_quotas_nothing_is_refused() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    for n in 0..200 {
        client
            .send_json(
                json!({"op": "PUBLISH", "topic": "free.x", "payload": n, "rid": format!("f{n}")}),
            )
            .await;
    }
    for _ in 0..200 {
        assert_eq!(client.recv_json().await["op"], "PUBACK");
    }
    hub.stop().await.unwrap();
}

fn promhub_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A client that pipelines more PUBLISHes than its connection may have
/// waiting for a commit (`max_pending_publishes`) is slowed down, not
/// refused: the frames past the bound wait for room (the connection's
/// slow path), and every one is stored once and answered, in the order
/// sent. PINGs in between (always the slow path) are answered too, in
/// order.
#[tokio::test]
async fn publishes_past_the_pending_bound_wait_for_room_and_are_all_answered_in_order() {
    let mut hub = TestHub::start_with(|config| config.max_pending_publishes = 2).await;
    let mut client = hub.client().await;
    const PUBLISHES: usize = 300;
    for n in 0..PUBLISHES {
        client
            .send_json(json!({"op": "PUBLISH", "topic": "pending.bound", "payload": n, "rid": format!("p{n}")}))
            .await;
        if n % 100 == 99 {
            client
                .send_json(json!({"op": "PING", "rid": format!("ping{n}")}))
                .await;
        }
    }
    let mut seqs = Vec::new();
    let mut pongs = Vec::new();
    while seqs.len() < PUBLISHES || pongs.len() < 3 {
        let frame = client.recv_json().await;
        match frame["op"].as_str() {
            Some("PUBACK") => {
                assert_eq!(frame["rid"], format!("p{}", seqs.len()), "{frame}");
                assert_ne!(frame["duplicate"], true, "{frame}");
                seqs.push(frame["seq"].as_u64().unwrap());
            }
            Some("PONG") => pongs.push(frame["rid"].as_str().unwrap().to_owned()),
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(pongs, ["ping99", "ping199", "ping299"]);
    // Every publish stored once: 300 events on the topic, nothing else.
    assert_eq!(seqs.len(), PUBLISHES);
    assert_eq!(seqs[PUBLISHES - 1] - seqs[0], PUBLISHES as u64 - 1);
    hub.stop().await.unwrap();
}
