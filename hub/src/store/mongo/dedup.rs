//! De-duplication entries of the MongoDB store: one document per (topic,
//! publisher id) stored within the window (semantics.md §3: the same id on
//! another topic is another event), `_id` = [`dedup_id`]. Each carries its
//! own `expire_at` for the TTL index; on a server without TTL indexes the
//! writer deletes expired entries itself ([`MongoStore::prune_dedup`]), and
//! every lookup checks the window anyway, since expiry runs late.
//!
//! Databases of older hubs keyed entries by the id alone;
//! [`MongoStore::migrate_dedup`] moves them to their event's topic once,
//! at start.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::codec::{dedup_id, from_bson_int, int_field, str_field};
use super::writes::{self, Kind};
use super::{IN_CHUNK, MongoStore, WriterState, backend, duration_millis};
use crate::store::StoreError;

/// A de-duplication entry to (re)write: its topic, publisher id, seq and
/// time stored.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub topic: String,
    pub id: String,
    pub seq: i64,
    pub stored_at: DateTime,
}

impl Entry {
    pub fn key(&self) -> String {
        dedup_id(&self.topic, &self.id)
    }
}

impl MongoStore {
    /// Copies of these (topic, publisher id)s, keyed by [`dedup_id`], in
    /// batches that never finished — a range still open, or given up after
    /// its lease — whose de-duplication entries may be missing: a hub
    /// killed after inserting its events and before their entries, whose
    /// client sent the publish again to another hub. Key → the lowest seq.
    /// A batch's events are inserted before its entries, so a copy the
    /// dead hub inserted is found here; a hub that is alive but slower than
    /// this lookup can still store a second copy (docs/cluster.md).
    pub(super) async fn unfinished_copies(
        &self,
        wanted: &[(&str, &str)],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let mut copies = HashMap::new();
        if wanted.is_empty() {
            return Ok(copies);
        }
        let ranges = self
            .find_all(super::queries::unfinished_ranges(), |doc| {
                let low = int_field(doc, "_id", "a seq range")?;
                let high = int_field(doc, "high", "a seq range")?;
                Ok((low, high))
            })
            .await?;
        if ranges.is_empty() {
            return Ok(copies);
        }
        let keys: HashSet<String> = wanted
            .iter()
            .map(|(topic, id)| dedup_id(topic, id))
            .collect();
        let ids: Vec<&str> = {
            let mut seen = HashSet::new();
            wanted
                .iter()
                .map(|&(_, id)| id)
                .filter(|id| seen.insert(*id))
                .collect()
        };
        for (low, high) in ranges {
            for chunk in ids.chunks(IN_CHUNK) {
                let found = self
                    .find_all(
                        super::queries::events_with_ids_in(low, high, chunk),
                        |doc| {
                            let seq = from_bson_int(int_field(doc, "_id", "an event")?);
                            let topic = str_field(doc, "topic", "an event")?;
                            let id = str_field(doc, "id", "an event")?;
                            Ok((dedup_id(topic, id), seq))
                        },
                    )
                    .await?;
                for (key, seq) in found {
                    if keys.contains(&key) {
                        let lowest = copies.entry(key).or_insert(seq);
                        *lowest = (*lowest).min(seq);
                    }
                }
            }
        }
        Ok(copies)
    }

    /// Which of these entries ([`dedup_id`] keys) are stored: within the
    /// window since `window_start` (key → seq), or only in an expired entry
    /// that expiry has not deleted yet (a new copy replaces it).
    pub(super) async fn stored_ids(
        &self,
        keys: &[&str],
        window_start: i64,
    ) -> Result<(HashMap<String, u64>, HashSet<String>), StoreError> {
        let mut known = HashMap::new();
        let mut expired = HashSet::new();
        for chunk in keys.chunks(IN_CHUNK) {
            let entries = self
                .find_all(super::queries::dedup_entries(chunk), |doc| {
                    let stored_at = doc
                        .get_datetime("stored_at")
                        .map_err(|_| StoreError::Corrupt("a dedup entry has no stored_at".into()))?
                        .timestamp_millis();
                    let seq = from_bson_int(int_field(doc, "seq", "a dedup entry")?);
                    let key = str_field(doc, "_id", "a dedup entry")?.to_owned();
                    Ok((key, seq, stored_at))
                })
                .await?;
            for (key, seq, stored_at) in entries {
                // The explicit window check: expiry deletes entries late.
                if stored_at >= window_start {
                    known.insert(key, seq);
                } else {
                    expired.insert(key);
                }
            }
        }
        Ok((known, expired))
    }

    /// Writes `entries` (the repair's: the newest copy of each key), except
    /// where a newer entry is stored already (the id stored again after its
    /// window). Read first rather than filter on seq in the upsert: an
    /// upsert that matches nothing but finds the `_id` taken fails, and
    /// FerretDB stops at the first failure even when told not to.
    pub(super) async fn restore_dedup(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = entries.iter().map(Entry::key).collect();
        let ours: HashMap<&str, i64> = keys
            .iter()
            .map(String::as_str)
            .zip(entries.iter().map(|e| e.seq))
            .collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut newer = HashSet::new();
        for chunk in key_refs.chunks(IN_CHUNK) {
            let existing = self
                .find_all(super::queries::dedup_entries(chunk), |doc| {
                    Ok((
                        str_field(doc, "_id", "a dedup entry")?.to_owned(),
                        int_field(doc, "seq", "a dedup entry")?,
                    ))
                })
                .await?;
            for (key, seq) in existing {
                if ours.get(key.as_str()).is_some_and(|&mine| seq >= mine) {
                    newer.insert(key);
                }
            }
        }
        let window = duration_millis(self.inner.options.dedup_window);
        let updates = entries
            .iter()
            .zip(&keys)
            .filter(|(_, key)| !newer.contains(key.as_str()))
            .map(|(entry, key)| dedup_update(key, &entry.topic, entry.seq, entry.stored_at, window))
            .collect();
        writes::run(
            &self.inner.db,
            &self.inner.write_concern,
            Kind::Update,
            super::queries::DEDUP,
            updates,
        )
        .await
    }

    /// Deletes expired de-duplication entries, now and then, on a server
    /// that has no TTL index to do it.
    pub(super) async fn prune_dedup(
        &self,
        state: &mut WriterState,
        now: DateTime,
    ) -> Result<(), StoreError> {
        if self.inner.dedup_ttl.load(Ordering::Acquire) {
            return Ok(());
        }
        let due = state
            .last_prune
            .is_none_or(|at| at.elapsed() >= self.inner.options.dedup_prune_interval);
        if !due {
            return Ok(());
        }
        state.last_prune = Some(Instant::now());
        self.collection(super::queries::DEDUP)
            .delete_many(doc! { "expire_at": { "$lt": now } })
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Moves entries written by an older hub (`_id` = the publisher id, no
    /// `topic`) to the topic of the event they point at, once per database
    /// (a marker in `meta` records that it is done). An entry whose event
    /// is gone (retention) is dropped; the TTL deletes the rest in time
    /// anyway, but until then they still guard against duplicates.
    pub(super) async fn migrate_dedup(&self) -> Result<(), StoreError> {
        let meta = self.collection(super::queries::META);
        if meta
            .find_one(doc! { "_id": super::queries::DEDUP_BY_TOPIC })
            .await
            .map_err(backend)?
            .is_some()
        {
            return Ok(());
        }
        let dedup = self.collection(super::queries::DEDUP);
        let mut cursor = dedup
            .find(doc! { "topic": { "$exists": false } })
            .await
            .map_err(backend)?;
        // Old `_id` → (seq, stored_at).
        let mut old: Vec<(String, i64, DateTime)> = Vec::new();
        while let Some(doc) = cursor.try_next().await.map_err(backend)? {
            let id = str_field(&doc, "_id", "a dedup entry")?.to_owned();
            let seq = int_field(&doc, "seq", "a dedup entry")?;
            let stored_at = doc
                .get_datetime("stored_at")
                .copied()
                .unwrap_or_else(|_| DateTime::now());
            old.push((id, seq, stored_at));
        }
        for chunk in old.chunks(IN_CHUNK) {
            let seqs: Vec<i64> = chunk.iter().map(|&(_, seq, _)| seq).collect();
            let topics: HashMap<i64, String> = self
                .find_all(super::queries::events_by_seq(&seqs), |doc| {
                    Ok((
                        int_field(doc, "_id", "an event")?,
                        str_field(doc, "topic", "an event")?.to_owned(),
                    ))
                })
                .await?
                .into_iter()
                .collect();
            let entries = chunk
                .iter()
                .filter_map(|(id, seq, stored_at)| {
                    topics.get(seq).map(|topic| Entry {
                        topic: topic.clone(),
                        id: id.clone(),
                        seq: *seq,
                        stored_at: *stored_at,
                    })
                })
                .collect();
            self.restore_dedup(entries).await?;
            let ids: Vec<Bson> = chunk.iter().map(|(id, _, _)| Bson::from(id)).collect();
            dedup
                .delete_many(doc! { "_id": { "$in": ids }, "topic": { "$exists": false } })
                .await
                .map_err(backend)?;
        }
        if !old.is_empty() {
            tracing::info!(
                entries = old.len(),
                "MongoDB store: de-duplication entries moved to their topic"
            );
        }
        writes::upsert_one(
            &meta,
            doc! { "_id": super::queries::DEDUP_BY_TOPIC },
            doc! { "$set": { "value": 1 } },
        )
        .await?;
        Ok(())
    }
}

/// A de-duplication entry (without its `_id`): `topic`'s publisher id
/// stored as `seq` at `stored_at`.
pub(super) fn dedup_entry(topic: &str, seq: i64, stored_at: DateTime, window_ms: i64) -> Document {
    doc! {
        "topic": topic,
        "seq": seq,
        "stored_at": stored_at,
        // Each entry's own expiry, for the TTL index.
        "expire_at": stored_at.saturating_add_millis(window_ms),
    }
}

/// Records (inserting or replacing) the entry with `_id` `key` (a
/// [`dedup_id`] of `topic`).
pub(super) fn dedup_update(
    key: &str,
    topic: &str,
    seq: i64,
    stored_at: DateTime,
    window_ms: i64,
) -> Document {
    writes::update(
        doc! { "_id": key },
        doc! { "$set": dedup_entry(topic, seq, stored_at, window_ms) },
        true,
    )
}
