//! Retention on a real hub: a per-topic count limit trims the log in the
//! background, other topics keep everything, a durable group that had not
//! read the removed events skips them (its lag counts only what is left),
//! and the removals show in /metrics.

mod common;

use std::time::Duration;

use common::http::{self, authority};
use common::{Client, TestHub};
use promhub_hub::auth::Secret;
use promhub_hub::retention::{RetentionConfig, TopicRetention};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "retention-test-admin-token-0123";

async fn get_json(hub: &TestHub, path: &str) -> Value {
    let response = http::get(&authority(&hub.url), path, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    response.json()
}

async fn publish_n(client: &mut Client, topic: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let ack = client.publish(topic, json!({ "n": i }), json!(null)).await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        ids.push(ack["id"].as_str().expect("id").to_owned());
    }
    ids
}

fn event_ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_count_limit_trims_its_topics_and_groups_skip_what_is_gone() {
    let mut hub = TestHub::start_with(|c| {
        c.admin_token = Some(Secret::new(ADMIN_TOKEN));
        c.retention = RetentionConfig {
            topics: vec![TopicRetention {
                pattern: "logs.**".to_owned(),
                max_age_secs: None,
                max_events: Some(3),
            }],
            interval_ms: 50,
            ..RetentionConfig::default()
        };
    })
    .await;
    // The group exists (cursor at the start) but reads nothing yet.
    let mut member = hub.client().await;
    let suback = member
        .subscribe("logs.*", Some("audit"), json!({"from": "earliest"}))
        .await;
    assert_eq!(suback["op"], "SUBACK", "{suback}");
    member.close().await;
    // Wait until the hub has dropped the member: events a group already
    // holds in memory (handed to a member, or queued for one) are delivered
    // even if retention removes them from the log meanwhile, which this
    // test is not about.
    let mut members = Value::Null;
    for _ in 0..200 {
        let groups = get_json(&hub, "/groups").await;
        members = groups["groups"][0]["members"].clone();
        if members.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(members, json!([]), "the member is gone");

    let mut publisher = hub.client().await;
    let logs = publish_n(&mut publisher, "logs.app", 10).await;
    let other = publish_n(&mut publisher, "other.x", 2).await;

    // The background pass leaves the newest 3 of logs.app.
    let mut lag = Value::Null;
    for _ in 0..200 {
        lag = get_json(&hub, "/lag?topic=logs.*&group=audit").await;
        if lag["lag_events"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lag["lag_events"], 3, "{lag}");
    let page = get_json(&hub, "/events?topic=logs.app&limit=100").await;
    assert_eq!(event_ids(&page), logs[7..]);
    let page = get_json(&hub, "/events?topic=other.x&limit=100").await;
    assert_eq!(
        event_ids(&page),
        other,
        "a topic without a rule keeps everything"
    );

    // The group resumes at the first retained event.
    let mut member = hub.client().await;
    member.subscribe("logs.*", Some("audit"), json!(null)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = member.recv_event().await;
        got.push(event["event"]["id"].as_str().expect("id").to_owned());
        member.ack(&event).await;
    }
    assert_eq!(got, logs[7..]);
    member.assert_alive_and_quiet().await;
    let lag = get_json(&hub, "/lag?topic=logs.*&group=audit").await;
    assert_eq!(lag["lag_events"], 0, "{lag}");

    let metrics = http::get(&authority(&hub.url), "/metrics", Some(ADMIN_TOKEN)).await;
    assert!(
        metrics
            .body
            .lines()
            .any(|line| line == "promhub_retention_removed_events_total 7"),
        "{}",
        metrics.body
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn lag_does_not_subtract_acknowledged_events_that_retention_removed() {
    let mut hub = TestHub::start_with(|c| {
        c.admin_token = Some(Secret::new(ADMIN_TOKEN));
        c.retention = RetentionConfig {
            max_events_per_topic: Some(3),
            interval_ms: 50,
            ..RetentionConfig::default()
        };
    })
    .await;
    let mut member = hub.client().await;
    member
        .subscribe("jobs.*", Some("workers"), json!({"max_inflight": 100}))
        .await;
    let mut publisher = hub.client().await;
    let ids = publish_n(&mut publisher, "jobs.a", 10).await;
    let mut events = Vec::new();
    for _ in 0..10 {
        events.push(member.recv_event().await);
    }
    // Out of order: the 2nd and 3rd are done above a cursor held by the 1st.
    member.ack(&events[1]).await;
    member.ack(&events[2]).await;
    member.assert_alive_and_quiet().await;
    // Retention keeps the newest 3: the two done events are gone too.
    let mut left = Vec::new();
    for _ in 0..200 {
        left = event_ids(&get_json(&hub, "/events?topic=jobs.a&limit=100").await);
        if left.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, ids[7..]);
    // 3 events are left and none of them is done.
    let lag = get_json(&hub, "/lag?topic=jobs.*&group=workers").await;
    assert_eq!(lag["lag_events"], 3, "{lag}");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_retention_rule_fails_the_start_with_its_name() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = promhub_hub::HubConfig {
        data: dir.path().to_path_buf(),
        retention: RetentionConfig {
            topics: vec![TopicRetention {
                pattern: "logs..x".to_owned(),
                max_age_secs: Some(60),
                max_events: None,
            }],
            ..RetentionConfig::default()
        },
        ..promhub_hub::HubConfig::default()
    };
    let error = promhub_hub::run(listener, config, std::future::pending())
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("logs..x"), "{error}");
}

#[test]
fn the_readme_retention_example_is_a_valid_config() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("## Retention")
        .nth(1)
        .expect("a Retention section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml block");
    let config: promhub_hub::HubConfig = toml::from_str(block).expect("parses as the hub config");
    config.validate().expect("valid");
    let policy = config.retention.policy().expect("policy");
    assert_eq!(policy.rules.len(), 2);
    assert_eq!(config.retention.max_age_secs, Some(604_800));
}
