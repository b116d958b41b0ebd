//! One durable group with members on several `promhub serve` processes
//! sharing one FerretDB (semantics.md §7): the members share the group's
//! work through delivery claims — every event handled once in the happy
//! path, in seq order per member — and the deliveries a killed hub held
//! are delivered again by the others after its lease, with the group's
//! lag back to 0.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Client;
use common::cluster::{ADMIN_TOKEN, HubProcess, eventually, guard, next_connection, sdk_client_on};
use common::http::{self, authority};
use futures_util::{SinkExt, StreamExt};
use promhub_hub::store::mongo::test_server::FerretDb;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The registry lease of the tests that kill a hub: its held deliveries
/// come back after it. Long enough that a loaded machine does not make a
/// live hub look dead (a delivery taken over from a live hub is made twice).
const KILL_LEASE_MS: &str = "1500";

/// What one member received: (seq, attempt, when).
type Received = Arc<Mutex<Vec<(u64, u64, Instant)>>>;

/// Subscribes `client` to the group and, in the background, records and
/// (when `ack`) acknowledges every delivery after `ack_after`.
async fn member(mut client: Client, group: &str, opts: Value, ack: bool) -> Received {
    let suback = client.subscribe("jobs.*", Some(group), opts).await;
    assert_eq!(suback["op"], "SUBACK", "{suback}");
    let received: Received = Arc::default();
    // Straight on the socket: a member may wait long for its next event.
    let (mut sink, mut stream) = client.into_inner().split();
    tokio::spawn({
        let received = Arc::clone(&received);
        async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if frame["op"] != "EVENT" {
                    continue;
                }
                let seq = frame["event"]["seq"].as_u64().expect("seq");
                let attempt = frame["ctx"]["attempt"].as_u64().expect("attempt");
                received
                    .lock()
                    .unwrap()
                    .push((seq, attempt, Instant::now()));
                if ack {
                    // Slow enough that one member cannot take everything.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let ack = json!({
                        "op": "ACK", "topic": frame["topic"], "group": frame["group"],
                        "id": frame["event"]["id"], "seq": seq,
                    });
                    if sink.send(Message::text(ack.to_string())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    received
}

async fn publish_all(publisher: &mut Client, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    for i in 0..count {
        let puback = publisher
            .publish(&format!("jobs.{}", i % 3), json!({ "i": i }), Value::Null)
            .await;
        assert_eq!(puback["op"], "PUBACK", "{puback}");
        seqs.push(puback["seq"].as_u64().expect("seq"));
    }
    seqs
}

fn seqs_of(received: &Received) -> Vec<u64> {
    received.lock().unwrap().iter().map(|r| r.0).collect()
}

async fn lag_events(hub: &HubProcess, group: &str) -> u64 {
    let response = http::get(
        &authority(&hub.url),
        &format!("/lag?topic=jobs.*&group={group}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    response.json()["lag_events"].as_u64().expect("lag_events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_a_member_on_each_of_three_hubs_handles_every_event_once() {
    let Some(server) = FerretDb::shared_or_skip("cluster_group_share") else {
        return;
    };
    let store = server.uri("cluster_group_share");
    // No hub dies here: a long lease, so that a loaded machine never makes
    // a live hub look dead (its deliveries would be taken over: twice).
    let hubs = [
        HubProcess::spawn_with_lease(&store, "5000").await,
        HubProcess::spawn_with_lease(&store, "5000").await,
        HubProcess::spawn_with_lease(&store, "5000").await,
    ];
    // One in flight each: a member must ACK before it gets more, so the
    // others' hubs claim what it cannot take.
    let opts = json!({ "max_inflight": 1 });
    let mut members = Vec::new();
    for hub in &hubs {
        members.push(member(hub.client().await, "workers", opts.clone(), true).await);
    }
    let mut publisher = hubs[0].client().await;
    let published = publish_all(&mut publisher, 60).await;
    let handled = || {
        members
            .iter()
            .map(|m| m.lock().unwrap().len())
            .sum::<usize>()
    };
    guard("every event handled", async {
        while handled() < published.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Time for a duplicate to show up, if the claims let one through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all: Vec<u64> = members.iter().flat_map(seqs_of).collect();
    all.sort_unstable();
    if all != published {
        // Which hub delivered what, and what the hubs said, for the record.
        for (index, member) in members.iter().enumerate() {
            let got: Vec<(u64, u64)> = member.lock().unwrap().iter().map(|r| (r.0, r.1)).collect();
            eprintln!("member on hub {index} got (seq, attempt): {got:?}");
        }
        for (index, hub) in hubs.iter().enumerate() {
            for line in hub.log.lock().unwrap().iter() {
                if line.contains("took over") || line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("hub {index}: {line}");
                }
            }
        }
    }
    assert_eq!(all, published, "every event exactly once across the hubs");
    for (index, received) in members.iter().enumerate() {
        let seqs = seqs_of(received);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "member on hub {index}: not in seq order: {seqs:?}"
        );
        assert!(
            received.lock().unwrap().iter().all(|r| r.1 == 1),
            "member on hub {index}: a redelivery in the happy path"
        );
        assert!(
            !seqs.is_empty(),
            "member on hub {index} got no share of the work"
        );
    }
    eprintln!(
        "60 events, members on 3 hubs handled {:?}",
        members.iter().map(|m| seqs_of(m).len()).collect::<Vec<_>>()
    );
    for hub in &hubs {
        eventually("the group's lag is 0 on every hub", async || {
            lag_events(hub, "workers").await == 0
        })
        .await;
    }
    // The ops API of any hub answers for the whole cluster: /groups lists
    // the other hubs' members of the group, /metrics every hub's counters
    // (as of their last registry renewal).
    let ids: Vec<String> = hubs[0].cluster().await["hubs"]
        .as_array()
        .expect("hubs")
        .iter()
        .map(|hub| hub["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    let on_c = &hubs[2];
    eventually("/groups on C shows the members on A and B", async || {
        let groups = http::get(&authority(&on_c.url), "/groups", Some(ADMIN_TOKEN))
            .await
            .json();
        let Some(group) = groups["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group"] == "workers"))
        else {
            return false;
        };
        let others = group["other_hubs"].as_array().expect("other_hubs");
        groups["cluster"]["hubs"] == 3
            && group["members"].as_array().expect("members").len() == 1
            && others.len() == 2
            && others.iter().all(|o| o["members"] == 1)
    })
    .await;
    eventually(
        "/metrics on C counts the acks of all three hubs",
        async || {
            let text = http::get(&authority(&on_c.url), "/metrics", Some(ADMIN_TOKEN))
                .await
                .body;
            let acks: u64 = text
                .lines()
                .filter(|line| {
                    line.starts_with("promhub_cluster_hub_counts{")
                        && line.contains("what=\"acks\"")
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            text.lines().any(|line| line == "promhub_cluster_hubs 3") && acks == 60
        },
    )
    .await;
    for hub in hubs {
        hub.sigterm().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_held_by_a_killed_hub_are_delivered_again_by_the_others() {
    let Some(server) = FerretDb::shared_or_skip("cluster_group_kill") else {
        return;
    };
    let store = server.uri("cluster_group_kill");
    let a = HubProcess::spawn_with_lease(&store, KILL_LEASE_MS).await;
    let b = HubProcess::spawn_with_lease(&store, KILL_LEASE_MS).await;
    let c = HubProcess::spawn_with_lease(&store, KILL_LEASE_MS).await;
    // The member on A takes deliveries and never acknowledges them (ack
    // deadline 10 minutes: only A's death gives them back).
    let holder = member(
        a.client().await,
        "billing",
        json!({ "max_inflight": 5, "ack_timeout_ms": 600_000 }),
        false,
    )
    .await;
    let opts = json!({ "max_inflight": 5 });
    let on_b = member(b.client().await, "billing", opts.clone(), true).await;
    let on_c = member(c.client().await, "billing", opts, true).await;
    let mut publisher = b.client().await;
    let published = publish_all(&mut publisher, 40).await;
    let held = guard("the member on A holds deliveries", async {
        loop {
            let held = seqs_of(&holder);
            let others = seqs_of(&on_b).len() + seqs_of(&on_c).len();
            if !held.is_empty() && held.len() + others == published.len() {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let killed = Instant::now();
    a.kill9().await;
    let wanted: BTreeSet<u64> = published.iter().copied().collect();
    let handled = || -> BTreeSet<u64> {
        seqs_of(&on_b)
            .into_iter()
            .chain(seqs_of(&on_c))
            .collect::<BTreeSet<u64>>()
    };
    guard("A's held deliveries handled on B and C", async {
        while handled() != wanted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The held ones came back as second attempts, after the kill.
    let again: Vec<(u64, u64, Instant)> = on_b
        .lock()
        .unwrap()
        .iter()
        .chain(on_c.lock().unwrap().iter())
        .filter(|r| held.contains(&r.0))
        .copied()
        .collect();
    eprintln!(
        "held {held:?} again {:?}",
        again.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>()
    );
    assert_eq!(
        again.len(),
        held.len(),
        "each held event delivered once more: {again:?}"
    );
    assert!(again.iter().all(|r| r.1 == 2 && r.2 > killed), "{again:?}");
    let first = again.iter().map(|r| r.2).min().expect("one");
    eprintln!(
        "kill -9 of the hub holding {} deliveries -> first redelivered on another hub after {} ms (lease {} ms)",
        held.len(),
        (first - killed).as_millis(),
        KILL_LEASE_MS
    );
    // Nothing else was delivered twice.
    let mut others: Vec<u64> = seqs_of(&on_b)
        .into_iter()
        .chain(seqs_of(&on_c))
        .filter(|seq| !held.contains(seq))
        .collect();
    others.sort_unstable();
    let mut expected: Vec<u64> = published
        .iter()
        .copied()
        .filter(|seq| !held.contains(seq))
        .collect();
    expected.sort_unstable();
    assert_eq!(others, expected);
    eventually("the group's lag returns to 0", async || {
        lag_events(&b, "billing").await == 0 && lag_events(&c, "billing").await == 0
    })
    .await;
    b.sigterm().await;
    c.sigterm().await;
}

/// A native SDK group worker given every hub's URL, on the hub that is
/// killed with deliveries in hand: it reconnects to another hub on its own
/// and its group subscription resumes there (it gets new events), its held
/// deliveries are delivered again (to it or to the member on another hub),
/// every event is acknowledged, and the lag returns to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_group_worker_of_a_killed_hub_resumes_on_another_and_its_deliveries_come_back() {
    use promhub::SubscribeOptions;

    let Some(server) = FerretDb::shared_or_skip("cluster_group_native") else {
        return;
    };
    let store = server.uri("cluster_group_native");
    let mut hubs = [
        Some(HubProcess::spawn_with_lease(&store, KILL_LEASE_MS).await),
        Some(HubProcess::spawn_with_lease(&store, KILL_LEASE_MS).await),
        Some(HubProcess::spawn_with_lease(&store, KILL_LEASE_MS).await),
    ];
    let urls: Vec<String> = hubs.iter().flatten().map(|h| h.url.clone()).collect();
    // The worker starts on the first hub.
    let (worker, mut worker_events) = sdk_client_on(&urls, &urls[0]).await;
    let mut jobs = worker
        .subscribe::<u64>(
            "jobs.*",
            Some("native"),
            SubscribeOptions::new()
                .max_inflight(3)
                .ack_timeout(Duration::from_secs(600)),
        )
        .await
        .expect("subscribe");
    // Holds its deliveries (no ACK) until the kill; ACKs everything after.
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let worker_got: Received = Arc::default();
    tokio::spawn({
        let (holding, worker_got) = (Arc::clone(&holding), Arc::clone(&worker_got));
        async move {
            let mut held = Vec::new();
            while let Some(delivery) = jobs.next().await {
                let entry = (
                    delivery.seq(),
                    u64::from(delivery.attempt()),
                    Instant::now(),
                );
                worker_got.lock().unwrap().push(entry);
                if holding.load(std::sync::atomic::Ordering::Acquire) {
                    held.push(delivery);
                } else {
                    let _ = delivery.ack().await;
                }
            }
        }
    });
    let on_b = member(
        hubs[1].as_ref().expect("B").client().await,
        "native",
        json!({ "max_inflight": 1 }),
        true,
    )
    .await;
    let mut publisher = hubs[2].as_ref().expect("C").client().await;
    let mut published = publish_all(&mut publisher, 30).await;
    let held = guard("the worker holds 3 deliveries", async {
        loop {
            let held = seqs_of(&worker_got);
            if held.len() == 3 && held.len() + seqs_of(&on_b).len() == published.len() {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    holding.store(false, std::sync::atomic::Ordering::Release);
    hubs[0].take().expect("A").kill9().await;
    let killed = Instant::now();
    let new_hub = next_connection(&mut worker_events, "reconnected").await;
    let reconnected = killed.elapsed();
    assert_ne!(new_hub, urls[0]);
    // More work after the reconnection: the worker's group resumed.
    published.extend(publish_all(&mut publisher, 30).await);
    let wanted: BTreeSet<u64> = published.iter().copied().collect();
    let handled = || -> BTreeSet<u64> {
        let worker_acked = worker_got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !held.contains(&r.0) || r.2 > killed)
            .map(|r| r.0)
            .collect::<Vec<_>>();
        seqs_of(&on_b).into_iter().chain(worker_acked).collect()
    };
    guard("every event handled after the kill", async {
        while handled() != wanted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let all: Vec<(u64, u64, Instant)> = worker_got
        .lock()
        .unwrap()
        .iter()
        .chain(on_b.lock().unwrap().iter())
        .copied()
        .collect();
    let again: Vec<&(u64, u64, Instant)> = all
        .iter()
        .filter(|r| held.contains(&r.0) && r.2 > killed)
        .collect();
    assert_eq!(
        again.len(),
        held.len(),
        "each held delivery came back once: {again:?}"
    );
    assert!(again.iter().all(|r| r.1 == 2), "{again:?}");
    let worker_after = worker_got
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.2 > killed)
        .count();
    assert!(worker_after > 0, "the worker got nothing on its new hub");
    let first_again = again.iter().map(|r| r.2).min().expect("one") - killed;
    eprintln!(
        "kill -9 of a native group worker's hub: reconnected after {} ms, its {} held deliveries \
         back after {} ms (lease {} ms), {} deliveries to it on its new hub",
        reconnected.as_millis(),
        held.len(),
        first_again.as_millis(),
        KILL_LEASE_MS,
        worker_after
    );
    let b = hubs[1].take().expect("B");
    eventually("the group's lag returns to 0", async || {
        lag_events(&b, "native").await == 0
    })
    .await;
    worker.close().await;
    b.sigterm().await;
}
