//! Gapless resume of live subscriptions against a real hub (semantics.md
//! §4): the hub restarts while events keep being published from another
//! connection (which reconnects too); the live subscriber receives every
//! event once, with no gap and no duplicate. When the hub's retention
//! removed the events it missed, the gap is reported.
//!
//! The hub honours `opts.from` on live (ephemeral) subscriptions: stored
//! events from `from` on, then live ones, and `SUBACK.from_seq` where
//! delivery is complete. The client side alone is covered by
//! sdk-core/tests/client_resume.rs against scripted frames.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use promhub::{Client, ClientConfig, Delivery, Gap, PublishOptions, SubscribeOptions};
use support::{HubProcess, TestHub, guard, next};

#[test]
#[ignore = "the hub child process of the tests in this file; they start it"]
fn hub_process_entry() {
    support::hub_process_main();
}

fn config(min: Duration, max: Duration) -> ClientConfig {
    ClientConfig::new()
        .reconnect_delay(min, max)
        // Publishes made while the hub is down wait for it.
        .request_timeout(Duration::from_secs(120))
}

/// Publishes `first..=last` (payload n, event id `{prefix}-n`, so a publish
/// re-sent after a reconnect is stored once); the seqs the hub gave them.
async fn publish_range(
    client: &Client,
    topic: &str,
    prefix: &str,
    first: u32,
    last: u32,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    for n in first..=last {
        let opts = PublishOptions::new().id(format!("{prefix}-{n}"));
        let ack = guard("publish", client.publish(topic, &n, opts))
            .await
            .unwrap_or_else(|e| panic!("publish {n}: {e}"));
        seqs.push(ack.seq);
    }
    seqs
}

/// What a live subscriber saw: (seq, payload, gap) per delivery.
type Seen = Vec<(u64, u32, Option<Gap>)>;

async fn receive_until(
    sub: &mut promhub::Subscription<u32>,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) {
    while !done(seen) {
        let delivery: Delivery<u32> = next("live delivery", sub).await;
        let n = *delivery.payload().expect("a number");
        seen.push((delivery.seq(), n, delivery.gap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscription_misses_nothing_and_repeats_nothing_across_a_hub_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let hub = HubProcess::start(any_port, data.path());
    let (addr, url) = (hub.addr, hub.url.clone());
    // The subscriber comes back later than the publisher, so events are
    // published after the restart before it resubscribes.
    let subscriber = guard(
        "subscriber",
        Client::connect(
            url.as_str(),
            config(Duration::from_millis(600), Duration::from_millis(900)),
        ),
    )
    .await
    .expect("subscriber connects");
    let publisher = guard(
        "publisher",
        Client::connect(
            url.as_str(),
            config(Duration::from_millis(20), Duration::from_millis(60)),
        ),
    )
    .await
    .expect("publisher connects");
    let mut sub = guard(
        "subscribe",
        subscriber.subscribe::<u32>("resume.*", None, SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");

    let mut acked = publish_range(&publisher, "resume.a", "r", 1, 50).await;
    let mut seen = Seen::new();
    receive_until(&mut sub, &mut seen, |seen| seen.len() == 20).await;

    // Publishing goes on while the hub is killed and restarted.
    let publishing = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publish_range(&publisher, "resume.a", "r", 51, 200).await })
    };
    hub.kill();
    let hub = HubProcess::start(addr, data.path());
    acked.extend(guard("publishing", publishing).await.expect("publisher"));
    let last = *acked.last().expect("published");
    receive_until(&mut sub, &mut seen, |seen| {
        seen.last().is_some_and(|&(seq, _, _)| seq >= last)
    })
    .await;

    let gaps: Vec<Gap> = seen.iter().filter_map(|&(_, _, gap)| gap).collect();
    assert_eq!(gaps, vec![], "no gap");
    let seqs: Vec<u64> = seen.iter().map(|&(seq, _, _)| seq).collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "in order, no duplicate: {seqs:?}"
    );
    let received: BTreeSet<u64> = seqs.iter().copied().collect();
    let published: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(received, published, "every event, once");
    let payloads: Vec<u32> = seen.iter().map(|&(_, n, _)| n).collect();
    assert_eq!(payloads, (1..=200).collect::<Vec<_>>());

    subscriber.close().await;
    publisher.close().await;
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_removed_by_retention_while_away_are_reported_as_a_gap() {
    let data = tempfile::tempdir().expect("tempdir");
    let retention = |config: &mut promhub_hub::HubConfig| {
        config.retention.max_events_per_topic = Some(3);
        config.retention.interval_ms = 20;
    };
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let hub = TestHub::start_on(any_port, data.path(), retention).await;
    let addr = hub.addr;
    let url = hub.url.clone();
    // The subscriber reconnects only when told to (its delay is an hour).
    let subscriber = guard(
        "subscriber",
        Client::connect(
            url.as_str(),
            config(Duration::from_secs(3600), Duration::from_secs(3600)),
        ),
    )
    .await
    .expect("subscriber connects");
    let publisher_config = config(Duration::from_millis(20), Duration::from_millis(60));
    let publisher = guard("publisher", Client::connect(url.as_str(), publisher_config))
        .await
        .expect("publisher connects");
    let mut sub = guard(
        "subscribe",
        subscriber.subscribe::<u32>("kept.*", None, SubscribeOptions::new()),
    )
    .await
    .expect("subscribe");
    let before = publish_range(&publisher, "kept.a", "k", 1, 2).await;
    let mut seen = Seen::new();
    receive_until(&mut sub, &mut seen, |seen| seen.len() == 2).await;

    // The hub restarts; while the subscriber stays away, ten events are
    // published and retention keeps only the last three.
    hub.stop().await;
    let hub = TestHub::start_on(addr, data.path(), retention).await;
    let away = publish_range(&publisher, "kept.a", "k", 3, 12).await;
    let kept = &away[away.len() - 3..];
    // Until retention has run: a probe asking for the first missed seq is
    // answered later than that.
    let first_missed = away[0];
    loop {
        let probe = guard(
            "probe",
            publisher.subscribe::<u32>(
                "kept.*",
                None,
                SubscribeOptions::new().from(promhub::StartFrom::Seq(first_missed)),
            ),
        )
        .await
        .expect("probe");
        let removed = probe.from_seq() > first_missed;
        guard("unsubscribe", probe.unsubscribe())
            .await
            .expect("unsubscribe");
        if removed {
            break;
        }
        tokio::task::yield_now().await;
    }

    subscriber.reconnect().expect("reconnect");
    receive_until(&mut sub, &mut seen, |seen| {
        seen.last().is_some_and(|&(seq, _, _)| seq >= kept[2])
    })
    .await;
    let after: Vec<(u64, u32, Option<Gap>)> = seen[2..].to_vec();
    let (first_seq, _, gap) = after[0];
    let gap = gap.expect("the first event after the resume carries the gap");
    assert_eq!(
        gap.from,
        before[1] + 1,
        "from the seq after the last delivered"
    );
    assert!(gap.to < first_seq, "{gap:?} before {first_seq}");
    assert!(gap.to >= first_missed, "{gap:?} covers the removed events");
    assert!(after[1..].iter().all(|&(_, _, gap)| gap.is_none()));
    let delivered: BTreeSet<u64> = after.iter().map(|&(seq, _, _)| seq).collect();
    assert!(
        kept.iter().all(|seq| delivered.contains(seq)),
        "what retention kept is delivered: {after:?}"
    );
    subscriber.close().await;
    publisher.close().await;
    hub.stop().await;
}
