//! Several real `promhub serve --store mongodb://…` processes on one
//! FerretDB (semantics.md §7): the hub registry (`hubs` collection,
//! heartbeat leases, `GET /cluster`, join / leave logs), and live delivery
//! across hubs (the log follower): an event published on one hub reaches
//! live subscribers on the others, and with publishers on every hub every
//! reader sees one strictly increasing seq order with nothing skipped.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Client;
use common::cluster::{
    HubProcess, alive, eventually, eventually_within, guard, next_connection, sdk_client_on,
    sdk_config,
};
use promhub_hub::store::mongo::test_server::FerretDb;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_register_renew_and_leave_and_cluster_lists_them() {
    let Some(server) = FerretDb::shared_or_skip("hubs_register_renew_and_leave") else {
        return;
    };
    let store = server.uri("cluster_registry");
    let a = HubProcess::spawn(&store).await;
    let b = HubProcess::spawn(&store).await;
    let c = HubProcess::spawn(&store).await;

    // Every hub lists all three, each with its own id and address (a hub
    // registers right after its `listening on` line).
    eventually("A lists three hubs", async || {
        alive(&a.cluster().await).len() == 3
    })
    .await;
    let listing = a.cluster().await;
    assert_eq!(listing["clustered"], true, "{listing}");
    let hubs = alive(&listing);
    assert_eq!(hubs.len(), 3, "{listing}");
    let mut addresses: Vec<&str> = hubs.iter().map(|(_, address)| address.as_str()).collect();
    addresses.sort_unstable();
    let mut urls = vec![a.url.as_str(), b.url.as_str(), c.url.as_str()];
    urls.sort_unstable();
    assert_eq!(addresses, urls);
    for hub in [&b, &c] {
        let other = hub.cluster().await;
        assert_eq!(alive(&other).len(), 3, "{other}");
        assert_ne!(other["self"], listing["self"]);
    }
    let first = &listing["hubs"][0];
    assert!(
        first["lease_until_ms"].as_i64() > first["heartbeat_ms"].as_i64(),
        "{first}"
    );

    // Leases are renewed: the heartbeat moves.
    let before = a.cluster().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = a.cluster().await;
    for i in 0..3 {
        assert!(
            after["hubs"][i]["heartbeat_ms"].as_i64() > before["hubs"][i]["heartbeat_ms"].as_i64(),
            "{before} {after}"
        );
    }
    // A saw B and C join.
    eventually("A logs two joins", async || {
        a.logged("cluster: a hub joined") >= 2
    })
    .await;

    // A clean stop removes the registration at once.
    let c_id = alive(&listing)
        .into_iter()
        .find(|(_, address)| *address == c.url)
        .expect("C listed")
        .0;
    c.sigterm().await;
    let now = a.cluster().await;
    assert_eq!(alive(&now).len(), 2, "{now}");
    assert!(
        !now["hubs"].to_string().contains(&c_id),
        "C's registration is gone: {now}"
    );
    eventually("A logs C leaving", async || {
        a.logged("cluster: a hub left") >= 1
    })
    .await;

    // A killed hub stays listed, not alive, once its lease runs out.
    let b_url = b.url.clone();
    b.kill9().await;
    eventually("B's lease runs out", async || {
        let now = a.cluster().await;
        let hubs = now["hubs"].as_array().expect("hubs").clone();
        alive(&now).len() == 1
            && hubs
                .iter()
                .any(|hub| hub["address"] == b_url.as_str() && hub["alive"] == false)
    })
    .await;
    eventually("A logs B leaving", async || {
        a.logged("cluster: a hub left") >= 2
    })
    .await;
    a.sigterm().await;
}

/// The seqs of the next `count` EVENTs `client` receives.
async fn receive_seqs(client: &mut Client, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        let event = client.recv_event().await;
        seqs.push(event["event"]["seq"].as_u64().expect("seq"));
    }
    seqs
}

fn acked_seq(puback: &Value) -> u64 {
    assert_eq!(puback["op"], "PUBACK", "{puback}");
    puback["seq"].as_u64().expect("seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_hub_reaches_live_subscribers_on_the_others() {
    let Some(server) = FerretDb::shared_or_skip("cross_hub_live") else {
        return;
    };
    let store = server.uri("cluster_live");
    let a = HubProcess::spawn(&store).await;
    let b = HubProcess::spawn(&store).await;
    let c = HubProcess::spawn(&store).await;
    let mut on_b = b.client().await;
    let mut on_c = c.client().await;
    on_b.subscribe("live.*", None, Value::Null).await;
    on_c.subscribe("live.*", None, Value::Null).await;
    let mut publisher = a.client().await;
    let mut acked = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..20 {
        // Each one timed from PUBLISH on A to its EVENT on B.
        let started = Instant::now();
        acked.push(acked_seq(
            &publisher
                .publish("live.x", json!({ "i": i }), Value::Null)
                .await,
        ));
        assert_eq!(receive_seqs(&mut on_b, 1).await, acked[i..]);
        latencies.push(started.elapsed());
    }
    latencies.sort_unstable();
    eprintln!(
        "publish on A -> EVENT on B (cluster_poll_ms 20): p50 {} ms, max {} ms",
        latencies[10].as_millis(),
        latencies[19].as_millis()
    );
    assert_eq!(receive_seqs(&mut on_c, 20).await, acked);
    // Nothing more: no duplicate.
    on_b.assert_alive_and_quiet().await;
    on_c.assert_alive_and_quiet().await;
    a.sigterm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_three_hubs_give_every_reader_one_seq_order() {
    let Some(server) = FerretDb::shared_or_skip("cross_hub_order") else {
        return;
    };
    let store = server.uri("cluster_order");
    let hubs = [
        HubProcess::spawn(&store).await,
        HubProcess::spawn(&store).await,
        HubProcess::spawn(&store).await,
    ];
    let mut readers = Vec::new();
    for hub in &hubs {
        let mut reader = hub.client().await;
        reader.subscribe("order.*", None, Value::Null).await;
        readers.push(reader);
    }
    // Two publishers per hub, 40 events each, all at once.
    const PER_PUBLISHER: usize = 40;
    let mut publishers = Vec::new();
    for (h, hub) in hubs.iter().enumerate() {
        for p in 0..2 {
            let mut client = hub.client().await;
            publishers.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..PER_PUBLISHER {
                    let topic = format!("order.h{h}");
                    let puback = client
                        .publish(&topic, json!({ "p": p, "i": i }), Value::Null)
                        .await;
                    seqs.push(acked_seq(&puback));
                }
                seqs
            }));
        }
    }
    let mut acked = Vec::new();
    for publisher in publishers {
        match publisher.await {
            Ok(seqs) => acked.extend(seqs),
            Err(e) => {
                // The hubs' own account of a refused publish.
                let problems: Vec<String> = hubs
                    .iter()
                    .flat_map(|hub| hub.log.lock().unwrap().clone())
                    .filter(|line| line.contains("ERROR") || line.contains("WARN"))
                    .collect();
                panic!("publisher: {e}; hub warnings and errors: {problems:#?}");
            }
        }
    }
    acked.sort_unstable();
    let total = acked.len();
    acked.dedup();
    assert_eq!(acked.len(), total, "every PUBACK has its own seq");
    assert_eq!(total, 3 * 2 * PER_PUBLISHER);
    for (h, reader) in readers.iter_mut().enumerate() {
        let seen = receive_seqs(reader, total).await;
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "reader on hub {h}: not strictly increasing: {seen:?}"
        );
        assert_eq!(seen, acked, "reader on hub {h} skipped or added events");
        reader.assert_alive_and_quiet().await;
    }
}

/// Sends `count` PUBLISHes on `topic` at once, then collects the PUBACKed
/// seqs until all are answered or the connection dies.
async fn burst(client: &mut Client, topic: &str, count: usize) -> Vec<u64> {
    send_burst(client, topic, count).await;
    collect_acks(client, count).await
}

async fn send_burst(client: &mut Client, topic: &str, count: usize) {
    for i in 0..count {
        client
            .send_json(
                json!({"op": "PUBLISH", "topic": topic, "payload": i, "rid": format!("b{i}")}),
            )
            .await;
    }
}

/// The PUBACKed seqs of up to `count` answers (fewer if the connection
/// dies).
async fn collect_acks(client: &mut Client, count: usize) -> Vec<u64> {
    let mut acked = Vec::new();
    while acked.len() < count {
        match client.recv().await {
            Ok(frame) if frame["op"] == "PUBACK" => acked.push(acked_seq(&frame)),
            Ok(frame) => panic!("unexpected frame {frame}"),
            Err(_) => break,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_batch_holds_no_reader_back_for_longer_than_its_lease() {
    let Some(server) = FerretDb::shared_or_skip("cross_hub_kill") else {
        return;
    };
    let store = server.uri("cluster_kill");
    let a = HubProcess::spawn(&store).await;
    let b = HubProcess::spawn(&store).await;
    let c = HubProcess::spawn(&store).await;
    let mut readers = Vec::new();
    for hub in [&a, &b] {
        let mut reader = hub.client().await;
        reader.subscribe("kill.*", None, Value::Null).await;
        readers.push(reader);
    }
    let (mut on_a, mut on_b, mut on_c) = (a.client().await, b.client().await, c.client().await);
    // C dies while the publishes it was sent are being committed.
    send_burst(&mut on_c, "kill.c", 2000).await;
    let doomed = tokio::spawn(async move {
        let acked = collect_acks(&mut on_c, 2000).await;
        (acked, on_c)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.kill9().await;
    let started = Instant::now();
    let (from_a, from_b) = tokio::join!(
        burst(&mut on_a, "kill.a", 100),
        burst(&mut on_b, "kill.b", 100)
    );
    let (from_c, _) = doomed.await.expect("C's publisher");
    assert_eq!(from_a.len(), 100);
    assert_eq!(from_b.len(), 100);
    let mut acked: Vec<u64> = from_a
        .into_iter()
        .chain(from_b)
        .chain(from_c.iter().copied())
        .collect();
    acked.sort_unstable();
    eprintln!(
        "C acknowledged {} of 2000 before kill -9; {} acknowledged in all",
        from_c.len(),
        acked.len()
    );
    // Every reader sees every acknowledged event, in one strictly
    // increasing order (C's unacknowledged events may appear too:
    // at-least-once), within C's lease of the kill.
    for (h, reader) in readers.iter_mut().enumerate() {
        let mut seen = Vec::new();
        let mut missing: std::collections::BTreeSet<u64> = acked.iter().copied().collect();
        while !missing.is_empty() {
            let event = reader.recv_event().await;
            let seq = event["event"]["seq"].as_u64().expect("seq");
            if let Some(&last) = seen.last() {
                assert!(seq > last, "reader {h}: {seq} after {last}");
            }
            missing.remove(&seq);
            seen.push(seq);
        }
        eprintln!(
            "reader {h}: all acknowledged events {} ms after the kill",
            started.elapsed().as_millis()
        );
        // C's open range lapses after its lease (600 ms): nothing waits on
        // a dead hub for long.
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// `kill -9` of the hub two native SDK clients are connected to, while one
/// of them publishes: both move to other hubs on their own, the live
/// subscription resumes there from the seq after its last delivery, and it
/// receives every acknowledged event once, in seq order. A publish the
/// dead hub did not answer is sent again with the same id, so it is stored
/// once (de-duplication is cluster-wide). Prints the time from the kill to the reconnection and to
/// the first event after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_clients_of_a_killed_hub_resume_on_the_others_and_lose_nothing_acknowledged() {
    use futures_util::StreamExt;
    use promhub::{PublishOptions, SubscribeOptions};

    let Some(server) = FerretDb::shared_or_skip("native_clients_of_a_killed_hub") else {
        return;
    };
    let store = server.uri("cluster_native_failover");
    let mut hubs = [
        Some(HubProcess::spawn(&store).await),
        Some(HubProcess::spawn(&store).await),
        Some(HubProcess::spawn(&store).await),
    ];
    let urls: Vec<String> = hubs.iter().flatten().map(|h| h.url.clone()).collect();
    let subscriber =
        promhub::Client::connect_lazy(urls.clone(), sdk_config(11)).expect("subscriber");
    let mut events = subscriber.events();
    let first_hub = next_connection(&mut events, "connected").await;
    let mut orders = guard(
        "subscribe",
        subscriber.subscribe::<u64>("orders.*", None, SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    // (seq, id, when received) of every delivery.
    let received = Arc::new(Mutex::new(Vec::<(u64, String, Instant)>::new()));
    let collector = tokio::spawn({
        let received = Arc::clone(&received);
        async move {
            while let Some(delivery) = orders.next().await {
                let entry = (delivery.seq(), delivery.id().to_owned(), Instant::now());
                received.lock().unwrap().push(entry);
            }
        }
    });

    // The publisher starts on the same hub, so the kill cuts its publishes
    // in flight too (the first hub is drawn from the seed).
    let (publisher, _) = sdk_client_on(&urls, &first_hub).await;
    // One event every 2 ms; each acknowledged one recorded with its seq.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let publishing = tokio::spawn({
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let id = format!("order-{i}");
                let options = PublishOptions::new().id(id.clone());
                match publisher.publish("orders.created", &i, options).await {
                    Ok(ack) => {
                        acked.lock().unwrap().push((id, ack.seq));
                        i += 1;
                    }
                    // Its hub went away: the same id again, on another hub.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            publisher.close().await;
        }
    });
    eventually_within(
        "100 deliveries before the kill",
        Duration::from_secs(60),
        async || received.lock().unwrap().len() >= 100,
    )
    .await;

    let doomed = hubs
        .iter()
        .position(|h| h.as_ref().is_some_and(|h| h.url == first_hub))
        .expect("the subscriber's hub");
    hubs[doomed].take().expect("running").kill9().await;
    let killed = Instant::now();
    let second_hub = next_connection(&mut events, "reconnected").await;
    let reconnected = killed.elapsed();
    assert_ne!(second_hub, first_hub);
    assert!(urls.contains(&second_hub), "{second_hub}");

    let acked_so_far = acked.lock().unwrap().len();
    let waiting = Instant::now();
    while acked.lock().unwrap().len() < acked_so_far + 200 {
        if waiting.elapsed() > Duration::from_secs(60) {
            let warnings: Vec<String> = hubs
                .iter()
                .flatten()
                .flat_map(|h| h.log.lock().unwrap().clone())
                .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                .collect();
            panic!(
                "{} of 200 publishes acknowledged 60 s after the kill; hub warnings: {warnings:#?}",
                acked.lock().unwrap().len() - acked_so_far
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let published_after = waiting.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Release);
    guard("the publisher stops", publishing)
        .await
        .expect("publisher");

    let acked = acked.lock().unwrap().clone();
    let wanted: std::collections::BTreeSet<u64> = acked.iter().map(|&(_, seq)| seq).collect();
    eventually_within(
        "every acknowledged event delivered",
        Duration::from_secs(60),
        async || {
            let got: std::collections::BTreeSet<u64> =
                received.lock().unwrap().iter().map(|e| e.0).collect();
            wanted.is_subset(&got)
        },
    )
    .await;
    let received = received.lock().unwrap().clone();
    // Once each, in seq order, across the failover; each acknowledged id
    // with its acknowledged seq (a resend got the original's).
    for pair in received.windows(2) {
        assert!(
            pair[1].0 > pair[0].0,
            "seq {} after {}",
            pair[1].0,
            pair[0].0
        );
    }
    let by_seq: std::collections::HashMap<u64, &str> =
        received.iter().map(|e| (e.0, e.1.as_str())).collect();
    for (id, seq) in &acked {
        assert_eq!(by_seq.get(seq).copied(), Some(id.as_str()), "seq {seq}");
    }
    let ids: std::collections::HashSet<&str> = received.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(ids.len(), received.len(), "an id delivered twice");
    let resumed = received
        .iter()
        .find(|e| e.2 > killed)
        .map(|e| e.2 - killed)
        .expect("a delivery after the kill");
    eprintln!(
        "kill -9 of the subscriber's hub: reconnected to another hub after {} ms, first event \
         after {} ms; 200 publishes acknowledged {} ms after the reconnection; {} acknowledged \
         events, {} delivered in order",
        reconnected.as_millis(),
        resumed.as_millis(),
        published_after.as_millis(),
        acked.len(),
        received.len()
    );
    subscriber.close().await;
    collector.abort();
}
