//! Slow consumers: a durable group that does not keep up lags and loses
//! nothing, without slowing another group; an ephemeral subscriber that
//! does not read is closed with 4009 and the hub's memory stays bounded.

mod common;

use std::collections::BTreeSet;

use common::TestHub;
use common::process::HubProcess;
use promhub_hub::limits::COUNTERS;
use serde_json::json;

#[tokio::test]
async fn a_slow_durable_group_lags_and_loses_nothing_while_a_fast_one_keeps_up() {
    let mut hub = TestHub::start_with(|config| {
        // A few events' worth of unacknowledged bytes per member.
        config.groups.max_inflight_bytes = 4 * 1024;
    })
    .await;
    let mut slow = hub.client().await;
    slow.subscribe("work.*", Some("slow"), json!({"max_inflight": 1000}))
        .await;
    let mut fast = hub.client().await;
    fast.subscribe("work.*", Some("fast"), json!({"max_inflight": 1000}))
        .await;
    let lagging_before = COUNTERS.snapshot().group_lagging;

    let total = 300;
    let payload = "p".repeat(200);
    let mut publisher = hub.client().await;
    let mut published = BTreeSet::new();
    for n in 0..total {
        let ack = publisher
            .publish("work.item", json!({"n": n, "pad": payload}), json!(null))
            .await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        published.insert(ack["seq"].as_u64().unwrap());
        // The fast group gets and acknowledges every event while the slow
        // one reads nothing at all.
        let event = fast.recv_event().await;
        assert_eq!(event["event"]["payload"]["n"], n);
        fast.ack(&event).await;
    }
    fast.assert_alive_and_quiet().await;
    assert!(
        COUNTERS.snapshot().group_lagging > lagging_before,
        "the slow member was held back by its byte bound"
    );

    // Now the slow group catches up: every event, in order, once.
    let mut seen = Vec::new();
    while seen.len() < total {
        let event = slow.recv_event().await;
        assert_eq!(event["group"], "slow");
        seen.push(event["event"]["seq"].as_u64().unwrap());
        slow.ack(&event).await;
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), published);
    slow.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn groups_of_one_slow_connection_share_its_byte_bound_and_all_catch_up() {
    let mut hub = TestHub::start_with(|config| {
        config.groups.max_inflight_bytes = 4 * 1024;
    })
    .await;
    let mut slow = hub.client().await;
    for group in ["a", "b"] {
        slow.subscribe("both.*", Some(group), json!({"max_inflight": 1000}))
            .await;
    }
    let lagging_before = COUNTERS.snapshot().group_lagging;
    let mut publisher = hub.client().await;
    let mut published = BTreeSet::new();
    let payload = "p".repeat(200);
    for n in 0..200 {
        let ack = publisher
            .publish("both.item", json!({"n": n, "pad": payload}), json!(null))
            .await;
        published.insert(ack["seq"].as_u64().unwrap());
    }
    assert!(COUNTERS.snapshot().group_lagging > lagging_before);
    let mut seen: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    while seen[0].len() + seen[1].len() < 2 * published.len() {
        let event = slow.recv_event().await;
        let index = usize::from(event["group"] == "b");
        seen[index].push(event["event"]["seq"].as_u64().unwrap());
        slow.ack(&event).await;
    }
    for got in seen {
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), published);
    }
    slow.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    promhub_bench::proc_stats::memory_kib(pid)
        .expect("hub memory")
        .0
}

/// Publishes `count` events of `payload`, each read by `fast`.
async fn publish_round(
    publisher: &mut common::Client,
    fast: &mut common::Client,
    payload: &str,
    count: usize,
) {
    for _ in 0..count {
        let ack = publisher
            .publish("flood.x", json!(payload), json!(null))
            .await;
        assert_eq!(ack["op"], "PUBACK");
        fast.recv_event().await;
    }
}

#[tokio::test]
async fn an_ephemeral_subscriber_that_does_not_read_is_closed_and_hub_memory_stays_bounded() {
    let data = common::data_dir();
    let config = data.path().join("hub.toml");
    // 1 MiB of live deliveries per connection at most.
    std::fs::write(
        &config,
        "ephemeral_buffer_frames = 4096\nephemeral_buffer_bytes = 1048576\n",
    )
    .unwrap();
    let hub = HubProcess::spawn(
        &data.path().join("store"),
        &[],
        &[
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .await;
    let mut fast = hub.client().await;
    fast.subscribe("flood.x", None, json!(null)).await;
    let mut publisher = hub.client().await;
    let payload = "x".repeat(64 * 1024);
    let start = rss_kib(hub.pid());
    // 32 MiB with only a fast reader: what the hub keeps for this traffic
    // anyway (SQLite's page cache fills with what is written, up to 64 MiB
    // by default, and the allocator keeps freed memory).
    let round = 512;
    publish_round(&mut publisher, &mut fast, &payload, round).await;
    let baseline = rss_kib(hub.pid());

    // The same again with a subscriber that reads nothing: 32 MiB past
    // it, far beyond its 1 MiB allowance plus what the sockets hold.
    let mut slow = hub.client().await;
    slow.subscribe("flood.x", None, json!(null)).await;
    publish_round(&mut publisher, &mut fast, &payload, round).await;
    let after = rss_kib(hub.pid());
    let closed = slow.expect_close(round).await;
    assert_eq!(closed.code, 4009, "{closed:?}");
    fast.assert_alive_and_quiet().await;
    let without_slow = baseline.saturating_sub(start);
    let with_slow = after.saturating_sub(baseline);
    println!(
        "hub RSS {start} KiB at start; +{without_slow} KiB for 32 MiB with a fast reader only; \
         +{with_slow} KiB for 32 MiB more past a subscriber that reads nothing (closed 4009)"
    );
    // Structural bound: had the hub queued everything for the slow
    // subscriber, the second round would have grown by 32 MiB more than
    // the first; its allowance is 1 MiB.
    assert!(
        with_slow < without_slow + 16 * 1024,
        "hub RSS grew by {with_slow} KiB with a slow subscriber, {without_slow} KiB without"
    );
}
