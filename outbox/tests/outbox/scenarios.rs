//! Outbox behaviour, run on every store (see `main.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use promhub_outbox::{Drainer, NewRecord, OutboxStore, Replay, Status, now_ms};

use super::common::{MemoryHub, StallingSink, fast_options, guard};

const LEASE: Duration = Duration::from_secs(10);

fn record(n: usize) -> NewRecord {
    NewRecord::new("orders.created", &serde_json::json!({ "n": n })).expect("record")
}

/// Claims take pending-and-due and lease-expired records, count an attempt
/// each time, and fence every later write by the newest token.
pub async fn claim_takes_due_and_expired_records_and_fences_by_token<S: OutboxStore>(store: S) {
    let t = 1_000_000;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(store.enqueue(record(n), t).await.expect("enqueue"));
    }
    let early = store.claim(10, LEASE, t - 1).await.expect("claim");
    assert!(early.records.is_empty(), "nothing is due before its time");

    let first = store.claim(2, LEASE, t).await.expect("claim");
    let first_ids: Vec<_> = first.records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(first_ids, ids[..2], "oldest first, at most the limit");
    for r in &first.records {
        assert_eq!(r.status, Status::Claimed);
        assert_eq!(r.attempts, 1);
        assert_eq!(r.claim_token.as_deref(), Some(first.token.as_str()));
        assert_eq!(r.lease_until, Some(t + 10_000));
    }
    let second = store.claim(10, LEASE, t).await.expect("claim");
    assert_eq!(
        second.records.len(),
        1,
        "the rest; claimed ones are not taken twice"
    );
    assert_ne!(second.token, first.token);
    assert!(
        store
            .claim(10, LEASE, t + 5_000)
            .await
            .expect("claim")
            .records
            .is_empty()
    );

    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.backlog, stats.oldest_unsent_at), (3, Some(t)));

    // Every lease expired: another drainer takes all three, a second attempt.
    let later = t + 10_000;
    let third = store.claim(10, LEASE, later).await.expect("claim");
    assert_eq!(third.records.len(), 3);
    assert!(third.records.iter().all(|r| r.attempts == 2));

    // The first owner comes back: all its writes are rejected.
    assert_eq!(store.mark_sent(&first.token, &ids, later).await.unwrap(), 0);
    assert_eq!(store.renew(&first.token, later + 99_999).await.unwrap(), 0);
    assert_eq!(
        store
            .retry_later(&first.token, &ids[0], later, "x")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.mark_dead(&first.token, &ids[0], "x").await.unwrap(),
        0
    );
    assert_eq!(store.release(&first.token, &ids, later).await.unwrap(), 0);
    let kept = store.get(&ids[0]).await.unwrap().expect("record");
    assert_eq!(kept.claim_token.as_deref(), Some(third.token.as_str()));

    // The owner's writes go through, in bulk.
    assert_eq!(store.renew(&third.token, later + 20_000).await.unwrap(), 3);
    assert_eq!(
        store
            .mark_sent(&third.token, &ids, later + 1)
            .await
            .unwrap(),
        3
    );
    let sent = store.get(&ids[2]).await.unwrap().expect("record");
    assert_eq!(
        (sent.status, sent.sent_at, sent.claim_token),
        (Status::Sent, Some(later + 1), None)
    );
    assert_eq!(store.stats().await.unwrap().backlog, 0);
}

/// A drainer whose lease was taken over while it published cannot mark
/// the records sent; the rejections are counted.
pub async fn a_stale_drainers_mark_sent_is_rejected_and_counted<S: OutboxStore>(store: S) {
    let store = Arc::new(store);
    for n in 0..3 {
        store.enqueue(record(n), now_ms()).await.expect("enqueue");
    }
    let sink = Arc::new(StallingSink::new());
    let drainer = Arc::new(Drainer::new(
        Arc::clone(&store),
        Arc::clone(&sink),
        fast_options(10),
    ));
    let running = tokio::spawn({
        let drainer = Arc::clone(&drainer);
        async move { drainer.drain_once().await }
    });
    guard("the drainer publishes", sink.started.notified()).await;
    // Another drainer, whose clock says the lease has expired, takes over.
    let thief = store
        .claim(10, LEASE, now_ms() + 120_000)
        .await
        .expect("claim");
    assert_eq!(thief.records.len(), 3);
    sink.release.add_permits(3);
    let report = guard("the stale drainer's batch", running)
        .await
        .expect("task")
        .expect("drain");
    assert_eq!(report.claimed, 3);
    assert_eq!(report.sent, 0, "its mark_sent must not win");
    assert_eq!(report.fence_rejections, 3);
    let metrics = drainer
        .metrics()
        .snapshot(&*store, now_ms())
        .await
        .expect("metrics");
    assert_eq!(metrics.fence_rejections, 3);
    assert_eq!(metrics.sent, 0);
    for r in &thief.records {
        let now = store.get(&r.id).await.unwrap().expect("record");
        assert_eq!(now.status, Status::Claimed);
        assert_eq!(now.claim_token.as_deref(), Some(thief.token.as_str()));
    }
}

/// A failing publish is retried with growing delays, ends dead after the
/// configured attempts (kept and listed), and replays with one call.
pub async fn failures_back_off_then_dead_then_replay<S: OutboxStore>(store: S) {
    let store = Arc::new(store);
    let hub = Arc::new(MemoryHub::default());
    hub.failing.store(true, Ordering::Relaxed);
    let options = fast_options(10);
    let drainer = Drainer::new(Arc::clone(&store), Arc::clone(&hub), options.clone());
    let id = store.enqueue(record(1), now_ms()).await.expect("enqueue");
    let mut dead = None;
    for _ in 0..5_000 {
        drainer.drain_once().await.expect("drain");
        let current = store.get(&id).await.unwrap().expect("record");
        if current.status == Status::Dead {
            dead = Some(current);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let dead = dead.expect("the record ends dead");
    assert_eq!(dead.attempts, options.max_attempts);
    assert_eq!(dead.last_err.as_deref(), Some("broker unavailable"));
    let attempts = hub.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), options.max_attempts as usize);
    // Each wait at least the lower bound of its backoff, which doubles.
    for (n, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let floor = options.backoff.ceiling(n as u32 + 1) / 2;
        assert!(
            gap >= floor,
            "retry {n}: waited {gap:?}, less than {floor:?}"
        );
    }
    let metrics = drainer.metrics().snapshot(&*store, now_ms()).await.unwrap();
    assert_eq!((metrics.retries, metrics.dead, metrics.dead_now), (3, 1, 1));
    assert_eq!(metrics.backlog, 0, "dead records are not backlog");

    let listed = store.list_dead(10).await.expect("list");
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(
        drainer.drain_once().await.unwrap().claimed == 0,
        "dead is not claimed"
    );

    hub.failing.store(false, Ordering::Relaxed);
    assert_eq!(
        store
            .replay_dead(Replay::Ids(vec![id.clone()]), now_ms())
            .await
            .unwrap(),
        1
    );
    let replayed = store.get(&id).await.unwrap().expect("record");
    assert_eq!(
        (replayed.status, replayed.attempts, replayed.last_err),
        (Status::Pending, 0, None)
    );
    let report = drainer.drain_once().await.expect("drain");
    assert_eq!(report.sent, 1);
    assert_eq!(hub.log_ids(), [id]);
    assert_eq!(store.replay_dead(Replay::All, now_ms()).await.unwrap(), 0);
}

/// A permanent refusal (a forbidden topic) makes the record dead at its
/// first attempt, so the records after it in its key go on at once instead
/// of waiting out a backoff sequence; replayed once allowed, it is sent.
pub async fn a_permanently_refused_record_is_dead_at_once<S: OutboxStore>(store: S) {
    let store = Arc::new(store);
    let hub = Arc::new(MemoryHub::default());
    *hub.rejected_topic.lock().unwrap() = Some("secret.audit".to_owned());
    // Backoff long enough that a retry would stall the test's key.
    let options = promhub_outbox::DrainerOptions {
        backoff: promhub_outbox::Backoff {
            base: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
        },
        ..fast_options(10)
    };
    let drainer = Drainer::new(Arc::clone(&store), Arc::clone(&hub), options);
    let keyed = |topic: &str, n: usize| {
        NewRecord::new(topic, &serde_json::json!({ "n": n }))
            .expect("record")
            .key("customer-1")
    };
    let refused = store
        .enqueue(keyed("secret.audit", 1), now_ms())
        .await
        .expect("enqueue");
    let next = store
        .enqueue(keyed("orders.created", 2), now_ms())
        .await
        .expect("enqueue");
    for _ in 0..100 {
        drainer.drain_once().await.expect("drain");
        if hub.log_ids() == std::slice::from_ref(&next) {
            break;
        }
    }
    assert_eq!(
        hub.log_ids(),
        std::slice::from_ref(&next),
        "the key went on"
    );
    let dead = store.get(&refused).await.unwrap().expect("record");
    assert_eq!((dead.status, dead.attempts), (Status::Dead, 1));
    assert_eq!(
        dead.last_err.as_deref(),
        Some("forbidden by the hub: no publish:secret.audit")
    );
    let metrics = drainer.metrics().snapshot(&*store, now_ms()).await.unwrap();
    assert_eq!((metrics.retries, metrics.dead), (0, 1));

    *hub.rejected_topic.lock().unwrap() = None;
    assert_eq!(store.replay_dead(Replay::All, now_ms()).await.unwrap(), 1);
    drainer.drain_once().await.expect("drain");
    assert_eq!(hub.log_ids(), [next, refused]);
}

/// A record whose claims keep expiring (it crashes every drainer) counts
/// its attempts and ends dead without another publish.
pub async fn a_record_whose_leases_keep_expiring_ends_dead<S: OutboxStore>(store: S) {
    let store = Arc::new(store);
    let hub = Arc::new(MemoryHub::default());
    let options = fast_options(10);
    let start = now_ms() - 1_000_000;
    let id = store.enqueue(record(1), start).await.expect("enqueue");
    // Drainers that claimed it and died, long ago.
    for n in 0..u64::from(options.max_attempts) {
        let claim = store.claim(10, LEASE, start + n * 10_000).await.unwrap();
        assert_eq!(claim.records.len(), 1);
    }
    let drainer = Drainer::new(Arc::clone(&store), Arc::clone(&hub), options.clone());
    let report = drainer.drain_once().await.expect("drain");
    assert_eq!((report.claimed, report.dead, report.sent), (1, 1, 0));
    assert!(hub.attempts.lock().unwrap().is_empty());
    let dead = store.get(&id).await.unwrap().expect("record");
    assert_eq!(dead.status, Status::Dead);
    assert_eq!(dead.attempts, options.max_attempts + 1);
    assert!(
        dead.last_err
            .unwrap_or_default()
            .contains("claimed 5 times")
    );
}

/// Sent records are deleted once older than the retention.
pub async fn sent_records_are_purged_after_retention<S: OutboxStore>(store: S) {
    let t = 2_000_000;
    let a = store.enqueue(record(1), t).await.unwrap();
    let b = store.enqueue(record(2), t).await.unwrap();
    let claim = store.claim(10, LEASE, t).await.unwrap();
    store
        .mark_sent(&claim.token, std::slice::from_ref(&a), t + 100)
        .await
        .unwrap();
    assert_eq!(store.purge_sent(t + 100).await.unwrap(), 0, "not older yet");
    assert_eq!(store.purge_sent(t + 101).await.unwrap(), 1);
    assert!(store.get(&a).await.unwrap().is_none());
    assert_eq!(
        store.get(&b).await.unwrap().expect("unsent stays").status,
        Status::Claimed
    );
}

/// Records of one key keep creation order, every record once, with three
/// drainers (each with its own store handle) and a flaky hub.
pub async fn three_drainers_keep_per_key_order<S: OutboxStore>(
    stores: Vec<Arc<S>>,
    ids_by_key: HashMap<String, Vec<String>>,
) {
    let total: usize = ids_by_key.values().map(Vec::len).sum();
    let hub = Arc::new(MemoryHub::default());
    hub.fail_one_in.store(50, Ordering::Relaxed);
    let options = promhub_outbox::DrainerOptions {
        max_attempts: 1_000,
        ..fast_options(100)
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(promhub_outbox::OutboxMetrics::default());
    let first_store = Arc::clone(&stores[0]);
    let mut drainers = Vec::new();
    for store in stores {
        let drainer = Drainer::new(store, Arc::clone(&hub), options.clone())
            .with_metrics(Arc::clone(&metrics));
        let mut stopped = stopped.clone();
        drainers.push(tokio::spawn(async move {
            drainer
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    // Progress, not time, decides: fail only when nothing moves for a
    // whole hang guard.
    let mut last = 0;
    loop {
        let published = guard("the drainers make progress", async {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let published = hub.log.lock().unwrap().len();
                if published > last || published == total {
                    return published;
                }
            }
        })
        .await;
        if published == total {
            break;
        }
        last = published;
    }
    stop.send(true).expect("stop");
    for drainer in drainers {
        guard("drainer stops", drainer).await.expect("drainer task");
    }
    let metrics = metrics
        .snapshot(&*first_store, now_ms())
        .await
        .expect("metrics");
    assert!(metrics.retries > 0, "the flaky hub made the drainers retry");
    assert_eq!(metrics.backlog, 0);
    let log = hub.log.lock().unwrap().clone();
    assert_eq!(log.len(), total, "each record once");
    let mut published: HashMap<String, Vec<String>> = HashMap::new();
    for p in log {
        published
            .entry(p.key.expect("keyed"))
            .or_default()
            .push(p.id);
    }
    assert_eq!(published.len(), ids_by_key.len());
    for (key, ids) in &ids_by_key {
        if published[key] != *ids {
            let order: Vec<usize> = published[key]
                .iter()
                .filter_map(|id| ids.iter().position(|x| x == id))
                .collect();
            panic!("key {key}: published out of creation order: {order:?}");
        }
    }
}

/// Only the oldest unsent record of a key is claimable; keyless records
/// are all claimable.
pub async fn a_key_is_claimed_one_record_at_a_time<S: OutboxStore>(store: S) {
    let t = 3_000_000;
    let keyed = |n: usize, key: &str| record(n).key(key);
    let a1 = store.enqueue(keyed(1, "a"), t).await.unwrap();
    let b1 = store.enqueue(keyed(2, "b"), t).await.unwrap();
    let a2 = store.enqueue(keyed(3, "a"), t).await.unwrap();
    let free = store.enqueue(record(4), t).await.unwrap();
    let first = store.claim(10, LEASE, t).await.expect("claim");
    let ids: Vec<_> = first.records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, [a1.clone(), b1.clone(), free]);
    // a2 waits while a1 is claimed, and while a1 backs off after a failure.
    assert!(store.claim(10, LEASE, t).await.unwrap().records.is_empty());
    store
        .retry_later(&first.token, &a1, t + 500, "boom")
        .await
        .unwrap();
    assert!(
        store
            .claim(10, LEASE, t + 1)
            .await
            .unwrap()
            .records
            .is_empty()
    );
    let retried = store.claim(10, LEASE, t + 500).await.unwrap();
    assert_eq!(
        retried
            .records
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        std::slice::from_ref(&a1)
    );
    store
        .mark_sent(&retried.token, std::slice::from_ref(&a1), t + 501)
        .await
        .unwrap();
    let next = store.claim(10, LEASE, t + 501).await.unwrap();
    assert_eq!(
        next.records
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        [a2]
    );
}

/// While a publish is slower than the lease, the drainer renews the lease,
/// so nobody else can claim the records; the batch then completes.
pub async fn a_slow_publish_keeps_its_lease_renewed<S: OutboxStore>(store: S) {
    let store = Arc::new(store);
    let id = store.enqueue(record(1), now_ms()).await.expect("enqueue");
    let sink = Arc::new(StallingSink::new());
    let options = promhub_outbox::DrainerOptions {
        lease: Duration::from_millis(600),
        ..fast_options(10)
    };
    let drainer = Arc::new(Drainer::new(Arc::clone(&store), Arc::clone(&sink), options));
    let running = tokio::spawn({
        let drainer = Arc::clone(&drainer);
        async move { drainer.drain_once().await }
    });
    guard("the drainer publishes", sink.started.notified()).await;
    let first_lease = store
        .get(&id)
        .await
        .unwrap()
        .and_then(|r| r.lease_until)
        .expect("claimed with a lease");
    guard("the lease is renewed", async {
        loop {
            let lease = store.get(&id).await.unwrap().and_then(|r| r.lease_until);
            if lease.is_some_and(|until| until > first_lease) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // When the first lease would have run out, the record is still held.
    let other = store.claim(10, LEASE, first_lease).await.expect("claim");
    assert!(
        other.records.is_empty(),
        "a renewed lease is not taken over"
    );
    sink.release.add_permits(1);
    let report = guard("the batch", running)
        .await
        .expect("task")
        .expect("drain");
    assert_eq!((report.sent, report.fence_rejections), (1, 0));
    assert_eq!(
        store.get(&id).await.unwrap().expect("record").status,
        Status::Sent
    );
}

/// Released records are pending again, due, without the attempt counted;
/// only their owner can release them.
pub async fn released_records_are_due_again_without_the_attempt<S: OutboxStore>(store: S) {
    let t = 4_000_000;
    let id = store.enqueue(record(1), t).await.unwrap();
    let claim = store.claim(10, LEASE, t).await.unwrap();
    let ids = [id.clone()];
    assert_eq!(store.release("someone-else", &ids, t + 1).await.unwrap(), 0);
    assert_eq!(store.release(&claim.token, &ids, t + 1).await.unwrap(), 1);
    let released = store.get(&id).await.unwrap().expect("record");
    assert_eq!((released.status, released.attempts), (Status::Pending, 0));
    assert_eq!(released.claim_token, None);
    let again = store.claim(10, LEASE, t + 1).await.unwrap();
    assert_eq!(again.records.len(), 1);
    assert_eq!(again.records[0].attempts, 1);
}
