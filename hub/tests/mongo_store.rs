//! The real `promhub` binary on the MongoDB store (`--store mongodb://…`,
//! served by a FerretDB this test binary starts): SIGKILL after PUBACKs
//! loses nothing, groups resume after their last ACK, de-duplication and
//! latest-by-key survive the restart, and bad store settings are refused.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{HubProcess, refused_start};
use promhub_hub::store::mongo::test_server::FerretDb;
use serde_json::{Value, json};
use tokio::process::Command;

/// The real binary on the MongoDB store at `store`.
async fn spawn_on(data: &Path, store: &str) -> HubProcess {
    // A short registry lease: a killed hub's group deliveries come back
    // after it.
    HubProcess::spawn(
        data,
        &[("PROMHUB_CLUSTER_LEASE_MS", "600")],
        &["--listen", "127.0.0.1:0", "--store", store],
    )
    .await
}

fn seq(frame: &Value) -> u64 {
    frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {frame}"))
}

#[tokio::test]
async fn kill_9_on_mongodb_loses_no_acknowledged_event_and_groups_resume_after_their_last_ack() {
    let Some(server) = FerretDb::shared_or_skip("kill_9_on_mongodb_loses_nothing") else {
        return;
    };
    let store = server.uri("hub_restart");
    let dir = common::data_dir();
    let hub = spawn_on(dir.path(), &store).await;

    let mut worker = hub.client().await;
    let suback = worker
        .subscribe("orders.*", Some("fulfil"), json!({"from": "earliest"}))
        .await;
    assert_eq!(suback["op"], "SUBACK", "{suback}");

    // A burst of publishes in flight at once.
    let mut publisher = hub.client().await;
    let burst = 300;
    for i in 0..burst {
        publisher
            .send_json(
                json!({"op": "PUBLISH", "topic": "orders.new", "payload": {"i": i},
                "opts": {"key": format!("o{}", i % 50)}, "rid": format!("p{i}")}),
            )
            .await;
    }
    let mut acked = vec![String::new(); burst];
    let mut acked_seqs = vec![0u64; burst];
    for _ in 0..burst {
        let ack = publisher.recv_json().await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        let index: usize = ack["rid"].as_str().unwrap()[1..].parse().unwrap();
        acked[index] = ack["id"].as_str().unwrap().to_owned();
        acked_seqs[index] = seq(&ack);
    }
    // One publisher-chosen id, to be retried after the restart.
    let original = publisher
        .publish("orders.new", json!("once"), json!({"id": "order-42"}))
        .await;
    assert_eq!(original["op"], "PUBACK", "{original}");
    assert_eq!(original["duplicate"], Value::Null, "{original}");

    // The worker handles the first 10 events (ACKs) and holds 5 more.
    let mut handled = Vec::new();
    for _ in 0..15 {
        handled.push(worker.recv_event().await);
    }
    for event in &handled[..10] {
        worker.ack(event).await;
    }
    // PONG once the ACKs are durable.
    worker.ping().await;
    let last_acked_seq = handled[9]["event"]["seq"].as_u64().unwrap();

    hub.kill9().await;

    let hub = spawn_on(dir.path(), &store).await;
    let mut worker = hub.client().await;
    let suback = worker
        .subscribe("orders.*", Some("fulfil"), json!(null))
        .await;
    assert_eq!(suback["from_seq"], last_acked_seq + 1, "{suback}");
    // The 5 held deliveries were claimed by the killed hub (a MongoDB
    // store may be shared by several hubs, see docs/cluster.md): they come
    // back as second attempts once its lease ran out (600 ms here), and
    // the events after them are not held back meanwhile. Every event
    // after the last ACK is delivered.
    let held: Vec<&Value> = handled[10..].iter().map(|e| &e["event"]["id"]).collect();
    let mut resumed = Vec::new();
    while !held
        .iter()
        .all(|id| resumed.iter().any(|e: &Value| e["event"]["id"] == **id))
    {
        let event = worker.recv_event().await;
        worker.ack(&event).await;
        resumed.push(event);
    }
    for event in &resumed {
        let attempt = event["ctx"]["attempt"].as_u64().unwrap();
        let again = held.contains(&&event["event"]["id"]);
        assert_eq!(attempt, if again { 2 } else { 1 }, "{event}");
        assert!(seq(&event["event"]) > last_acked_seq, "{event}");
    }

    // Every acknowledged publish is stored, in order, with its seq.
    let mut auditor = hub.client().await;
    auditor
        .subscribe(
            "orders.*",
            Some("audit"),
            json!({"from": "earliest", "max_inflight": 1000}),
        )
        .await;
    let mut stored = Vec::new();
    let mut stored_seqs = Vec::new();
    for _ in 0..burst {
        let event = auditor.recv_event().await;
        stored.push(event["event"]["id"].as_str().unwrap().to_owned());
        stored_seqs.push(seq(&event["event"]));
    }
    assert_eq!(stored, acked);
    assert_eq!(stored_seqs, acked_seqs);

    // De-duplication survived: the retry answers the original seq.
    let mut publisher = hub.client().await;
    let retry = publisher
        .publish("orders.new", json!("once"), json!({"id": "order-42"}))
        .await;
    assert_eq!(retry["op"], "PUBACK", "{retry}");
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["seq"], original["seq"], "{retry}");

    // New events continue above everything stored before the kill.
    let next = publisher
        .publish("orders.new", json!("after"), json!(null))
        .await;
    assert!(seq(&next) > seq(&original), "{next} after {original}");

    // Latest-by-key survived: the snapshot holds one event per key, the
    // newest one.
    let mut reader = hub.client().await;
    let suback = reader
        .subscribe("orders.new", None, json!({"snapshot": true}))
        .await;
    assert_eq!(suback["op"], "SUBACK", "{suback}");
    let mut snapshot = Vec::new();
    for _ in 0..50 {
        let event = reader.recv_event().await;
        assert_eq!(event["ctx"]["snapshot"], true, "{event}");
        snapshot.push(event);
    }
    let mut newest_per_key = acked_seqs[burst - 50..].to_vec();
    newest_per_key.sort_unstable();
    let mut snapshot_seqs: Vec<u64> = snapshot.iter().map(|e| seq(&e["event"])).collect();
    snapshot_seqs.sort_unstable();
    assert_eq!(snapshot_seqs, newest_per_key);
    reader.assert_alive_and_quiet().await;

    hub.kill9().await;
    assert!(
        !dir.path().join("promhub.db").exists(),
        "the embedded store was not used"
    );
}

/// The URI's write concern is the one used (here `w=1`, no journal wait);
/// an unacknowledged one (`w=0`) is refused at start with the reason.
#[tokio::test]
async fn the_uri_sets_the_write_concern_and_w0_is_refused() {
    let Some(server) = FerretDb::shared_or_skip("the_uri_sets_the_write_concern") else {
        return;
    };
    let dir = common::data_dir();
    let store = format!("{}?w=1&journal=false", server.uri("hub_w1"));
    let hub = spawn_on(dir.path(), &store).await;
    let mut publisher = hub.client().await;
    let mut seqs = Vec::new();
    for i in 0..20 {
        let ack = publisher
            .publish("w1.t", json!({"i": i}), json!(null))
            .await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        seqs.push(seq(&ack));
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    hub.kill9().await;

    let store = format!("{}?w=0", server.uri("hub_w0"));
    let stderr = refused_start(dir.path(), &["--store", &store]).await;
    assert!(stderr.contains("w=0"), "{stderr}");
}

#[tokio::test]
async fn store_settings_that_cannot_work_are_refused() {
    let dir = common::data_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_promhub"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PROMHUB_DATA", dir.path())
        .env("PROMHUB_STORE", "postgres://127.0.0.1/hub")
        .output()
        .await
        .expect("run promhub");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mongodb://"), "{stderr}");

    // A URI without a database, and a server that is not there: clear
    // errors, no hang.
    for (store, message) in [
        ("mongodb://127.0.0.1:1", "names no database"),
        (
            "mongodb://127.0.0.1:1/hub?serverSelectionTimeoutMS=300",
            "cannot reach MongoDB",
        ),
    ] {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(env!("CARGO_BIN_EXE_promhub"))
                .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
                .env("PROMHUB_DATA", dir.path())
                .output(),
        )
        .await
        .expect("promhub did not give up")
        .expect("run promhub");
        assert!(!output.status.success(), "{store}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{store}: {stderr}");
    }
}
