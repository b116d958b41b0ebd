//! Reads of the embedded store: the log, latest-by-key, and the counts
//! and firsts the ops API's lag needs. Each runs on a pooled read
//! connection inside one read transaction ([`SqliteStore::read`]) and never
//! returns events past the durable seq.

use promhub_core::frames::Event;
use promhub_core::{Pattern, Topic};
use rusqlite::{OptionalExtension, Row, params};
use serde_json::value::RawValue;

use super::{SqliteStore, backend, from_sql_int, seq_to_sql};
use crate::store::topic_filter::{TopicFilter, literal_prefix};
use crate::store::{LatestCursor, LatestPage, PageLimits, StoreError, event_bytes};

fn from_json<T: serde::de::DeserializeOwned>(
    text: Option<String>,
    seq: u64,
    column: &str,
) -> Result<Option<T>, StoreError> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::Corrupt(format!("event {seq}: bad {column}: {e}")))
    })
    .transpose()
}

/// The topics `pattern` matches that have an event after `after` (from the
/// `topics` table: one row per topic, never the log).
fn topics_matching(
    tx: &rusqlite::Transaction<'_>,
    pattern: &Pattern,
    after: i64,
) -> Result<Vec<String>, StoreError> {
    if let Some(topic) = pattern.as_topic() {
        return Ok(vec![topic.as_str().to_owned()]);
    }
    let mut filter = TopicFilter::new(pattern);
    let mut found = Vec::new();
    let mut keep = |topic: String| {
        if filter.matches(&topic) {
            found.push(topic);
        }
    };
    match literal_prefix(pattern) {
        Some(prefix) => {
            // The prefix itself, and every topic under `prefix.` ('/' sorts
            // right after '.').
            let mut stmt = tx
                .prepare_cached(
                    "SELECT topic FROM topics WHERE last_seq > ?1
                     AND (topic = ?2 OR (topic > ?3 AND topic < ?4))",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![after, prefix, format!("{prefix}."), format!("{prefix}/")],
                    |row| row.get::<_, String>(0),
                )
                .map_err(backend)?;
            for topic in rows {
                keep(topic.map_err(backend)?);
            }
        }
        None => {
            let mut stmt = tx
                .prepare_cached("SELECT topic FROM topics WHERE last_seq > ?1")
                .map_err(backend)?;
            let rows = stmt
                .query_map([after], |row| row.get::<_, String>(0))
                .map_err(backend)?;
            for topic in rows {
                keep(topic.map_err(backend)?);
            }
        }
    }
    Ok(found)
}

/// How many events of `topic` have `seq <= upto`: the ordinal of the last
/// one (an index lookup on `(topic, seq)`).
fn topic_ordinal(
    tx: &rusqlite::Transaction<'_>,
    topic: &str,
    upto: i64,
) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "SELECT tord FROM events WHERE topic = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row(params![topic, upto], |row| row.get(0))
            .optional()
    })
    .map(Option::unwrap_or_default)
    .map_err(backend)
}

/// `tord` of a topic's first retained event.
fn first_topic_ordinal(
    tx: &rusqlite::Transaction<'_>,
    topic: &str,
) -> Result<Option<i64>, StoreError> {
    tx.prepare_cached("SELECT tord FROM events WHERE topic = ?1 ORDER BY seq LIMIT 1")
        .and_then(|mut s| s.query_row([topic], |row| row.get(0)).optional())
        .map_err(backend)
}

const EVENT_COLUMNS: &str = "seq, id, topic, ts, key, payload, headers, tags, caused_by, sid";
/// The same columns qualified with the `e` alias, for joins.
const EVENT_COLUMNS_E: &str =
    "e.seq, e.id, e.topic, e.ts, e.key, e.payload, e.headers, e.tags, e.caused_by, e.sid";
const TOPIC_COLUMN: usize = 2;
/// Columns in [`EVENT_COLUMNS_E`] (extra columns of a query follow them).
const EVENT_COLUMN_COUNT: usize = 10;

/// Decodes a row selected with [`EVENT_COLUMNS`].
fn event_from_row(row: &Row<'_>) -> Result<Event, StoreError> {
    let seq = from_sql_int(row.get::<_, i64>(0).map_err(backend)?);
    let topic_text: String = row.get(TOPIC_COLUMN).map_err(backend)?;
    let topic = Topic::parse(&topic_text)
        .map_err(|e| StoreError::Corrupt(format!("event {seq}: bad topic: {e}")))?;
    let payload: String = row.get(5).map_err(backend)?;
    let payload = RawValue::from_string(payload)
        .map_err(|e| StoreError::Corrupt(format!("event {seq}: bad payload: {e}")))?;
    Ok(Event {
        id: row.get(1).map_err(backend)?,
        seq,
        topic,
        ts: from_sql_int(row.get(3).map_err(backend)?),
        key: row.get(4).map_err(backend)?,
        payload,
        headers: from_json(row.get(6).map_err(backend)?, seq, "headers")?,
        tags: from_json(row.get(7).map_err(backend)?, seq, "tags")?,
        caused_by: from_json(row.get(8).map_err(backend)?, seq, "caused_by")?,
        sid: row.get(9).map_err(backend)?,
    })
}

pub(super) async fn read_after_bounded(
    store: &SqliteStore,
    after: u64,
    pattern: Option<&Pattern>,
    limit: usize,
    max_bytes: usize,
    scan_limit: usize,
) -> Result<(Vec<Event>, u64), StoreError> {
    if limit == 0 {
        store.check_open()?;
        return Ok((Vec::new(), after));
    }
    let pattern = pattern.cloned();
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    // A scan looks at one row at least, so every call makes progress.
    let scan_limit = scan_limit.max(1);
    store
        .read(move |tx, durable| {
            let after_sql = seq_to_sql(after);
            let mut events = Vec::new();
            let topic = pattern.as_ref().and_then(Pattern::as_topic);
            match (&pattern, &topic) {
                (None, _) | (Some(_), Some(_)) => {
                    let mut stmt;
                    let mut rows = match &topic {
                        Some(topic) => {
                            stmt = tx
                                .prepare_cached(&format!(
                                    "SELECT {EVENT_COLUMNS} FROM events
                                 WHERE topic = ?1 AND seq > ?2 AND seq <= ?3
                                 ORDER BY seq LIMIT ?4"
                                ))
                                .map_err(backend)?;
                            stmt.query(params![topic.as_str(), after_sql, durable, limit_sql])
                        }
                        None => {
                            stmt = tx
                                .prepare_cached(&format!(
                                    "SELECT {EVENT_COLUMNS} FROM events
                                 WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
                                ))
                                .map_err(backend)?;
                            stmt.query(params![after_sql, durable, limit_sql])
                        }
                    }
                    .map_err(backend)?;
                    let mut bytes = 0usize;
                    while let Some(row) = rows.next().map_err(backend)? {
                        let event = event_from_row(row)?;
                        bytes = bytes.saturating_add(event_bytes(&event));
                        events.push(event);
                        if bytes >= max_bytes {
                            break;
                        }
                    }
                    if events.len() == limit || bytes >= max_bytes {
                        let last = events.last().map_or(after, |e| e.seq);
                        return Ok((events, last));
                    }
                }
                (Some(pattern), None) => {
                    let mut filter = TopicFilter::new(pattern);
                    let mut stmt = tx
                        .prepare_cached(&format!(
                            "SELECT {EVENT_COLUMNS} FROM events
                         WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
                        ))
                        .map_err(backend)?;
                    let mut rows = stmt
                        .query(params![
                            after_sql,
                            durable,
                            i64::try_from(scan_limit).unwrap_or(i64::MAX)
                        ])
                        .map_err(backend)?;
                    let mut examined = 0usize;
                    let mut last_examined = after;
                    let mut bytes = 0usize;
                    while let Some(row) = rows.next().map_err(backend)? {
                        examined += 1;
                        last_examined = from_sql_int(row.get::<_, i64>(0).map_err(backend)?);
                        // Columns are read lazily: a non-matching event's
                        // payload is never loaded.
                        let topic = row
                            .get_ref(TOPIC_COLUMN)
                            .and_then(|v| v.as_str().map_err(Into::into))
                            .map_err(backend)?;
                        if filter.matches(topic) {
                            let event = event_from_row(row)?;
                            bytes = bytes.saturating_add(event_bytes(&event));
                            events.push(event);
                            if events.len() == limit || bytes >= max_bytes {
                                return Ok((events, last_examined));
                            }
                        }
                    }
                    if examined == scan_limit {
                        return Ok((events, last_examined));
                    }
                }
            }
            // The scan reached the durable end of the log: everything up to
            // it has been examined.
            Ok((events, from_sql_int(durable).max(after)))
        })
        .await
}

pub(super) async fn events_by_seq(
    store: &SqliteStore,
    seqs: &[u64],
) -> Result<Vec<Event>, StoreError> {
    let mut seqs = seqs.to_vec();
    seqs.sort_unstable();
    seqs.dedup();
    store
        .read(move |tx, durable| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1 AND seq <= ?2"
                ))
                .map_err(backend)?;
            let mut events = Vec::with_capacity(seqs.len());
            for seq in seqs {
                let mut rows = stmt
                    .query(params![seq_to_sql(seq), durable])
                    .map_err(backend)?;
                if let Some(row) = rows.next().map_err(backend)? {
                    events.push(event_from_row(row)?);
                }
            }
            Ok(events)
        })
        .await
}

pub(super) async fn get(store: &SqliteStore, seq: u64) -> Result<Option<Event>, StoreError> {
    store
        .read(move |tx, durable| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1 AND seq <= ?2"
                ))
                .map_err(backend)?;
            let mut rows = stmt
                .query(params![seq_to_sql(seq), durable])
                .map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => Ok(Some(event_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
}

pub(super) async fn first_seq(store: &SqliteStore) -> Result<Option<u64>, StoreError> {
    store
        .read(|tx, durable| {
            tx.prepare_cached("SELECT min(seq) FROM events WHERE seq <= ?1")
                .and_then(|mut s| s.query_row([durable], |row| row.get::<_, Option<i64>>(0)))
                .map(|v| v.map(from_sql_int))
                .map_err(backend)
        })
        .await
}

pub(super) async fn latest_by_key_page(
    store: &SqliteStore,
    pattern: &Pattern,
    after: Option<&LatestCursor>,
    limits: PageLimits,
) -> Result<LatestPage, StoreError> {
    let pattern = pattern.clone();
    let after = after.cloned();
    store
        .read(move |tx, durable| {
            // The entries in (topic, key) order from the primary key,
            // narrowed to the topics that can match.
            let mut conditions = Vec::new();
            let mut args: Vec<String> = Vec::new();
            let filter = match (pattern.as_topic(), literal_prefix(&pattern)) {
                (Some(topic), _) => {
                    args.push(topic.as_str().to_owned());
                    conditions.push(format!("l.topic = ?{}", args.len()));
                    false
                }
                (None, Some(prefix)) => {
                    // The prefix itself and every topic below it; others in
                    // that range (`a-b` for `a`) are filtered out.
                    args.push(prefix.clone());
                    conditions.push(format!("l.topic >= ?{}", args.len()));
                    args.push(format!("{prefix}/")); // '/' sorts right after '.'
                    conditions.push(format!("l.topic < ?{}", args.len()));
                    true
                }
                (None, None) => true,
            };
            if let Some(after) = &after {
                args.push(after.topic.clone());
                args.push(after.key.clone());
                conditions.push(format!(
                    "(l.topic, l.key) > (?{}, ?{})",
                    args.len() - 1,
                    args.len()
                ));
            }
            let filter_sql = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            let sql = format!(
            "SELECT {EVENT_COLUMNS_E}, l.topic, l.key FROM latest l JOIN events e ON e.seq = l.seq
             {filter_sql} ORDER BY l.topic, l.key LIMIT {}",
            limits.scan.max(1)
        );
            let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(args.iter()))
                .map_err(backend)?;
            let mut topic_filter = TopicFilter::new(&pattern);
            let mut page = LatestPage::default();
            let (mut examined, mut bytes) = (0, 0);
            let mut last = None;
            let mut full = false;
            while let Some(row) = rows.next().map_err(backend)? {
                examined += 1;
                let topic: String = row.get(EVENT_COLUMN_COUNT).map_err(backend)?;
                let key: String = row.get(EVENT_COLUMN_COUNT + 1).map_err(backend)?;
                // A key whose newest event is still syncing is left out;
                // that event reaches live subscribers once durable.
                let wanted = row.get::<_, i64>(0).map_err(backend)? <= durable
                    && (!filter || topic_filter.matches(&topic));
                last = Some(LatestCursor { topic, key });
                if wanted {
                    let event = event_from_row(row)?;
                    bytes += event.payload.get().len();
                    page.events.push(event);
                    if page.events.len() >= limits.keys || bytes >= limits.bytes {
                        full = true;
                        break;
                    }
                }
            }
            // More may follow when the page filled up or the scan hit its
            // limit; an empty next page then ends it.
            if full || examined >= limits.scan.max(1) {
                page.next = last;
            }
            Ok(page)
        })
        .await
}

pub(super) async fn latest_for_key(
    store: &SqliteStore,
    topic: &Topic,
    key: &str,
) -> Result<Option<Event>, StoreError> {
    let topic = topic.clone();
    let key = key.to_owned();
    store
        .read(move |tx, durable| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS_E} FROM latest l JOIN events e ON e.seq = l.seq
                 WHERE l.topic = ?1 AND l.key = ?2 AND e.seq <= ?3"
                ))
                .map_err(backend)?;
            let mut rows = stmt
                .query(params![topic.as_str(), key, durable])
                .map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => Ok(Some(event_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
}

pub(super) async fn count_after(store: &SqliteStore, after: u64) -> Result<u64, StoreError> {
    store
        .read(move |tx, durable| {
            tx.prepare_cached("SELECT count(*) FROM events WHERE seq > ?1 AND seq <= ?2")
                .and_then(|mut s| {
                    s.query_row(params![seq_to_sql(after), durable], |row| {
                        row.get::<_, i64>(0)
                    })
                })
                .map(from_sql_int)
                .map_err(backend)
        })
        .await
}

pub(super) async fn count_present(store: &SqliteStore, seqs: &[u64]) -> Result<u64, StoreError> {
    let seqs = seqs.to_vec();
    store
        .read(move |tx, durable| {
            let mut stmt = tx
                .prepare_cached("SELECT 1 FROM events WHERE seq = ?1 AND seq <= ?2")
                .map_err(backend)?;
            let mut present = 0;
            for seq in seqs {
                if stmt
                    .exists(params![seq_to_sql(seq), durable])
                    .map_err(backend)?
                {
                    present += 1;
                }
            }
            Ok(present)
        })
        .await
}

pub(super) async fn removed_since(
    store: &SqliteStore,
    pattern: &Pattern,
    from: u64,
) -> Result<Option<u64>, StoreError> {
    let pattern = pattern.clone();
    store
        .read(move |tx, _durable| {
            let from = seq_to_sql(from);
            let mut removed_upto = tx
                .prepare_cached("SELECT removed_upto FROM topics WHERE topic = ?1")
                .map_err(backend)?;
            let mut highest: Option<i64> = None;
            // A topic that lost events at or after `from` had one after it.
            for topic in topics_matching(tx, &pattern, from.saturating_sub(1))? {
                let removed: i64 = removed_upto
                    .query_row([&topic], |row| row.get(0))
                    .optional()
                    .map_err(backend)?
                    .unwrap_or(0);
                if removed >= from {
                    highest = highest.max(Some(removed));
                }
            }
            Ok(highest.map(from_sql_int))
        })
        .await
}

pub(super) async fn count_matching_after(
    store: &SqliteStore,
    pattern: &Pattern,
    after: u64,
) -> Result<u64, StoreError> {
    let pattern = pattern.clone();
    store
        .read(move |tx, durable| {
            let after = seq_to_sql(after);
            if after >= durable {
                return Ok(0);
            }
            let mut total = 0u64;
            for topic in topics_matching(tx, &pattern, after)? {
                let newer = topic_ordinal(tx, &topic, durable)?;
                if newer == 0 {
                    // Nothing durable in this topic (any more).
                    continue;
                }
                let older = match topic_ordinal(tx, &topic, after)? {
                    // Nothing at or before `after` (never was, or removed by
                    // retention): count from the first retained event.
                    0 => first_topic_ordinal(tx, &topic)?.map_or(0, |first| first - 1),
                    older => older,
                };
                total += from_sql_int((newer - older).max(0));
            }
            Ok(total)
        })
        .await
}

pub(super) async fn first_matching_after(
    store: &SqliteStore,
    pattern: &Pattern,
    after: u64,
) -> Result<Option<Event>, StoreError> {
    let pattern = pattern.clone();
    store
        .read(move |tx, durable| {
            let after = seq_to_sql(after);
            let mut first: Option<i64> = None;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq FROM events WHERE topic = ?1 AND seq > ?2 AND seq <= ?3
                 ORDER BY seq LIMIT 1",
                )
                .map_err(backend)?;
            for topic in topics_matching(tx, &pattern, after)? {
                let seq: Option<i64> = stmt
                    .query_row(params![topic, after, durable], |row| row.get(0))
                    .optional()
                    .map_err(backend)?;
                if let Some(seq) = seq {
                    first = Some(first.map_or(seq, |f| f.min(seq)));
                }
            }
            let Some(seq) = first else {
                return Ok(None);
            };
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
                ))
                .map_err(backend)?;
            let mut rows = stmt.query([seq]).map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => Ok(Some(event_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
}
