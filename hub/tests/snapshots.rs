//! Snapshots (`opts.snapshot`) are read page by page under the live
//! slow-consumer bound (semantics.md §4a, issue finding 1): a client that
//! asks for snapshots and never reads cannot make the hub hold them, and a
//! client that reads slowly still gets every key, then the live events.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::process::HubProcess;
use common::{Client, TestHub};
use serde_json::json;

/// Keys of the slow reader's snapshot, and payload bytes per event: ~6 MB.
const KEYS: usize = 6_000;
const PAYLOAD_BYTES: usize = 1_000;
/// Keys of the snapshot nobody reads: ~20 MB, more than the socket buffers
/// of a loopback connection take in, so what the hub holds shows in its
/// memory.
const BIG_KEYS: usize = 20_000;

/// Publishes one event per key on `topic`, many in flight at once.
async fn publish_keys(client: &mut Client, topic: &str, keys: usize) {
    let pad = "k".repeat(PAYLOAD_BYTES);
    for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
        for &n in chunk {
            let rid = client.rid();
            client
                .send_json(json!({
                    "op": "PUBLISH", "topic": topic, "rid": rid,
                    "payload": {"n": n, "pad": pad},
                    "opts": {"key": format!("key-{n}")},
                }))
                .await;
        }
        for _ in chunk {
            let ack = client.recv_json().await;
            assert_eq!(ack["op"], "PUBACK", "{ack}");
        }
    }
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    promhub_bench::proc_stats::memory_kib(pid)
        .expect("hub memory")
        .0
}

/// The hub's RSS once it stopped growing (the work a test started has
/// settled): the highest of readings taken until three in a row are
/// within 1 MiB of each other, at most ~10 s.
async fn settled_rss_kib(pid: u32) -> u64 {
    let mut readings = vec![rss_kib(pid)];
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        readings.push(rss_kib(pid));
        if let [.., a, b, c] = readings[..]
            && a.abs_diff(c) < 1024
            && b.abs_diff(c) < 1024
        {
            break;
        }
    }
    readings.into_iter().max().unwrap_or(0)
}

#[tokio::test]
async fn snapshots_asked_for_by_clients_that_never_read_do_not_grow_the_hub() {
    let data = common::data_dir();
    let hub = HubProcess::spawn(data.path(), &[], &["--listen", "127.0.0.1:0"]).await;
    let mut publisher = hub.client().await;
    publish_keys(&mut publisher, "snap.keys", BIG_KEYS).await;

    // A client that reads gets the whole snapshot (this also warms the
    // store's cache, so what follows measures only what the snapshots hold).
    let mut reader = hub.client().await;
    reader
        .subscribe("snap.keys", None, json!({"snapshot": true}))
        .await;
    let mut keys = BTreeSet::new();
    while keys.len() < BIG_KEYS {
        let event = reader.recv_event().await;
        assert_eq!(event["ctx"]["snapshot"], true, "{event}");
        keys.insert(event["event"]["key"].as_str().unwrap().to_owned());
    }
    reader.assert_alive_and_quiet().await;
    let start = settled_rss_kib(hub.pid()).await;

    // One client sends 20 SUBSCRIBEs with snapshot and reads nothing.
    let mut greedy = Client::connect(&hub.url).await;
    greedy.send_json(json!({"op": "AUTH"})).await;
    for n in 0..20 {
        greedy
            .send_json(json!({
                "op": "SUBSCRIBE", "topic": "snap.keys", "rid": format!("s{n}"),
                "opts": {"snapshot": true},
            }))
            .await;
    }
    let after_one = settled_rss_kib(hub.pid()).await;

    // Ten more clients, one snapshot each, reading nothing either.
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut client = Client::connect(&hub.url).await;
        client.send_json(json!({"op": "AUTH"})).await;
        client
            .send_json(json!({
                "op": "SUBSCRIBE", "topic": "snap.keys", "rid": "s",
                "opts": {"snapshot": true},
            }))
            .await;
        idle.push(client);
    }
    let after_ten = settled_rss_kib(hub.pid()).await;
    let one = after_one.saturating_sub(start);
    let ten = after_ten.saturating_sub(after_one);
    println!(
        "hub RSS {start} KiB with a {BIG_KEYS}-key (~20 MB) snapshot topic; +{one} KiB for 20 \
         snapshots asked by one client that never reads; +{ten} KiB for 10 more such clients"
    );
    // Before paging, each snapshot was read and queued whole (~20 MB of
    // events, plus their frames): 20 of them held over a gigabyte.
    assert!(one < 64 * 1024, "20 snapshots grew the hub by {one} KiB");
    assert!(
        ten < 64 * 1024,
        "10 clients' snapshots grew the hub by {ten} KiB"
    );

    // The hub still serves everyone else.
    let mut fresh = hub.client().await;
    fresh.subscribe("snap.keys", None, json!(null)).await;
    let ack = publisher
        .publish("snap.keys", json!("after"), json!({"key": "key-0"}))
        .await;
    assert_eq!(ack["op"], "PUBACK");
    assert_eq!(fresh.recv_event().await["event"]["payload"], "after");
    drop(greedy);
    drop(idle);
}

#[tokio::test]
async fn a_snapshot_larger_than_the_live_bound_reaches_a_slow_reader_whole_then_live_events() {
    let mut hub = TestHub::start_with(|config| {
        // The snapshot (~6 MB) is 24 times the per-connection bound.
        config.ephemeral_buffer_bytes = 256 * 1024;
    })
    .await;
    let mut publisher = hub.client().await;
    publish_keys(&mut publisher, "slow.keys", KEYS).await;

    let mut reader = hub.client().await;
    let suback = reader
        .subscribe("slow.keys", None, json!({"snapshot": true}))
        .await;
    assert_eq!(suback["op"], "SUBACK");
    let mut keys = BTreeSet::new();
    let mut live = Vec::new();
    let mut published_live = 0;
    while keys.len() < KEYS || live.len() < published_live {
        let event = reader.recv_event().await;
        if event["ctx"]["snapshot"] == true {
            assert!(
                live.is_empty(),
                "a snapshot event after a live one: {event}"
            );
            assert!(
                keys.insert(event["event"]["key"].as_str().unwrap().to_owned()),
                "a key twice: {event}"
            );
            // A slow reader: it pauses now and then, and live events are
            // published while it is still reading the snapshot.
            if keys.len() % 1000 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let ack = publisher
                    .publish("slow.keys", json!({"live": keys.len()}), json!(null))
                    .await;
                assert_eq!(ack["op"], "PUBACK");
                published_live += 1;
            }
        } else {
            live.push(event["event"]["payload"]["live"].as_u64().unwrap());
        }
    }
    assert_eq!(live, [1000, 2000, 3000, 4000, 5000, 6000]);
    reader.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}
