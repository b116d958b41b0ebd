//! The log: seqs, reads, counts, reopening and closing.

use super::*;

pub(crate) async fn seq_strictly_increasing(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    ensure!(store.last_seq().await? == 0, "empty store has last_seq 0");
    ensure!(
        store.first_seq().await?.is_none(),
        "empty store has no first_seq"
    );
    let mut all = Vec::new();
    for batch_size in [1usize, 5, 0, 17, 2] {
        let events = (0..batch_size)
            .map(|i| event("a.b", None, &format!("e{i}")))
            .collect();
        for appended in commit_events(store.as_ref(), events).await? {
            all.push(stored(&appended)?.seq);
        }
    }
    ensure!(all.len() == 25, "all events stored");
    ensure!(
        all.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {all:?}"
    );
    ensure!(all[0] >= 1, "seqs start above 0");
    ensure!(store.last_seq().await? == *all.last().unwrap(), "last_seq");
    ensure!(store.first_seq().await? == Some(all[0]), "first_seq");
    ensure!(store.count_after(0).await? == 25, "count_after(0)");
    ensure!(store.count_after(all[9]).await? == 15, "count_after(10th)");
    store.close().await?;
    Ok(())
}

pub(crate) async fn events_round_trip(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    // Odd spacing, key order, escapes and big numbers must survive verbatim.
    let raw =
        r#"{ "z": 1,"a" :[1, 2.50 ,3e2], "s":"\u00e9\n", "n": 123456789012345678901234567890 }"#;
    let mut full = event("orders.eu.created", Some("order-1"), "x");
    full.payload = RawValue::from_string(raw.to_owned())?;
    full.ts = u64::MAX; // extreme values round-trip too
    full.headers = Some(BTreeMap::from([
        ("trace".to_owned(), "abc".to_owned()),
        ("empty".to_owned(), String::new()),
    ]));
    full.tags = Some(vec!["t1".to_owned(), "t 2".to_owned()]);
    full.caused_by = Some(vec!["cause-1".to_owned()]);
    full.sid = Some("session-9".to_owned());
    let bare = event("orders.eu.created", None, "y");
    // NUL bytes and non-ASCII text in every string field.
    let mut odd = with_client_id(event("ördérs.日本", Some("k\0z"), "x"), "id\0ü");
    odd.payload = RawValue::from_string(r#"["\u0000", "日本"]"#.to_owned())?;
    odd.headers = Some(BTreeMap::from([("h\0".to_owned(), "v\0é".to_owned())]));
    odd.sid = Some("s\0".to_owned());
    odd.ts = 0;
    let mut empty_options = event("orders.eu.created", Some(""), "y");
    empty_options.headers = Some(BTreeMap::new());
    empty_options.tags = Some(Vec::new());
    let inputs = vec![full, bare, empty_options, odd];
    let out = commit_events(store.as_ref(), inputs.clone()).await?;
    for (input, appended) in inputs.iter().zip(&out) {
        let e = stored(appended)?;
        let read = store.get(e.seq).await?.context("stored event readable")?;
        ensure!(&read == e, "read back equals returned: {read:?} vs {e:?}");
        ensure!(read.payload.get() == input.payload.get(), "payload bytes");
        ensure!(
            read.id == input.id && read.topic == input.topic,
            "id, topic"
        );
        ensure!(read.ts == input.ts && read.key == input.key, "ts, key");
        ensure!(read.headers == input.headers, "headers");
        ensure!(read.tags == input.tags, "tags");
        ensure!(read.caused_by == input.caused_by, "caused_by");
        ensure!(read.sid == input.sid, "sid");
    }
    ensure!(store.get(9999).await?.is_none(), "unknown seq is None");
    ensure!(store.get(u64::MAX).await?.is_none(), "absurd seq is None");
    let key = store
        .latest_for_key(&topic("ördérs.日本"), "k\0z")
        .await?
        .context("latest by an odd key")?;
    ensure!(key.seq == stored(&out[3])?.seq);
    store.close().await?;
    Ok(())
}

pub(crate) async fn read_after(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let mut events = Vec::new();
    for i in 0..30 {
        let t = match i % 3 {
            0 => "a.x",
            1 => "a.y",
            _ => "b.x",
        };
        events.push(event(t, None, &format!("{i}")));
    }
    let out = commit_events(store.as_ref(), events).await?;
    let seqs: Vec<u64> = out
        .iter()
        .map(|a| stored(a).map(|e| e.seq))
        .collect::<Result<_>>()?;
    let last = *seqs.last().unwrap();

    // No pattern: a page, then the rest, then nothing.
    let (page, upto) = store.read_after(0, None, 10, 10).await?;
    ensure!(page.iter().map(|e| e.seq).eq(seqs[..10].iter().copied()));
    ensure!(upto == seqs[9], "continue from the last returned");
    let (rest, upto) = store.read_after(upto, None, 100, 100).await?;
    ensure!(rest.iter().map(|e| e.seq).eq(seqs[10..].iter().copied()));
    ensure!(upto == last, "examined up to the end");
    let (none, upto) = store.read_after(last, None, 10, 10).await?;
    ensure!(none.is_empty() && upto == last);
    let (none, upto) = store.read_after(u64::MAX, None, 10, 10).await?;
    ensure!(none.is_empty() && upto == u64::MAX, "after beyond the end");
    ensure!(store.count_after(u64::MAX).await? == 0);
    let (one, upto) = store.read_after(0, None, 1, 0).await?;
    ensure!(
        one.len() == 1 && upto == seqs[0],
        "scan_limit 0 still makes progress"
    );
    let (none, upto) = store.read_after(3, None, 0, 10).await?;
    ensure!(none.is_empty() && upto == 3, "limit 0 reads nothing");

    // Concrete pattern: only that topic.
    let (ax, upto) = store.read_after(0, Some(&pattern("a.x")), 100, 100).await?;
    ensure!(ax.len() == 10 && ax.iter().all(|e| e.topic.as_str() == "a.x"));
    ensure!(ax.windows(2).all(|w| w[0].seq < w[1].seq));
    ensure!(upto == last, "concrete scan reached the end");
    let (ax, upto) = store.read_after(0, Some(&pattern("a.x")), 3, 100).await?;
    ensure!(ax.len() == 3 && upto == ax[2].seq, "limit applies");

    // Wildcard pattern with limit and scan_limit.
    let p = pattern("*.x");
    let (wx, upto) = store.read_after(0, Some(&p), 100, 1000).await?;
    ensure!(wx.len() == 20 && wx.iter().all(|e| p.matches(&e.topic)));
    ensure!(upto == last);
    let (wx, upto) = store.read_after(0, Some(&p), 4, 1000).await?;
    ensure!(wx.len() == 4 && upto == wx[3].seq, "stops at limit");
    // scan_limit 6 examines seqs[0..6]: topics a.x a.y b.x a.x a.y b.x.
    let (wx, upto) = store.read_after(0, Some(&p), 100, 6).await?;
    ensure!(
        wx.len() == 4,
        "four of the six examined match, got {}",
        wx.len()
    );
    ensure!(upto == seqs[5], "examined up to the scan limit");
    // Continuing from there eventually covers everything exactly once.
    let mut seen = wx.iter().map(|e| e.seq).collect::<Vec<_>>();
    let mut from = upto;
    for _ in 0..10 {
        let (more, next) = store.read_after(from, Some(&p), 100, 6).await?;
        seen.extend(more.iter().map(|e| e.seq));
        from = next;
        if from == last {
            break;
        }
    }
    ensure!(from == last && seen.len() == 20, "paged wildcard scan");
    let (sparse, upto) = store.read_after(0, Some(&pattern("zzz.**")), 10, 7).await?;
    ensure!(
        sparse.is_empty() && upto == seqs[6],
        "scan_limit bounds a sparse scan"
    );
    store.close().await?;
    Ok(())
}

pub(crate) async fn read_after_bounded(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let mut events = Vec::new();
    for i in 0..12 {
        let t = if i % 2 == 0 { "big.a" } else { "big.b" };
        events.push(event(t, None, &"x".repeat(1000 + i)));
    }
    let out = commit_events(store.as_ref(), events).await?;
    let seqs: Vec<u64> = out
        .iter()
        .map(|a| stored(a).map(|e| e.seq))
        .collect::<Result<_>>()?;
    let one = {
        let (first, _) = store.read_after(0, None, 1, 1).await?;
        crate::store::event_bytes(first.first().context("an event")?)
    };
    ensure!(one > 1000, "the payload counts: {one}");
    // Every pattern shape stops at the event that reaches the byte bound
    // and continues from there.
    for p in [None, Some(pattern("big.a")), Some(pattern("big.*"))] {
        let matching: Vec<u64> = match &p {
            Some(p) if p.as_str() == "big.a" => seqs.iter().copied().step_by(2).collect(),
            _ => seqs.clone(),
        };
        let (page, upto) = store
            .read_after_bounded(0, p.as_ref(), 100, 3 * one, 100)
            .await?;
        ensure!(
            page.len() == 3,
            "{p:?}: three events reach 3 x {one} bytes, got {}",
            page.len()
        );
        ensure!(page.iter().map(|e| e.seq).eq(matching[..3].iter().copied()));
        ensure!(
            upto == page[2].seq,
            "{p:?}: continue after the last returned"
        );
        // One byte: exactly one event, however large.
        let (page, upto) = store
            .read_after_bounded(upto, p.as_ref(), 100, 1, 100)
            .await?;
        ensure!(page.len() == 1 && page[0].seq == matching[3] && upto == matching[3]);
        // The count limit still applies, and no bound reads to the end.
        let (page, _) = store
            .read_after_bounded(0, p.as_ref(), 2, usize::MAX, 100)
            .await?;
        ensure!(page.len() == 2);
        let (page, upto) = store
            .read_after_bounded(0, p.as_ref(), 100, usize::MAX, 100)
            .await?;
        ensure!(page.len() == matching.len() && upto == *seqs.last().unwrap());
    }
    store.close().await?;
    Ok(())
}

pub(crate) async fn events_by_seq(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let seqs = append_each(
        store.as_ref(),
        (0..5)
            .map(|i| event("jobs.a", None, &format!("{i}")))
            .collect(),
    )
    .await?;
    // Any order in, seq order out; unknown and duplicate seqs are left out.
    let found = store
        .events_by_seq(&[seqs[3], 0, seqs[1], seqs[3], seqs[4] + 100])
        .await?;
    ensure!(
        found.iter().map(|e| e.seq).eq([seqs[1], seqs[3]]),
        "{:?}",
        found.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    let (all, _) = store.read_after(0, None, 10, 10).await?;
    ensure!(found[0] == all[1] && found[1] == all[3], "the whole event");
    ensure!(store.events_by_seq(&[]).await?.is_empty());
    store.close().await?;
    Ok(())
}

/// Counts and first events per pattern (the ops API's lag), checked against
/// a brute-force count over the same events, also after a reopen.
pub(crate) async fn matching_counts(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let topics = [
        "a", "a.b", "a.c", "ab.c", "a.b.c", "x.y", "a.b", "a-b", "a.b", "x.a.b", "a.c",
    ];
    let mut seqs = Vec::new();
    {
        let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
        // Several batches, so per-topic counts continue across commits.
        for chunk in topics.chunks(4) {
            let events = chunk.iter().map(|t| event(t, None, t)).collect();
            for appended in commit_events(store.as_ref(), events).await? {
                seqs.push(stored(&appended)?.seq);
            }
        }
        store.close().await?;
    }
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    // One more after the reopen.
    let extra = commit_events(store.as_ref(), vec![event("a.b", None, "late")]).await?;
    seqs.push(stored(&extra[0])?.seq);
    let all: Vec<(u64, Topic)> = seqs
        .iter()
        .zip(topics.iter().chain(std::iter::once(&"a.b")))
        .map(|(&seq, t)| (seq, topic(t)))
        .collect();
    let head = *seqs.last().context("events")?;
    for p in [
        "a.b",
        "a.*",
        "a.**",
        "**",
        "*.b",
        "a.**.c",
        "x.*.b",
        "nothing.here",
        "ab.*",
    ] {
        let pat = pattern(p);
        for after in std::iter::once(0)
            .chain(seqs.iter().copied())
            .chain([head + 5])
        {
            let expected = all
                .iter()
                .filter(|(seq, t)| *seq > after && pat.matches(t))
                .count() as u64;
            let counted = store.count_matching_after(&pat, after).await?;
            ensure!(
                counted == expected,
                "{p} after {after}: counted {counted}, expected {expected}"
            );
            let first_expected = all
                .iter()
                .find(|(seq, t)| *seq > after && pat.matches(t))
                .map(|(seq, _)| *seq);
            let first = store.first_matching_after(&pat, after).await?;
            ensure!(
                first.as_ref().map(|e| e.seq) == first_expected,
                "{p} first after {after}: {:?} vs {first_expected:?}",
                first.map(|e| e.seq)
            );
            if let Some(first) = first {
                ensure!(first.ts == 1_700_000_000_000 && pat.matches(&first.topic));
            }
        }
    }
    store.close().await?;
    Ok(())
}

pub(crate) async fn survives_reopen(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = group_key("a.*", "g");
    let (first_seqs, original) = {
        let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
        let out = commit_events(
            store.as_ref(),
            vec![
                event("a.b", Some("k"), "1"),
                with_client_id(event("a.b", Some("k"), "2"), "client-9"),
            ],
        )
        .await?;
        store
            .commit(CommitBatch {
                progress: vec![GroupProgress {
                    key: key.clone(),
                    cursor: 1,
                    done_above: vec![4],
                    attempt_changes: Vec::new(),
                }],
                dead_letters: vec![DeadLetter {
                    key: key.clone(),
                    seq: 1,
                    event_id: "x".into(),
                    reason: "r".into(),
                    attempts: 2,
                    dead_at: 7,
                }],
                ..CommitBatch::default()
            })
            .await?;
        let seqs = out
            .iter()
            .map(|a| stored(a).map(|e| e.seq))
            .collect::<Result<Vec<_>>>()?;
        let original = store.get(seqs[1]).await?.context("stored")?;
        store.close().await?;
        (seqs, original)
    };
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    ensure!(
        store.last_seq().await? == first_seqs[1],
        "last_seq survives"
    );
    ensure!(
        store.get(first_seqs[1]).await? == Some(original.clone()),
        "event survives"
    );
    ensure!(
        store.latest_for_key(&topic("a.b"), "k").await? == Some(original),
        "latest survives"
    );
    let rec = store.load_group(&key).await?.context("group survives")?;
    ensure!(rec.cursor == 1 && rec.done_above == vec![4]);
    ensure!(
        store.dead_letter_count(&key).await? == 1,
        "dead letter survives"
    );
    let out = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("a.b", None, "3"), "client-9"),
            event("a.b", None, "4"),
        ],
    )
    .await?;
    ensure!(
        out[0]
            == Answer::Duplicate {
                id: "client-9".into(),
                seq: first_seqs[1]
            },
        "dedup survives"
    );
    ensure!(
        stored(&out[1])?.seq > first_seqs[1],
        "seq continues after reopen"
    );
    store.close().await?;
    Ok(())
}

pub(crate) async fn closed_store_errors(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    commit_events(store.as_ref(), vec![event("a", None, "1")]).await?;
    store.close().await?;
    store.close().await?; // idempotent
    let closed = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Closed));
    ensure!(closed(store.commit(CommitBatch::default()).await.map(drop)));
    ensure!(closed(store.read_after(0, None, 10, 10).await.map(drop)));
    ensure!(closed(store.get(1).await.map(drop)));
    ensure!(closed(store.last_seq().await.map(drop)));
    ensure!(closed(store.latest_by_key(&pattern("**")).await.map(drop)));
    ensure!(closed(store.groups().await.map(drop)));
    ensure!(closed(store.count_after(0).await.map(drop)));
    Ok(())
}
