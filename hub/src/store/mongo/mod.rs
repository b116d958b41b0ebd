//! The MongoDB backend (`promhub serve --store mongodb://HOST:PORT/DB`),
//! with the same behaviour as the embedded store.
//!
//! Collections (see [`queries`] for their indexes): `events` (`_id` = seq),
//! `latest` (`_id` = topic NUL key → seq), `dedup` (`_id` = topic NUL
//! publisher id: de-duplication is per topic, see `dedup.rs`),
//! `groups` (`_id` = group, cursor and done marks), `dead_letters`,
//! `seq_ranges` (reserved seq ranges, see below) and `meta` (the seq
//! counter: `value`, `applied`).
//!
//! **Seq allocation and the visibility horizon.** Each batch reserves a
//! block of seqs by inserting its range into `seq_ranges`: `{_id: low,
//! high, writer, expires, done: false}` with `low` = the newest range's
//! `high` + 1 (or the counter document's `value` + 1 when that is higher: a
//! database of an older hub, or a repair). The unique `_id` is the
//! arbiter: two hubs that read the same newest range insert the same
//! `_id`, one wins and the other reads again. (An insert is atomic on every
//! server; FerretDB 1.x runs `findAndModify` as a read then a write, so
//! concurrent `$inc`s on one counter hand out the same value: 400 `$inc`s
//! from 4 clients gave 140 distinct values.) A store remembers its last
//! `high` and tries to follow it first: one round trip while no other hub
//! reserves. When the batch is written, or its commit failed, the range is
//! marked `done` and the counter document records `value` and `applied`
//! with `$max` (lower bounds only). So several hubs on one database get
//! distinct, increasing seqs but may finish their batches out of order;
//! the **visibility horizon** is the highest seq below which every range is
//! finished: the lowest `_id` of the ranges neither done nor lapsed − 1,
//! else the newest `high` (read in that order, so a range reserved
//! meanwhile is never passed). Every read of this store stops at the
//! horizon it last saw (`durable_seq`, raised after each commit and by
//! [`MongoStore::refresh_horizon`]), so no reader moves past a seq that
//! could still appear. A range whose `expires` (`range_lease` after its
//! reservation) passed is given up — its hub died, or took that long —
//! and readers pass it: its seqs that were never written never appear.
//! Finished ranges are deleted every 64 releases (the newest is kept: it
//! is the head of the chain). One hub commits through one
//! [`StoreWriter`] and this store serializes its commits, so a hub has at
//! most one range open.
//!
//! **No transactions.** A batch is several writes, each acknowledged with
//! the write concern (`{w: "majority", j: true}` unless the URI sets
//! `w`, `journal` or `wtimeoutMS`; `w=0` is refused) before the next
//! starts, and
//! the commit returns (the hub sends PUBACK) only after all of them:
//! 1. reserve the seqs (a range in `seq_ranges`);
//! 2. insert the events, in order (`ordered` insert);
//! 3. de-duplication entries (inserted; the unique `_id` is the topic and
//!    the publisher id) and latest-by-key (`$max` on seq, so replaying is harmless);
//! 4. dead letters, then group progress, then dead-letter removals (a dead
//!    letter is never lost behind a cursor that passed it);
//! 5. close the batch's seq range (also after a failure), which moves the
//!    horizon, and record `applied` (the highest seq below the horizon
//!    whose batch had finished completely, see below) on the counter.
//!
//! A crash (or a failed write) part-way leaves events whose side effects
//! may be missing, all with seqs above `applied`; at the next start (or
//! before the next commit) they are repaired from the events themselves.
//! Nothing that was acknowledged can be missing, and seqs never go back:
//! the counter only grows, and a restart starts above the highest stored
//! event even if the counter document were lost. Events of a cut-short
//! batch were never acknowledged; they stay, like a publish whose PUBACK
//! was lost (at-least-once).
//!
//! Reads never return an event above the horizon this store last saw
//! (`durable_seq`): on one hub that is the last commit, like the embedded
//! store; with several hubs a commit may be acknowledged before it is
//! readable, while a lower range of another hub is still open.
//!
//! [`StoreWriter`]: super::writer::StoreWriter

mod claims;
mod codec;
mod commit;
mod dedup;
mod open;
mod queries;
mod retention;
pub mod test_server;
pub use claims::{ClaimOutcome, ClaimStatus, GroupClaims, PRUNE_EVERY_CLAIMS};
mod writes;

#[cfg(test)]
mod explain;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use promhub_core::frames::{Event, Millis};
use promhub_core::{Pattern, Topic};
use tokio::sync::Mutex;

use self::codec::{
    attempt_map, dead_letter_document, dead_letter_from_document, dead_letter_id, dedup_id,
    event_document, event_from_document, from_bson_int, group_id, int_field, int_list, latest_id,
    seq_to_bson, str_field, topic_key_range,
};
use self::commit::{latest_update, topic_update};
use self::dedup::{dedup_entry, dedup_update};
use self::queries::Query;
use self::writes::Kind;
use super::topic_filter::{TopicFilter, literal_prefix};
use super::{
    Appended, CommitBatch, CommitOutcome, DeadLetter, GroupKey, GroupProgress, GroupRecord,
    LatestCursor, LatestPage, NewEvent, PageLimits, PrefixWalk, RETENTION_TOPICS_PER_CALL,
    RetentionLimits, RetentionPass, RetentionPolicy, Store, StoreError, event_bytes,
};

/// Most ids in one `$in` list (keeps each query far below the 16 MiB
/// command limit).
const IN_CHUNK: usize = 1000;
/// Events read at once while filling a latest-by-key page.
const LATEST_PAGE_CHUNK: usize = 16;

/// Error code of an unsupported feature (FerretDB has no TTL indexes).
const NOT_IMPLEMENTED: i32 = 238;

/// Tuning of the MongoDB store.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// A publisher's `opts.id` seen within this window is a duplicate.
    pub dedup_window: Duration,
    /// On a server without TTL indexes, how often the writer deletes
    /// expired de-duplication entries itself.
    pub dedup_prune_interval: Duration,
    /// How long connecting (and every later operation) waits to find a
    /// usable server, unless the URI sets `serverSelectionTimeoutMS`.
    pub server_selection_timeout: Duration,
    /// How long a reserved seq range may stay open (its batch being
    /// written) before other hubs give it up: readers then skip its seqs
    /// that were never written (see the module docs).
    pub range_lease: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            dedup_window: Duration::from_secs(120),
            dedup_prune_interval: Duration::from_secs(10),
            server_selection_timeout: Duration::from_secs(30),
            range_lease: Duration::from_secs(10),
        }
    }
}

/// The MongoDB [`Store`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    db: Database,
    /// The write concern (the URI's, else `{w: "majority", j: true}`; see
    /// `open.rs`) for the commands built by hand.
    write_concern: Document,
    options: MongoOptions,
    /// Whether the server expires de-duplication entries itself.
    dedup_ttl: AtomicBool,
    closed: AtomicBool,
    /// The visibility horizon this store last saw (see the module docs):
    /// every seq up to it is written or given up; reads stop there.
    durable_seq: AtomicU64,
    /// This store's name in the open seq ranges (`hub-PID-UUID`).
    writer_id: String,
    /// Held for a whole commit: one committer at a time.
    writer: Mutex<WriterState>,
}

#[derive(Debug)]
struct WriterState {
    /// Every event up to this seq has its side effects written.
    applied: u64,
    /// A commit failed part-way: repair before the next one.
    needs_repair: bool,
    last_prune: Option<Instant>,
    /// The last seq this store reserved: the next reservation tries to
    /// follow it (one round trip when no other hub reserved meanwhile).
    chain_head: Option<u64>,
    /// Ranges released (finished ones are pruned every 64).
    releases: u64,
}

fn backend(e: MongoError) -> StoreError {
    StoreError::Backend(format!("MongoDB: {e}"))
}

fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The URI without its password, for messages.
fn redacted(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &uri[..scheme_end], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

impl MongoStore {
    fn collection(&self, name: &str) -> Collection<Document> {
        self.inner.db.collection(name)
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn durable(&self) -> u64 {
        self.inner.durable_seq.load(Ordering::Acquire)
    }

    /// Runs a query and decodes every document with `decode`.
    async fn find_all<T>(
        &self,
        query: Query,
        mut decode: impl FnMut(&Document) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut cursor = self
            .collection(query.collection)
            .find(query.filter)
            .with_options(
                mongodb::options::FindOptions::builder()
                    .sort(query.sort)
                    .limit(query.limit)
                    .build(),
            )
            .await
            .map_err(backend)?;
        let mut out = Vec::new();
        while let Some(doc) = cursor.try_next().await.map_err(backend)? {
            out.push(decode(&doc)?);
        }
        Ok(out)
    }

    /// The events with these seqs (any order in, seq order out).
    async fn events_with_seqs(&self, seqs: &[i64]) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(IN_CHUNK) {
            events.extend(
                self.find_all(queries::events_by_seq(chunk), event_from_document)
                    .await?,
            );
        }
        events.sort_unstable_by_key(|e| e.seq);
        Ok(events)
    }

    /// Records each topic's newest seq (topic → seq) in `topics`.
    async fn record_topics(&self, newest: &HashMap<String, i64>) -> Result<(), StoreError> {
        writes::run(
            &self.inner.db,
            &self.inner.write_concern,
            Kind::Update,
            queries::TOPICS,
            newest
                .iter()
                .map(|(topic, &seq)| topic_update(topic, seq))
                .collect(),
        )
        .await
    }

    /// The topics `pattern` matches with an event after `after`, from the
    /// `topics` collection.
    async fn topics_matching(
        &self,
        pattern: &Pattern,
        after: i64,
    ) -> Result<Vec<String>, StoreError> {
        if let Some(topic) = pattern.as_topic() {
            return Ok(vec![topic.as_str().to_owned()]);
        }
        let filter = doc! { "last": { "$gt": after } };
        let topics = self
            .matching_topic_entries(pattern, filter, |_| Ok(()))
            .await?;
        Ok(topics.into_iter().map(|(topic, ())| topic).collect())
    }

    /// The entries of the `topics` collection that `filter` selects and
    /// whose topic `pattern` matches (the query narrowed to the pattern's
    /// literal prefix), each with what `decode` reads from it.
    async fn matching_topic_entries<T>(
        &self,
        pattern: &Pattern,
        mut filter: Document,
        mut decode: impl FnMut(&Document) -> Result<T, StoreError>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        if let Some(topic) = pattern.as_topic() {
            filter.insert("_id", topic.as_str());
        } else if let Some(prefix) = literal_prefix(pattern) {
            // `prefix` itself and `prefix.…` ('/' sorts right after '.').
            filter.insert("_id", doc! { "$gte": &prefix, "$lt": format!("{prefix}/") });
        }
        let mut matcher = TopicFilter::new(pattern);
        let entries = self
            .find_all(
                Query {
                    collection: queries::TOPICS,
                    filter,
                    sort: None,
                    limit: None,
                    index: queries::ID_INDEX,
                },
                |doc| {
                    Ok((
                        str_field(doc, "_id", "a topic entry")?.to_owned(),
                        decode(doc)?,
                    ))
                },
            )
            .await?;
        Ok(entries
            .into_iter()
            .filter(|(topic, _)| matcher.matches(topic))
            .collect())
    }
}

#[async_trait]
impl Store for MongoStore {
    fn cluster_database(&self) -> Option<Database> {
        Some(self.inner.db.clone())
    }

    fn group_claims(&self, hub: &str) -> Option<GroupClaims> {
        Some(GroupClaims::new(
            &self.inner.db,
            &self.inner.write_concern,
            hub,
        ))
    }

    async fn refresh_horizon(&self) -> Result<u64, StoreError> {
        MongoStore::refresh_horizon(self).await
    }

    async fn commit(&self, batch: CommitBatch) -> Result<CommitOutcome, StoreError> {
        self.check_open()?;
        let mut state = self.inner.writer.lock().await;
        // Closed while waiting for the previous commit.
        self.check_open()?;
        if state.needs_repair {
            self.repair(&mut state).await?;
        }
        let result = self.apply(&mut state, batch).await;
        if result.is_err() {
            state.needs_repair = true;
        }
        result
    }

    async fn read_after_bounded(
        &self,
        after: u64,
        pattern: Option<&Pattern>,
        limit: usize,
        max_bytes: usize,
        scan_limit: usize,
    ) -> Result<(Vec<Event>, u64), StoreError> {
        self.check_open()?;
        let durable = self.durable();
        if limit == 0 {
            return Ok((Vec::new(), after));
        }
        if after >= durable {
            return Ok((Vec::new(), after));
        }
        let lo = seq_to_bson(after);
        let hi = seq_to_bson(durable);
        let limit_bson = i64::try_from(limit).unwrap_or(i64::MAX);
        let topic = pattern.and_then(Pattern::as_topic);
        match (pattern, &topic) {
            (None, _) | (Some(_), Some(_)) => {
                let query = match &topic {
                    Some(topic) => queries::topic_events_after(topic.as_str(), lo, hi, limit_bson),
                    None => queries::events_after(lo, hi, limit_bson),
                };
                let mut cursor = self
                    .collection(query.collection)
                    .find(query.filter)
                    .sort(query.sort.unwrap_or_default())
                    .limit(query.limit.unwrap_or(0))
                    .await
                    .map_err(backend)?;
                let mut events = Vec::new();
                let mut bytes = 0usize;
                while let Some(doc) = cursor.try_next().await.map_err(backend)? {
                    let event = event_from_document(&doc)?;
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
                Ok((events, durable))
            }
            (Some(pattern), None) => {
                // A scan looks at one event at least, so every call makes
                // progress.
                let scan_limit = scan_limit.max(1);
                let query =
                    queries::events_after(lo, hi, i64::try_from(scan_limit).unwrap_or(i64::MAX));
                let mut cursor = self
                    .collection(query.collection)
                    .find(query.filter)
                    .sort(query.sort.unwrap_or_default())
                    .limit(query.limit.unwrap_or(0))
                    .batch_size(u32::try_from(scan_limit.min(1024)).unwrap_or(1024))
                    .await
                    .map_err(backend)?;
                let mut filter = TopicFilter::new(pattern);
                let mut events = Vec::new();
                let mut examined = 0usize;
                let mut last_examined = after;
                let mut bytes = 0usize;
                while let Some(doc) = cursor.try_next().await.map_err(backend)? {
                    examined += 1;
                    last_examined = from_bson_int(int_field(&doc, "_id", "an event")?);
                    if filter.matches(str_field(&doc, "topic", "an event")?) {
                        let event = event_from_document(&doc)?;
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
                Ok((events, durable))
            }
        }
    }

    async fn events_by_seq(&self, seqs: &[u64]) -> Result<Vec<Event>, StoreError> {
        self.check_open()?;
        let durable = self.durable();
        let mut wanted: Vec<i64> = seqs
            .iter()
            .filter(|&&seq| seq > 0 && seq <= durable)
            .map(|&seq| seq_to_bson(seq))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        self.events_with_seqs(&wanted).await
    }

    async fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.check_open()?;
        if seq == 0 || seq > self.durable() {
            return Ok(None);
        }
        let doc = self
            .collection(queries::EVENTS)
            .find_one(doc! { "_id": seq_to_bson(seq) })
            .await
            .map_err(backend)?;
        doc.as_ref().map(event_from_document).transpose()
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.check_open()?;
        Ok(self.durable())
    }

    async fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        self.check_open()?;
        let durable = self.durable();
        if durable == 0 {
            return Ok(None);
        }
        let doc = self
            .collection(queries::EVENTS)
            .find_one(doc! { "_id": { "$lte": seq_to_bson(durable) } })
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(backend)?;
        doc.map(|d| int_field(&d, "_id", "an event").map(from_bson_int))
            .transpose()
    }

    async fn latest_by_key_page(
        &self,
        pattern: &Pattern,
        after: Option<&LatestCursor>,
        limits: PageLimits,
    ) -> Result<LatestPage, StoreError> {
        self.check_open()?;
        let durable = seq_to_bson(self.durable());
        // The `_id` range holding the topics that can match.
        let (low, high, filter) = if let Some(topic) = pattern.as_topic() {
            let (low, high) = topic_key_range(topic.as_str());
            (Some(low), Some(high), false)
        } else if let Some(prefix) = literal_prefix(pattern) {
            // The prefix itself and every topic below it; others in that
            // range (`a-b` for `a`) are filtered out.
            (
                Some(format!("{prefix}\0")),
                Some(format!("{prefix}/")),
                true,
            )
        } else {
            (None, None, true)
        };
        let after_id = after.map(|a| latest_id(&a.topic, &a.key));
        let start = match (&after_id, &low) {
            (Some(after), _) => Some((after.as_str(), true)),
            (None, Some(low)) => Some((low.as_str(), false)),
            (None, None) => None,
        };
        let scan = limits.scan.max(1);
        let query = queries::latest_page(
            start,
            high.as_deref(),
            i64::try_from(scan).unwrap_or(i64::MAX),
        );
        let entries = self
            .find_all(query, |doc: &Document| {
                let id = str_field(doc, "_id", "a latest-by-key entry")?;
                let (topic, key) = id.split_once('\0').ok_or_else(|| {
                    StoreError::Corrupt(format!("latest-by-key entry {id:?} has no key"))
                })?;
                let seq = int_field(doc, "seq", "a latest-by-key entry")?;
                Ok((topic.to_owned(), key.to_owned(), seq))
            })
            .await?;
        let mut topic_filter = TopicFilter::new(pattern);
        // A key whose newest event is not fully written yet is left out;
        // that event reaches live subscribers once it is.
        let wanted: Vec<(usize, i64)> = entries
            .iter()
            .enumerate()
            .filter(|(_, (topic, _, seq))| {
                *seq <= durable && (!filter || topic_filter.matches(topic))
            })
            .map(|(i, (_, _, seq))| (i, *seq))
            .collect();
        let cursor = |i: usize| {
            let (topic, key, _) = &entries[i];
            LatestCursor {
                topic: topic.clone(),
                key: key.clone(),
            }
        };
        // Events are read a few at a time so a page of large events stops
        // near its byte bound instead of reading them all.
        let mut page = LatestPage::default();
        let mut bytes = 0;
        for chunk in wanted.chunks(LATEST_PAGE_CHUNK) {
            let seqs: Vec<i64> = chunk.iter().map(|&(_, seq)| seq).collect();
            let mut by_seq: HashMap<u64, Event> = self
                .events_with_seqs(&seqs)
                .await?
                .into_iter()
                .map(|e| (e.seq, e))
                .collect();
            for &(i, seq) in chunk {
                // Gone since the entry was read (retention): skip it.
                let Some(event) = by_seq.remove(&from_bson_int(seq)) else {
                    continue;
                };
                bytes += event.payload.get().len();
                page.events.push(event);
                if page.events.len() >= limits.keys || bytes >= limits.bytes {
                    page.next = Some(cursor(i));
                    return Ok(page);
                }
            }
        }
        if entries.len() >= scan {
            page.next = Some(cursor(entries.len() - 1));
        }
        Ok(page)
    }

    async fn latest_for_key(&self, topic: &Topic, key: &str) -> Result<Option<Event>, StoreError> {
        self.check_open()?;
        let query = queries::latest_entry(&latest_id(topic.as_str(), key));
        let Some(entry) = self
            .collection(query.collection)
            .find_one(query.filter)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let seq = from_bson_int(int_field(&entry, "seq", "a latest-by-key entry")?);
        self.get(seq).await
    }

    async fn load_group(&self, key: &GroupKey) -> Result<Option<GroupRecord>, StoreError> {
        self.check_open()?;
        let query = queries::group(&group_id(key));
        let doc = self
            .collection(query.collection)
            .find_one(query.filter)
            .await
            .map_err(backend)?;
        doc.map(|doc| group_record(key.clone(), &doc)).transpose()
    }

    async fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.check_open()?;
        let mut records = self
            .find_all(queries::all(queries::GROUPS), |doc| {
                let key = GroupKey {
                    pattern: str_field(doc, "pattern", "a group")?.to_owned(),
                    group: str_field(doc, "group", "a group")?.to_owned(),
                };
                group_record(key, doc)
            })
            .await?;
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(records)
    }

    async fn groups_page(
        &self,
        after: Option<&GroupKey>,
        limit: usize,
    ) -> Result<Vec<GroupRecord>, StoreError> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.find_all(queries::groups_after(after, limit), |doc| {
            let key = GroupKey {
                pattern: str_field(doc, "pattern", "a group")?.to_owned(),
                group: str_field(doc, "group", "a group")?.to_owned(),
            };
            group_record(key, doc)
        })
        .await
    }

    async fn group_count(&self) -> Result<u64, StoreError> {
        self.check_open()?;
        self.collection(queries::GROUPS)
            .count_documents(doc! {})
            .await
            .map_err(backend)
    }

    async fn dead_letters(
        &self,
        key: &GroupKey,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let query = queries::dead_letters_after(
            &group_id(key),
            seq_to_bson(after_seq),
            i64::try_from(limit).unwrap_or(i64::MAX),
        );
        self.find_all(query, |doc| dead_letter_from_document(key, doc))
            .await
    }

    async fn dead_letter_count(&self, key: &GroupKey) -> Result<u64, StoreError> {
        self.check_open()?;
        self.collection(queries::DEAD_LETTERS)
            .count_documents(doc! { "gid": group_id(key) })
            .await
            .map_err(backend)
    }

    async fn count_after(&self, after: u64) -> Result<u64, StoreError> {
        self.check_open()?;
        let durable = self.durable();
        if after >= durable {
            return Ok(0);
        }
        self.collection(queries::EVENTS)
            .count_documents(
                doc! { "_id": { "$gt": seq_to_bson(after), "$lte": seq_to_bson(durable) } },
            )
            .await
            .map_err(backend)
    }

    async fn removed_since(&self, pattern: &Pattern, from: u64) -> Result<Option<u64>, StoreError> {
        self.check_open()?;
        let filter = doc! { "removed_upto": { "$gte": seq_to_bson(from) } };
        let removed = self
            .matching_topic_entries(pattern, filter, |doc| {
                int_field(doc, "removed_upto", "a topic entry")
            })
            .await?;
        Ok(removed
            .into_iter()
            .map(|(_, removed)| from_bson_int(removed))
            .max())
    }

    async fn count_matching_after(&self, pattern: &Pattern, after: u64) -> Result<u64, StoreError> {
        self.check_open()?;
        let durable = self.durable();
        if after >= durable {
            return Ok(0);
        }
        let (after, durable) = (seq_to_bson(after), seq_to_bson(durable));
        let mut total = 0;
        // One index-range count per topic on `topic_seq`.
        for topic in self.topics_matching(pattern, after).await? {
            total += self
                .collection(queries::EVENTS)
                .count_documents(doc! { "topic": topic, "_id": { "$gt": after, "$lte": durable } })
                .await
                .map_err(backend)?;
        }
        Ok(total)
    }

    async fn first_matching_after(
        &self,
        pattern: &Pattern,
        after: u64,
    ) -> Result<Option<Event>, StoreError> {
        self.check_open()?;
        let durable = self.durable();
        if after >= durable {
            return Ok(None);
        }
        let (after_bson, durable_bson) = (seq_to_bson(after), seq_to_bson(durable));
        let mut first: Option<i64> = None;
        for topic in self.topics_matching(pattern, after_bson).await? {
            let query = queries::topic_events_after(&topic, after_bson, durable_bson, 1);
            let found = self
                .collection(query.collection)
                .find_one(query.filter)
                .sort(doc! { "_id": 1 })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(backend)?;
            if let Some(doc) = found {
                let seq = int_field(&doc, "_id", "an event")?;
                first = Some(first.map_or(seq, |f| f.min(seq)));
            }
        }
        match first {
            Some(seq) => self.get(from_bson_int(seq)).await,
            None => Ok(None),
        }
    }

    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now: Millis,
        from: Option<&str>,
        limit: usize,
    ) -> Result<RetentionPass, StoreError> {
        self.check_open()?;
        if policy.keeps_everything() || limit == 0 {
            return Ok(RetentionPass::default());
        }
        // One more than the budget: the extra one is where the next call
        // starts.
        let mut topics = self
            .find_all(
                Query {
                    collection: queries::TOPICS,
                    filter: doc! { "_id": { "$gte": from.unwrap_or("") } },
                    sort: Some(doc! { "_id": 1 }),
                    limit: Some(RETENTION_TOPICS_PER_CALL as i64 + 1),
                    index: queries::ID_INDEX,
                },
                |doc| Ok(str_field(doc, "_id", "a topic entry")?.to_owned()),
            )
            .await?;
        let mut next = (topics.len() > RETENTION_TOPICS_PER_CALL)
            .then(|| topics.pop())
            .flatten();
        let mut removed = 0u64;
        for name in topics {
            let room = (limit as u64).saturating_sub(removed);
            if room == 0 {
                next = Some(name);
                break;
            }
            let Ok(topic) = Topic::parse(&name) else {
                continue;
            };
            let limits = policy.limits_for(&topic);
            if limits.keeps_everything() {
                continue;
            }
            let count = self.retain_topic(&name, limits, now, room).await?;
            removed += count;
            if count == room {
                // Cut short: the topic may have more to remove.
                next = Some(name);
                break;
            }
        }
        Ok(RetentionPass { removed, next })
    }

    async fn count_present(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        self.check_open()?;
        let durable = self.durable();
        let mut present = 0;
        for chunk in seqs.chunks(IN_CHUNK) {
            let ids: Vec<i64> = chunk
                .iter()
                .filter(|&&seq| seq <= durable)
                .map(|&seq| seq_to_bson(seq))
                .collect();
            if ids.is_empty() {
                continue;
            }
            present += self
                .collection(queries::EVENTS)
                .count_documents(doc! { "_id": { "$in": ids } })
                .await
                .map_err(backend)?;
        }
        Ok(present)
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Waits for a commit in progress to finish.
        let state = self.inner.writer.lock().await;
        // Recording how far side effects are complete saves the next start
        // from re-applying the last batch; losing it costs only that.
        let recorded = self
            .collection(queries::META)
            .update_one(
                doc! { "_id": queries::SEQ_COUNTER },
                doc! { "$max": { "applied": seq_to_bson(state.applied) } },
            )
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the applied seq while closing");
        }
        drop(state);
        self.inner.client.clone().shutdown().immediate(true).await;
        Ok(())
    }
}

fn group_record(key: GroupKey, doc: &Document) -> Result<GroupRecord, StoreError> {
    let cursor = from_bson_int(int_field(doc, "cursor", "a group")?);
    let mut done_above: Vec<u64> = int_list(doc, "done", "a group")?
        .into_iter()
        .map(from_bson_int)
        .filter(|&seq| seq > cursor)
        .collect();
    done_above.sort_unstable();
    done_above.dedup();
    let mut attempts_above = attempt_map(doc, "attempts", "a group")?
        .into_iter()
        .filter(|&(seq, _)| seq > cursor)
        .collect::<Vec<_>>();
    attempts_above.sort_unstable();
    Ok(GroupRecord {
        key,
        cursor,
        done_above,
        attempts_above,
    })
}
