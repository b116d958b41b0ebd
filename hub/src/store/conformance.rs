//! Behaviour every [`Store`] backend must show, written against
//! `Arc<dyn Store>` only. A backend runs the suite by implementing
//! [`StoreFactory`] and instantiating [`conformance_tests!`] (see the SQLite
//! instance at the bottom).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use promhub_core::frames::{Event, to_payload};
use promhub_core::{Pattern, Topic};
use serde_json::value::RawValue;

use super::writer::{GroupUpdate, StoreWriter};
use super::{
    Appended, CommitBatch, DeadLetter, DeadLetterRef, GroupKey, GroupProgress, LatestCursor,
    NewEvent, PageLimits, RETENTION_TOPICS_PER_CALL, RetentionLimits, RetentionPass,
    RetentionPolicy, Store, StoreError,
};

/// Opens a backend at a location. Opening the same location again must see
/// everything committed before (a real reopen).
#[async_trait]
pub(crate) trait StoreFactory: Send + Sync {
    async fn open(&self, location: &Path, dedup_window: Duration) -> Result<Arc<dyn Store>>;
}

const DEFAULT_WINDOW: Duration = Duration::from_secs(120);

fn topic(s: &str) -> Topic {
    Topic::parse(s).expect("valid test topic")
}

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s).expect("valid test pattern")
}

fn event(topic_name: &str, key: Option<&str>, body: &str) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7().to_string(),
        client_id: false,
        topic: topic(topic_name),
        ts: 1_700_000_000_000,
        key: key.map(str::to_owned),
        payload: to_payload(body).expect("string payload"),
        headers: None,
        tags: None,
        caused_by: None,
        sid: None,
    }
}

fn with_client_id(mut e: NewEvent, id: &str) -> NewEvent {
    e.id = id.to_owned();
    e.client_id = true;
    e
}

/// An entry of a commit's outcome with its stored event put back.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Stored(Event),
    Duplicate { id: String, seq: u64 },
}

/// Commits `events` and pairs each `Stored` answer (id and seq) with its
/// event from `CommitOutcome::stored`, checking that contract: the stored
/// events are the `Stored` answers' ids and seqs, in the same (seq) order.
async fn commit_events(store: &dyn Store, events: Vec<NewEvent>) -> Result<Vec<Answer>> {
    let outcome = store
        .commit(CommitBatch {
            events,
            ..CommitBatch::default()
        })
        .await?;
    let mut stored = outcome.stored.into_iter();
    let mut answers = Vec::with_capacity(outcome.events.len());
    for appended in outcome.events {
        answers.push(match appended {
            Appended::Stored { id, seq } => {
                let event = stored.next().context("a Stored answer without its event")?;
                ensure!(
                    event.id == id && event.seq == seq,
                    "stored event {}/{} answered as {id}/{seq}",
                    event.id,
                    event.seq
                );
                Answer::Stored(event)
            }
            Appended::Duplicate { id, seq } => Answer::Duplicate { id, seq },
        });
    }
    ensure!(stored.next().is_none(), "more stored events than answers");
    Ok(answers)
}

/// The seq of a `Stored` answer of the writer.
fn stored_seq(appended: &Appended) -> Result<u64> {
    match appended {
        Appended::Stored { seq, .. } => Ok(*seq),
        Appended::Duplicate { id, seq } => bail!("expected stored, got duplicate {id} of {seq}"),
    }
}

fn stored(appended: &Answer) -> Result<&Event> {
    match appended {
        Answer::Stored(e) => Ok(e),
        Answer::Duplicate { id, seq } => bail!("expected stored, got duplicate {id} of {seq}"),
    }
}

/// Stores events one batch per item and returns their seqs.
async fn append_each(store: &dyn Store, events: Vec<NewEvent>) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for e in events {
        let out = commit_events(store, vec![e]).await?;
        seqs.push(stored(&out[0])?.seq);
    }
    Ok(seqs)
}

fn group_key(p: &str, g: &str) -> GroupKey {
    GroupKey {
        pattern: p.to_owned(),
        group: g.to_owned(),
    }
}

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

pub(crate) async fn dedup_within_window(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let first = commit_events(
        store.as_ref(),
        vec![with_client_id(event("a", None, "1"), "client-1")],
    )
    .await?;
    let original = stored(&first[0])?.seq;
    let second = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("a", None, "again"), "client-1"),
            // Hub-assigned ids are never de-duplicated, even when equal.
            event("a", None, "other"),
        ],
    )
    .await?;
    ensure!(
        second[0]
            == Answer::Duplicate {
                id: "client-1".into(),
                seq: original
            },
        "duplicate answers the original seq: {:?}",
        second[0]
    );
    stored(&second[1])?;
    let mut hub_id = event("a", None, "h");
    hub_id.id = "same-hub-id".into();
    let twice = commit_events(store.as_ref(), vec![hub_id.clone(), hub_id]).await?;
    stored(&twice[0])?;
    stored(&twice[1])?;
    ensure!(store.count_after(0).await? == 4, "duplicate not stored");
    store.close().await?;
    Ok(())
}

pub(crate) async fn dedup_after_window(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let window = Duration::from_millis(50);
    let store = factory.open(dir.path(), window).await?;
    let first = commit_events(
        store.as_ref(),
        vec![with_client_id(event("a", None, "1"), "client-1")],
    )
    .await?;
    let first_seq = stored(&first[0])?.seq;
    // Waiting longer than the window makes the id new again; no assertion
    // depends on how fast anything runs.
    tokio::time::sleep(window * 3).await;
    let again = commit_events(
        store.as_ref(),
        vec![with_client_id(event("a", None, "2"), "client-1")],
    )
    .await?;
    let second_seq = stored(&again[0])?.seq;
    ensure!(second_seq > first_seq, "stored again with a new seq");
    ensure!(store.count_after(0).await? == 2, "both copies stored");
    store.close().await?;
    Ok(())
}

pub(crate) async fn dedup_inside_batch(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let out = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("a", None, "1"), "dup"),
            with_client_id(event("a", None, "2"), "other"),
            with_client_id(event("a", None, "3"), "dup"),
        ],
    )
    .await?;
    let first = stored(&out[0])?.seq;
    stored(&out[1])?;
    ensure!(
        out[2]
            == Answer::Duplicate {
                id: "dup".into(),
                seq: first
            },
        "second copy in the batch is a duplicate of the first: {:?}",
        out[2]
    );
    ensure!(store.count_after(0).await? == 2, "two stored");
    store.close().await?;
    Ok(())
}

/// semantics.md §3: de-duplication is per topic, so a publisher cannot
/// suppress another topic's event by choosing its id (finding 5), while a
/// real duplicate on the same topic still is one, in a batch, across
/// batches and after a reopen.
pub(crate) async fn dedup_is_per_topic(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let evil = commit_events(
        store.as_ref(),
        vec![with_client_id(event("evil.x", None, "1"), "order-42")],
    )
    .await?;
    let evil_seq = stored(&evil[0])?.seq;
    let victim = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("orders.created", Some("k"), "2"), "order-42"),
            // In one batch too: the same id on two topics is two events,
            // the same id twice on one topic is one.
            with_client_id(event("a", None, "3"), "both"),
            with_client_id(event("b", None, "4"), "both"),
            with_client_id(event("a", None, "5"), "both"),
        ],
    )
    .await?;
    let victim_event = stored(&victim[0])?.clone();
    ensure!(victim_event.seq > evil_seq, "stored with its own seq");
    ensure!(victim_event.topic.as_str() == "orders.created");
    let in_a = stored(&victim[1])?.seq;
    let in_b = stored(&victim[2])?.seq;
    ensure!(in_a != in_b);
    ensure!(
        victim[3]
            == Answer::Duplicate {
                id: "both".into(),
                seq: in_a
            },
        "{:?}",
        victim[3]
    );
    ensure!(
        store.get(victim_event.seq).await? == Some(victim_event.clone()),
        "the victim's event is readable"
    );
    ensure!(
        store
            .latest_for_key(&topic("orders.created"), "k")
            .await?
            .map(|e| e.seq)
            == Some(victim_event.seq)
    );
    store.close().await?;
    // Across batches and a reopen, each topic keeps its own entry.
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let again = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("orders.created", None, "6"), "order-42"),
            with_client_id(event("evil.x", None, "7"), "order-42"),
            with_client_id(event("b", None, "8"), "both"),
            with_client_id(event("c", None, "9"), "order-42"),
        ],
    )
    .await?;
    let expected = [
        ("order-42", victim_event.seq),
        ("order-42", evil_seq),
        ("both", in_b),
    ];
    for (answer, (id, seq)) in again.iter().zip(expected) {
        ensure!(
            *answer == Answer::Duplicate { id: id.into(), seq },
            "{answer:?}"
        );
    }
    stored(&again[3])?;
    ensure!(store.count_after(0).await? == 5, "five distinct events");
    store.close().await?;
    Ok(())
}

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
        super::event_bytes(first.first().context("an event")?)
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

pub(crate) async fn groups_paged(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    ensure!(store.group_count().await? == 0);
    ensure!(store.groups_page(None, 10).await?.is_empty());
    // Created out of order; pages come in (pattern, group) order.
    let keys = [
        ("b.*", "x"),
        ("a.*", "z"),
        ("a.**", "a"),
        ("a.*", "b"),
        ("a", "q"),
    ];
    let progress = keys
        .iter()
        .enumerate()
        .map(|(i, (p, g))| GroupProgress {
            key: group_key(p, g),
            cursor: i as u64,
            done_above: vec![100 + i as u64],
            attempt_changes: vec![(200, 2)],
        })
        .collect();
    store
        .commit(CommitBatch {
            progress,
            ..CommitBatch::default()
        })
        .await?;
    ensure!(store.group_count().await? == 5);
    let mut sorted: Vec<GroupKey> = keys.iter().map(|(p, g)| group_key(p, g)).collect();
    sorted.sort();
    let mut seen = Vec::new();
    let mut after: Option<GroupKey> = None;
    loop {
        let page = store.groups_page(after.as_ref(), 2).await?;
        ensure!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        seen.extend(page);
    }
    ensure!(
        seen.iter().map(|r| &r.key).eq(sorted.iter()),
        "{:?}",
        seen.iter().map(|r| &r.key).collect::<Vec<_>>()
    );
    // The same records as one group's load.
    for record in &seen {
        ensure!(Some(record) == store.load_group(&record.key).await?.as_ref());
        ensure!(record.done_above.len() == 1 && record.attempts_above == vec![(200, 2)]);
    }
    let rest = store.groups_page(Some(&group_key("a.*", "b")), 100).await?;
    ensure!(rest.iter().map(|r| &r.key).eq(sorted[2..].iter()));
    store.close().await?;
    Ok(())
}

pub(crate) async fn group_progress(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let key = group_key("orders.*", "billing");
    let other = group_key("orders.*", "shipping");
    ensure!(store.load_group(&key).await?.is_none(), "unknown group");
    let progress = |cursor, done_above: Vec<u64>| GroupProgress {
        key: key.clone(),
        cursor,
        done_above,
        attempt_changes: Vec::new(),
    };
    store
        .commit(CommitBatch {
            progress: vec![
                progress(5, vec![]),
                GroupProgress {
                    key: other.clone(),
                    cursor: 0,
                    done_above: vec![],
                    attempt_changes: Vec::new(),
                },
            ],
            ..CommitBatch::default()
        })
        .await?;
    let rec = store.load_group(&key).await?.context("created")?;
    ensure!(rec.cursor == 5 && rec.done_above.is_empty());
    // Out-of-order acks above the cursor are kept; marks at or below the
    // cursor are ignored.
    store
        .commit(CommitBatch {
            progress: vec![progress(5, vec![9, 7, 5, 3])],
            ..CommitBatch::default()
        })
        .await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.cursor == 5 && rec.done_above == vec![7, 9], "{rec:?}");
    // Moving the cursor to 7 removes marks at/below it, keeps 9, adds 12.
    store
        .commit(CommitBatch {
            progress: vec![progress(7, vec![12])],
            ..CommitBatch::default()
        })
        .await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.cursor == 7 && rec.done_above == vec![9, 12], "{rec:?}");
    // A cursor beyond any possible seq (a client's absurd `from`) still
    // means "after everything".
    let far = group_key("far.*", "g");
    store
        .commit(CommitBatch {
            progress: vec![GroupProgress {
                key: far.clone(),
                cursor: u64::MAX,
                done_above: vec![u64::MAX],
                attempt_changes: Vec::new(),
            }],
            ..CommitBatch::default()
        })
        .await?;
    let rec = store.load_group(&far).await?.context("far group")?;
    ensure!(
        rec.cursor >= i64::MAX as u64 && rec.done_above.is_empty(),
        "{rec:?}"
    );
    let groups = store.groups().await?;
    ensure!(groups.len() == 3, "all groups listed");
    ensure!(groups.iter().any(|g| g.key == other && g.cursor == 0));
    ensure!(
        groups
            .iter()
            .any(|g| g.key == key && g.done_above == vec![9, 12])
    );
    store.close().await?;
    Ok(())
}

pub(crate) async fn group_attempts(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let key = group_key("jobs.*", "workers");
    let other = group_key("jobs.*", "auditors");
    let progress = |key: &GroupKey, cursor, attempt_changes: Vec<(u64, u32)>| GroupProgress {
        key: key.clone(),
        cursor,
        done_above: vec![],
        attempt_changes,
    };
    let commit = |progress: Vec<GroupProgress>| {
        store.commit(CommitBatch {
            progress,
            ..CommitBatch::default()
        })
    };
    // A new group records none.
    commit(vec![progress(&key, 2, vec![]), progress(&other, 0, vec![])]).await?;
    let rec = store.load_group(&key).await?.context("created")?;
    ensure!(rec.attempts_above.is_empty(), "{rec:?}");
    // Recorded above the cursor (at or below it ignored), kept by progress
    // that changes nothing, updated by a later change.
    commit(vec![progress(&key, 2, vec![(2, 9), (4, 1), (7, 3)])]).await?;
    commit(vec![progress(&key, 3, vec![])]).await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.attempts_above == vec![(4, 1), (7, 3)], "{rec:?}");
    commit(vec![progress(&key, 3, vec![(4, 2)])]).await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.attempts_above == vec![(4, 2), (7, 3)], "{rec:?}");
    // The cursor passing an entry hides it; 0 forgets one.
    commit(vec![progress(&key, 4, vec![(7, 0), (8, 2)])]).await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.attempts_above == vec![(8, 2)], "{rec:?}");
    // Another group's attempts are its own; `groups` lists both.
    commit(vec![progress(&other, 0, vec![(1, 5)])]).await?;
    let groups = store.groups().await?;
    let of = |k: &GroupKey| {
        groups
            .iter()
            .find(|g| &g.key == k)
            .map(|g| g.attempts_above.clone())
    };
    ensure!(of(&key) == Some(vec![(8, 2)]), "{groups:?}");
    ensure!(of(&other) == Some(vec![(1, 5)]), "{groups:?}");
    // Forgetting what was never recorded is harmless.
    commit(vec![progress(&key, 4, vec![(8, 0), (99, 0)])]).await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.attempts_above.is_empty(), "{rec:?}");
    store.close().await?;
    // Kept across a reopen.
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let rec = store.load_group(&other).await?.context("reopened")?;
    ensure!(rec.attempts_above == vec![(1, 5)], "{rec:?}");
    store.close().await?;
    Ok(())
}

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

pub(crate) async fn dead_letters(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let key = group_key("jobs.**", "workers");
    let other = group_key("jobs.**", "auditors");
    let letter = |k: &GroupKey, seq: u64, reason: &str| DeadLetter {
        key: k.clone(),
        seq,
        event_id: format!("ev-{seq}"),
        reason: reason.to_owned(),
        attempts: 5,
        dead_at: 1_700_000_000_000 + seq,
    };
    store
        .commit(CommitBatch {
            dead_letters: vec![
                letter(&key, 8, "boom"),
                letter(&key, 3, "max_deliver"),
                letter(&other, 3, "final"),
            ],
            ..CommitBatch::default()
        })
        .await?;
    let listed = store.dead_letters(&key, 0, 100).await?;
    ensure!(listed == vec![letter(&key, 3, "max_deliver"), letter(&key, 8, "boom")]);
    ensure!(store.dead_letters(&key, 3, 100).await? == vec![letter(&key, 8, "boom")]);
    ensure!(store.dead_letters(&key, 0, 1).await?.len() == 1, "limit");
    ensure!(store.dead_letter_count(&key).await? == 2);
    ensure!(store.dead_letter_count(&other).await? == 1);
    // Dead again after a replay: the newer record replaces the older.
    store
        .commit(CommitBatch {
            dead_letters: vec![letter(&key, 8, "boom again")],
            removed_dead_letters: vec![DeadLetterRef {
                key: key.clone(),
                seq: 3,
            }],
            ..CommitBatch::default()
        })
        .await?;
    ensure!(store.dead_letters(&key, 0, 100).await? == vec![letter(&key, 8, "boom again")]);
    ensure!(
        store.dead_letter_count(&other).await? == 1,
        "other group untouched"
    );
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

pub(crate) async fn writer_concurrent_appends(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let (writer, mut committed) = StoreWriter::new(Arc::clone(&store));
    let fan_out = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(batch) = committed.recv().await {
            seqs.extend(batch.iter().map(|e| e.seq));
        }
        seqs
    });
    let tasks = 64;
    let per_task = 50;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..per_task {
                let appended = writer
                    .append(event(&format!("t.{}", t % 4), None, &format!("{t}-{i}")))
                    .await?;
                seqs.push(stored_seq(&appended)?);
            }
            anyhow::Ok(seqs)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let seqs = h.await??;
        ensure!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one task's appends in order"
        );
        all.extend(seqs);
    }
    drop(writer);
    let fanned = fan_out.await?;
    all.sort_unstable();
    let n = tasks * per_task;
    ensure!(all.len() == n, "all resolved");
    ensure!(all.windows(2).all(|w| w[0] < w[1]), "unique seqs");
    ensure!(fanned.len() == n, "every stored event fanned out once");
    ensure!(
        fanned.windows(2).all(|w| w[0] < w[1]),
        "fan-out in seq order"
    );
    ensure!(store.count_after(0).await? == n as u64);
    store.close().await?;
    Ok(())
}

pub(crate) async fn writer_group_updates(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let (writer, _committed) = StoreWriter::new(Arc::clone(&store));
    let key = group_key("x.*", "g");
    // Issued concurrently, so they may share a commit: the latest cursor
    // wins and the marks are united.
    let p1 = writer.record_progress(GroupProgress {
        key: key.clone(),
        cursor: 2,
        done_above: vec![4, 6],
        attempt_changes: Vec::new(),
    });
    let p2 = writer.record_progress(GroupProgress {
        key: key.clone(),
        cursor: 4,
        done_above: vec![8],
        attempt_changes: Vec::new(),
    });
    let d = writer.update_group(GroupUpdate {
        dead_letters: vec![DeadLetter {
            key: key.clone(),
            seq: 3,
            event_id: "e3".into(),
            reason: "final".into(),
            attempts: 1,
            dead_at: 10,
        }],
        ..GroupUpdate::default()
    });
    let (r1, r2, r3) = tokio::join!(p1, p2, d);
    r1?;
    r2?;
    r3?;
    let rec = store.load_group(&key).await?.context("group stored")?;
    ensure!(rec.cursor == 4 && rec.done_above == vec![6, 8], "{rec:?}");
    ensure!(store.dead_letter_count(&key).await? == 1);
    writer
        .remove_dead_letter(DeadLetterRef {
            key: key.clone(),
            seq: 3,
        })
        .await?;
    ensure!(store.dead_letter_count(&key).await? == 0, "removed");
    // Duplicates through the writer answer the original seq.
    let a = writer
        .append(with_client_id(event("x.y", None, "1"), "w-1"))
        .await?;
    let b = writer
        .append(with_client_id(event("x.y", None, "2"), "w-1"))
        .await?;
    ensure!(
        b == Appended::Duplicate {
            id: "w-1".into(),
            seq: stored_seq(&a)?
        }
    );
    store.close().await?;
    ensure!(
        matches!(
            writer.append(event("x.y", None, "late")).await,
            Err(StoreError::Closed)
        ),
        "append after the store closed fails with Closed"
    );
    Ok(())
}

/// Instantiates every conformance test for a backend: `$factory` is an
/// expression giving a [`StoreFactory`]. With `optional`, it is a function
/// taking the test's name and giving `Option<impl StoreFactory>`, where
/// `None` means the backend's server is unavailable and the test is skipped
/// (it has already said so).
macro_rules! conformance_tests {
    (optional $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                match $factory(stringify!($name)) {
                    Some(factory) => $crate::store::conformance::$name(&factory).await,
                    None => Ok(()),
                }
            }
        )*
    };
    ($factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                $crate::store::conformance::$name(&$factory).await
            }
        )*
    };
}

macro_rules! all_conformance_tests {
    ($($factory:tt)+) => {
        conformance_tests!($($factory)+;
            seq_strictly_increasing,
            events_round_trip,
            dedup_within_window,
            dedup_after_window,
            dedup_inside_batch,
            dedup_is_per_topic,
            latest_by_key,
            latest_by_key_pages,
            read_after,
            read_after_bounded,
            events_by_seq,
            group_progress,
            groups_paged,
            group_attempts,
            retention,
            retention_visits_topics_in_bounded_calls,
            dead_letters,
            matching_counts,
            survives_reopen,
            closed_store_errors,
            writer_concurrent_appends,
            writer_group_updates,
        );
    };
}

mod sqlite {
    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};

    /// `checkpoint_thread` picks who checkpoints the WAL; both must behave
    /// the same.
    struct SqliteFactory {
        checkpoint_thread: bool,
    }

    #[async_trait]
    impl StoreFactory for SqliteFactory {
        async fn open(&self, location: &Path, dedup_window: Duration) -> Result<Arc<dyn Store>> {
            let store = SqliteStore::open(
                location,
                SqliteOptions {
                    dedup_window,
                    checkpoint_thread: self.checkpoint_thread,
                    ..SqliteOptions::default()
                },
            )?;
            Ok(Arc::new(store))
        }
    }

    mod checkpoint_thread {
        use super::*;
        all_conformance_tests!(SqliteFactory {
            checkpoint_thread: true
        });
    }

    mod checkpoints_in_commits {
        use super::*;
        all_conformance_tests!(SqliteFactory {
            checkpoint_thread: false
        });
    }
}

mod mongo {
    use std::hash::{DefaultHasher, Hash, Hasher};

    use super::*;
    use crate::store::mongo::test_server::FerretDb;
    use crate::store::mongo::{MongoOptions, MongoStore};

    /// Every test gets its own database on the FerretDB shared by this test
    /// binary.
    struct MongoFactory {
        server: &'static FerretDb,
    }

    impl MongoFactory {
        fn shared(test: &str) -> Option<MongoFactory> {
            FerretDb::shared_or_skip(test).map(|server| MongoFactory { server })
        }
    }

    #[async_trait]
    impl StoreFactory for MongoFactory {
        async fn open(&self, location: &Path, dedup_window: Duration) -> Result<Arc<dyn Store>> {
            // The location (a fresh temp dir per test) names the database,
            // so opening it again is a real reopen of the same data.
            let mut hasher = DefaultHasher::new();
            location.hash(&mut hasher);
            let database = format!("conformance_{:016x}", hasher.finish());
            let store = MongoStore::connect_with(
                &self.server.uri(&database),
                MongoOptions {
                    dedup_window,
                    ..MongoOptions::default()
                },
            )
            .await?;
            Ok(Arc::new(store))
        }
    }

    all_conformance_tests!(optional MongoFactory::shared);
}
