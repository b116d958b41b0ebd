//! Latest-by-key: the entries and their pages.

use super::*;

pub(crate) async fn latest_by_key(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let seqs = append_each(
        store.as_ref(),
        vec![
            event("orders.eu", Some("k1"), "eu-k1-v1"), // 0
            event("orders.us", Some("k1"), "us-k1-v1"), // 1
            event("orders.eu", Some("k2"), "eu-k2-v1"), // 2
            event("orders.eu", Some("k1"), "eu-k1-v2"), // 3
            event("orders.eu", None, "no key"),         // 4
            event("orders", Some("k1"), "root"),        // 5
            event("ordersx.eu", Some("k1"), "other"),   // 6
            event("orders.eu.x", Some("k9"), "deep"),   // 7
        ],
    )
    .await?;
    let seqs_of = |events: Vec<Event>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    ensure!(
        seqs_of(store.latest_by_key(&pattern("orders.eu")).await?) == vec![seqs[2], seqs[3]],
        "concrete topic: latest per key in seq order"
    );
    ensure!(
        seqs_of(store.latest_by_key(&pattern("orders.*")).await?)
            == vec![seqs[1], seqs[2], seqs[3]],
        "one-segment wildcard"
    );
    ensure!(
        seqs_of(store.latest_by_key(&pattern("orders.**")).await?)
            == vec![seqs[1], seqs[2], seqs[3], seqs[5], seqs[7]],
        "orders.** includes orders itself and deeper topics"
    );
    ensure!(
        seqs_of(store.latest_by_key(&pattern("*.eu")).await?) == vec![seqs[2], seqs[3], seqs[6]],
        "leading wildcard"
    );
    ensure!(
        seqs_of(store.latest_by_key(&pattern("**")).await?).len() == 6,
        "every (topic, key)"
    );
    ensure!(
        store.latest_by_key(&pattern("nothing.*")).await?.is_empty(),
        "no match"
    );
    let latest = store
        .latest_for_key(&topic("orders.eu"), "k1")
        .await?
        .context("latest for key")?;
    ensure!(latest.seq == seqs[3] && latest.payload.get() == r#""eu-k1-v2""#);
    ensure!(
        store
            .latest_for_key(&topic("orders.eu"), "missing")
            .await?
            .is_none()
    );
    store.close().await?;
    Ok(())
}

/// Every page of `latest_by_key_page` with `limits`, checking each page's
/// bounds; the events in the order they came, and how many pages.
async fn all_latest_pages(
    store: &dyn Store,
    pattern: &Pattern,
    limits: PageLimits,
) -> Result<(Vec<Event>, usize)> {
    let (mut events, mut pages) = (Vec::new(), 0);
    let mut after: Option<LatestCursor> = None;
    loop {
        pages += 1;
        ensure!(pages < 1000, "paging does not end");
        let page = store
            .latest_by_key_page(pattern, after.as_ref(), limits)
            .await?;
        ensure!(page.events.len() <= limits.keys, "page over its key bound");
        let bytes: usize = page.events.iter().map(|e| e.payload.get().len()).sum();
        let last_bytes = page.events.last().map_or(0, |e| e.payload.get().len());
        ensure!(
            bytes - last_bytes < limits.bytes,
            "page went on after reaching its byte bound"
        );
        if let (Some(next), Some(previous)) = (&page.next, &after) {
            ensure!(next > previous, "the cursor moves forward");
        }
        events.extend(page.events);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok((events, pages)),
        }
    }
}

pub(crate) async fn latest_by_key_pages(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let mut batch = Vec::new();
    for t in ["a", "a.x", "a.y", "a-b", "b.x"] {
        for k in 0..7 {
            batch.push(event(t, Some(&format!("k{k}")), &format!("{t}/{k}/old")));
            batch.push(event(t, Some(&format!("k{k}")), &format!("{t}/{k}")));
        }
    }
    append_each(store.as_ref(), batch).await?;
    let key_of = |e: &Event| {
        (
            e.topic.as_str().to_owned(),
            e.key.clone().unwrap_or_default(),
        )
    };
    for (pattern_text, expected) in [
        ("a.*", 14),
        ("a.**", 21),
        ("a-b", 7),
        ("**", 35),
        ("*.x", 14),
    ] {
        let pattern = pattern(pattern_text);
        let whole = store.latest_by_key(&pattern).await?;
        ensure!(
            whole.len() == expected,
            "{pattern_text}: {} keys",
            whole.len()
        );
        for limits in [
            PageLimits {
                keys: 3,
                bytes: 1 << 20,
                scan: 10_000,
            },
            PageLimits {
                keys: 100,
                bytes: 1,
                scan: 10_000,
            },
            PageLimits {
                keys: 100,
                bytes: 1 << 20,
                scan: 4,
            },
        ] {
            let (paged, pages) = all_latest_pages(store.as_ref(), &pattern, limits).await?;
            let keys: Vec<_> = paged.iter().map(key_of).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            sorted.dedup();
            ensure!(
                keys == sorted,
                "{pattern_text} {limits:?}: (topic, key) order, each once"
            );
            let mut by_seq = paged.clone();
            by_seq.sort_unstable_by_key(|e| e.seq);
            ensure!(
                by_seq == whole,
                "{pattern_text} {limits:?}: the same latest events"
            );
            ensure!(
                paged.iter().all(|e| !e.payload.get().contains("old")),
                "only the latest event of each key"
            );
            if limits.bytes == 1 {
                ensure!(pages >= expected, "one event per page at a 1-byte bound");
            }
        }
    }
    store.close().await?;
    Ok(())
}
