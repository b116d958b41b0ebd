//! Retention: what is removed, and in bounded calls.

use super::*;

pub(crate) async fn retention(factory: &dyn StoreFactory) -> Result<()> {
    const T0: u64 = 1_700_000_000_000;
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let at = |topic_name: &str, key: &str, i: u64| {
        let mut e = event(topic_name, Some(key), &format!("{topic_name}-{i}"));
        e.ts = T0 + i * 1000;
        e
    };
    // Interleaved: seqs of one topic are not consecutive.
    let (mut app, mut web, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..10 {
        let mut batch = vec![at(
            "logs.app",
            if i == 0 {
                "old"
            } else {
                ["k0", "k1", "k2"][i as usize % 3]
            },
            i,
        )];
        if i < 5 {
            batch.push(at("logs.web", "w", i));
        }
        if i < 3 {
            batch.push(at("keep.me", "m", 0));
        }
        let seqs: Vec<u64> = commit_events(store.as_ref(), batch)
            .await?
            .iter()
            .map(|a| stored(a).map(|e| e.seq))
            .collect::<Result<_>>()?;
        app.push(seqs[0]);
        if i < 5 {
            web.push(seqs[1]);
        }
        if i < 3 {
            kept.push(seqs[seqs.len() - 1]);
        }
    }
    let last = store.last_seq().await?;
    let policy = RetentionPolicy {
        default: RetentionLimits::default(),
        rules: vec![
            (
                pattern("logs.app"),
                RetentionLimits {
                    max_events: Some(4),
                    max_age_ms: None,
                },
            ),
            (
                pattern("logs.*"),
                RetentionLimits {
                    max_events: None,
                    max_age_ms: Some(2500),
                },
            ),
        ],
    };
    let now = T0 + 4500; // cutoff T0 + 2000: web events 0 and 1 are too old
    let pass = |removed, next: Option<&str>| RetentionPass {
        removed,
        next: next.map(str::to_owned),
    };
    let keep_all = RetentionPolicy::default();
    let got = store.apply_retention(&keep_all, now, None, 100).await?;
    ensure!(got == pass(0, None), "default keeps all: {got:?}");
    // 6 app + 2 web events go. `limit` bounds one call, which says where
    // the next one starts (topics in name order: keep.me, logs.app,
    // logs.web).
    let got = store.apply_retention(&policy, now, None, 5).await?;
    ensure!(
        got == pass(5, Some("logs.app")),
        "bounded by limit: {got:?}"
    );
    let got = store
        .apply_retention(&policy, now, Some("logs.app"), 100)
        .await?;
    ensure!(got == pass(3, None), "the rest: {got:?}");
    let got = store.apply_retention(&policy, now, None, 100).await?;
    ensure!(got == pass(0, None), "nothing left to remove: {got:?}");
    // What a reader resuming at a seq missed: the last seq retention took
    // from a matching topic, if at or after that seq.
    for (text, from, expected) in [
        ("logs.app", 1, Some(app[5])),
        ("logs.app", app[5], Some(app[5])),
        ("logs.app", app[5] + 1, None),
        ("logs.*", web[1], Some(app[5])),
        ("*.web", 1, Some(web[1])),
        ("*.web", web[1] + 1, None),
        ("keep.me", 1, None),
        ("**", 1, Some(app[5])),
        ("nothing.*", 1, None),
    ] {
        let got = store.removed_since(&pattern(text), from).await?;
        ensure!(got == expected, "removed_since({text}, {from}) = {got:?}");
    }
    // Lag subtracts done marks only for events still stored.
    ensure!(
        store
            .count_present(&[app[0], app[5], app[6], web[4], last + 5])
            .await?
            == 2
    );

    let seqs_of = |events: Vec<Event>| events.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    let (read, _) = store
        .read_after(0, Some(&pattern("logs.app")), 100, 1000)
        .await?;
    ensure!(seqs_of(read) == app[6..], "the newest 4 app events stay");
    let (read, _) = store
        .read_after(0, Some(&pattern("logs.web")), 100, 1000)
        .await?;
    ensure!(
        seqs_of(read) == web[2..],
        "web events younger than the cutoff stay"
    );
    let (read, _) = store
        .read_after(0, Some(&pattern("keep.*")), 100, 1000)
        .await?;
    ensure!(
        seqs_of(read) == kept,
        "a topic without limits keeps everything"
    );
    ensure!(
        store.get(app[0]).await?.is_none(),
        "a removed event is gone"
    );
    ensure!(
        store.first_seq().await? == Some(kept[0]),
        "first_seq is the first retained"
    );
    ensure!(store.last_seq().await? == last, "last_seq stays");
    ensure!(
        store.count_after(0).await? == 10,
        "count_after counts what is left"
    );
    // Lag counts from indexes over what is left, also from a removed cursor.
    ensure!(store.count_matching_after(&pattern("logs.*"), 0).await? == 7);
    ensure!(
        store
            .count_matching_after(&pattern("logs.app"), app[2])
            .await?
            == 4
    );
    ensure!(
        store
            .count_matching_after(&pattern("logs.app"), app[7])
            .await?
            == 2
    );
    ensure!(
        store
            .count_matching_after(&pattern("logs.web"), web[1])
            .await?
            == 3
    );
    let first = store.first_matching_after(&pattern("logs.*"), 0).await?;
    ensure!(
        first.map(|e| e.seq) == Some(app[6].min(web[2])),
        "first matching"
    );
    // Latest-by-key forgets a key whose latest event is gone.
    let latest = store.latest_by_key(&pattern("logs.app")).await?;
    let keys: Vec<_> = latest.iter().filter_map(|e| e.key.clone()).collect();
    ensure!(
        keys.len() == 3 && !keys.contains(&"old".to_owned()),
        "{keys:?}"
    );
    ensure!(
        store
            .latest_for_key(&topic("logs.app"), "old")
            .await?
            .is_none()
    );
    // Seqs are never reused, and a new event of a trimmed topic counts.
    let next = commit_events(store.as_ref(), vec![at("logs.app", "k0", 20)]).await?;
    ensure!(stored(&next[0])?.seq > last, "no seq reuse");
    ensure!(store.count_matching_after(&pattern("logs.app"), 0).await? == 5);
    store.close().await?;
    Ok(())
}

pub(crate) async fn retention_visits_topics_in_bounded_calls(
    factory: &dyn StoreFactory,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let topics = RETENTION_TOPICS_PER_CALL + 44;
    let events = (0..topics)
        .flat_map(|t| [0, 1].map(|i| event(&format!("many.t{t:04}"), None, &format!("{i}"))))
        .collect();
    commit_events(store.as_ref(), events).await?;
    let policy = RetentionPolicy {
        default: RetentionLimits {
            max_age_ms: None,
            max_events: Some(1),
        },
        rules: vec![],
    };
    // The first call stops at the topic budget and says where to go on.
    let first = store.apply_retention(&policy, 0, None, 10_000).await?;
    ensure!(
        first.removed == RETENTION_TOPICS_PER_CALL as u64
            && first.next.as_deref()
                == Some(format!("many.t{RETENTION_TOPICS_PER_CALL:04}").as_str()),
        "{first:?}"
    );
    let second = store
        .apply_retention(&policy, 0, first.next.as_deref(), 10_000)
        .await?;
    ensure!(second.removed == 44 && second.next.is_none(), "{second:?}");
    ensure!(
        store.count_after(0).await? == topics as u64,
        "one event per topic left"
    );
    store.close().await?;
    Ok(())
}
