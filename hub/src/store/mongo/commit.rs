//! Committing a batch: the writes of each step, in the order the module
//! docs give (reserve the seqs, events, side effects, groups, then the
//! durable mark).

use super::*;

impl MongoStore {
    /// Applies one batch (see the module docs for the order of writes),
    /// then closes the seq range it reserved, also when it failed part-way
    /// (its seqs then are given up at once instead of after the lease).
    pub(super) async fn apply(
        &self,
        state: &mut WriterState,
        batch: CommitBatch,
    ) -> Result<CommitOutcome, StoreError> {
        let mut range = None;
        let result = self.apply_in_range(state, batch, &mut range).await;
        if let Some((low, high)) = range {
            match self.release(state, low, high).await {
                Ok(horizon) => {
                    if let Ok(outcome) = &result {
                        let last = outcome.stored.last().map_or(0, |e| e.seq);
                        state.applied = state.applied.max(last.min(horizon));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, low, high, "MongoDB store: cannot close a seq range; other hubs give it up after its lease");
                    state.chain_head = None;
                    // The batch is durable all the same; the horizon moves
                    // once the range lapses.
                    if result.is_ok() {
                        return result;
                    }
                }
            }
        }
        result
    }

    async fn apply_in_range(
        &self,
        state: &mut WriterState,
        batch: CommitBatch,
        range: &mut Option<(u64, u64)>,
    ) -> Result<CommitOutcome, StoreError> {
        let inner = &self.inner;
        let now_ms = now_millis();
        let now = DateTime::from_millis(now_ms);
        let window = duration_millis(inner.options.dedup_window);
        let window_start = now_ms.saturating_sub(window);

        // Which (topic, publisher id)s were stored within the window.
        let dedup_keys: Vec<Option<String>> = batch
            .events
            .iter()
            .map(|e| e.client_id.then(|| dedup_id(e.topic.as_str(), &e.id)))
            .collect();
        let lookup: Vec<&str> = {
            let mut seen = HashSet::new();
            dedup_keys
                .iter()
                .flatten()
                .map(String::as_str)
                .filter(|key| seen.insert(*key))
                .collect()
        };
        let (mut known, expired) = self.stored_ids(&lookup, window_start).await?;
        // Ids without an entry may still have a copy in a batch that never
        // finished (its hub died between the events and their entries):
        // that copy counts, and gets its entry now.
        let unknown: Vec<(&str, &str)> = {
            let mut seen = HashSet::new();
            batch
                .events
                .iter()
                .zip(&dedup_keys)
                .filter_map(|(event, key)| {
                    let key = key.as_deref()?;
                    (!known.contains_key(key) && seen.insert(key))
                        .then(|| (event.topic.as_str(), event.id.as_str()))
                })
                .collect()
        };
        let copies = self.unfinished_copies(&unknown).await?;
        if !copies.is_empty() {
            let repairs: Vec<Document> = unknown
                .iter()
                .filter_map(|&(topic, id)| {
                    let key = dedup_id(topic, id);
                    let seq = *copies.get(&key)?;
                    Some(dedup_update(&key, topic, seq_to_bson(seq), now, window))
                })
                .collect();
            tracing::info!(
                copies = repairs.len(),
                "publishes sent again found in a batch that never finished; their de-duplication entries written"
            );
            writes::run(
                &inner.db,
                &inner.write_concern,
                Kind::Update,
                queries::DEDUP,
                repairs,
            )
            .await?;
            known.extend(copies);
        }

        // Decide each event's fate before reserving seqs for the new ones.
        enum Fate {
            /// Stored by an earlier batch with this seq.
            Known(String, u64),
            /// A copy of the `n`-th new event of this batch.
            SameAs(String, usize),
            /// New, with its de-duplication key if it has a publisher id.
            New(NewEvent, Option<String>),
        }
        let mut fates = Vec::with_capacity(batch.events.len());
        let mut in_batch: HashMap<String, usize> = HashMap::new();
        let mut new_count = 0usize;
        for (event, key) in batch.events.into_iter().zip(dedup_keys) {
            if let Some(key) = &key {
                if let Some(&seq) = known.get(key) {
                    fates.push(Fate::Known(event.id, seq));
                    continue;
                }
                if let Some(&index) = in_batch.get(key) {
                    fates.push(Fate::SameAs(event.id, index));
                    continue;
                }
                in_batch.insert(key.clone(), new_count);
            }
            new_count += 1;
            fates.push(Fate::New(event, key));
        }

        let first = if new_count > 0 {
            let first = self.reserve(state, new_count as u64).await?;
            *range = Some((first, first + new_count as u64 - 1));
            first
        } else {
            0
        };
        let seq_of = |index: usize| first + index as u64;
        if new_count > 0 {
            let mut docs = Vec::with_capacity(new_count);
            // New publisher ids are inserted (one command; the unique `_id`
            // refuses an id some other writer stored meanwhile), expired
            // ones replaced.
            let mut dedup_inserts = Vec::new();
            let mut dedup_replaces = Vec::new();
            // Per (topic, key) only the newest event of the batch counts.
            let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
            let mut topics: HashMap<&str, i64> = HashMap::new();
            let new_events = fates.iter().filter_map(|fate| match fate {
                Fate::New(event, key) => Some((event, key)),
                _ => None,
            });
            for (index, (event, dedup_key)) in new_events.enumerate() {
                let seq = seq_of(index);
                docs.push(event_document(seq, event, now));
                let seq = seq_to_bson(seq);
                if let Some(dedup_key) = dedup_key {
                    let topic = event.topic.as_str();
                    if expired.contains(dedup_key) {
                        // An upsert: expiry may delete it meanwhile.
                        dedup_replaces.push(dedup_update(dedup_key, topic, seq, now, window));
                    } else {
                        let mut entry = dedup_entry(topic, seq, now, window);
                        entry.insert("_id", dedup_key);
                        dedup_inserts.push(entry);
                    }
                }
                if let Some(key) = &event.key {
                    latest.insert((event.topic.as_str(), key.as_str()), seq);
                }
                topics.insert(event.topic.as_str(), seq);
            }
            self.collection(queries::EVENTS)
                .insert_many(docs)
                .ordered(true)
                .await
                .map_err(backend)?;
            let latest: Vec<Document> = latest
                .into_iter()
                .map(|((topic, key), seq)| latest_update(topic, key, seq))
                .collect();
            let dedup_written = async {
                if !dedup_inserts.is_empty() {
                    self.collection(queries::DEDUP)
                        .insert_many(dedup_inserts)
                        .ordered(true)
                        .await
                        .map_err(backend)?;
                }
                writes::run(
                    &inner.db,
                    &inner.write_concern,
                    Kind::Update,
                    queries::DEDUP,
                    dedup_replaces,
                )
                .await
            };
            let topics: Vec<Document> = topics
                .into_iter()
                .map(|(topic, seq)| topic_update(topic, seq))
                .collect();
            let (dedup_written, latest_written, topics_written) = tokio::join!(
                dedup_written,
                writes::run(
                    &inner.db,
                    &inner.write_concern,
                    Kind::Update,
                    queries::LATEST,
                    latest,
                ),
                writes::run(
                    &inner.db,
                    &inner.write_concern,
                    Kind::Update,
                    queries::TOPICS,
                    topics,
                ),
            );
            dedup_written?;
            latest_written?;
            topics_written?;
        }
        let mut outcome = Vec::with_capacity(fates.len());
        let mut stored = Vec::with_capacity(new_count);
        let mut new_index = 0usize;
        for fate in fates {
            outcome.push(match fate {
                Fate::Known(id, seq) => Appended::Duplicate { id, seq },
                Fate::SameAs(id, index) => Appended::Duplicate {
                    id,
                    seq: seq_of(index),
                },
                Fate::New(event, _) => {
                    let seq = seq_of(new_index);
                    new_index += 1;
                    let id = event.id.clone();
                    stored.push(event.into_stored(seq));
                    Appended::Stored { id, seq }
                }
            });
        }

        self.apply_group_changes(
            &batch.progress,
            &batch.dead_letters,
            &batch.removed_dead_letters,
        )
        .await?;
        self.prune_dedup(state, now).await?;
        Ok(CommitOutcome {
            events: outcome,
            stored,
        })
    }

    /// Reserves `count` seqs: inserts the range `{_id: low, high, writer,
    /// expires, done: false}` into `seq_ranges`, `low` = the newest range's
    /// `high` + 1. The unique `_id` makes two hubs that read the same newest
    /// range collide, and the loser reads again: an insert is atomic on
    /// every server, whereas FerretDB 1.x runs `findAndModify` as a read
    /// then a write (concurrent `$inc`s hand out the same value). Returns
    /// the first seq.
    pub(super) async fn reserve(
        &self,
        state: &mut WriterState,
        count: u64,
    ) -> Result<u64, StoreError> {
        let ranges = self.collection(queries::SEQ_RANGES);
        let lease = duration_millis(self.inner.options.range_lease);
        for _ in 0..RESERVE_ATTEMPTS {
            let cached = state.chain_head.is_some();
            // The horizon as it was before the chain is read: it came from
            // ranges that are there already, so a chain head below it means
            // a reset. (Read after, it may include a range another hub
            // reserved and released since: not a reset, just a race.)
            let durable = self.durable();
            let head = match state.chain_head.take() {
                Some(head) => head,
                None => self.chain_head().await?,
            };
            let first = head.wrapping_add(1);
            let last = head.wrapping_add(count);
            // A reset behind our back would break the order every reader
            // relies on: refuse rather than reuse seqs.
            if first <= durable || last > i64::MAX as u64 {
                if cached {
                    // Other hubs reserved since: read the chain again.
                    continue;
                }
                return Err(StoreError::Corrupt(format!(
                    "the seq counter ({head}) is not above the stored events ({durable}); was \
                     it reset behind the hub's back?"
                )));
            }
            let now = now_millis();
            let range = doc! {
                "_id": seq_to_bson(first),
                "high": seq_to_bson(last),
                "writer": &self.inner.writer_id,
                "expires": DateTime::from_millis(now.saturating_add(lease)),
                "done": false,
            };
            match ranges.insert_one(range).await {
                Ok(_) => {
                    state.chain_head = Some(last);
                    return Ok(first);
                }
                // Another hub took this place in the chain.
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Err(StoreError::Backend(format!(
            "could not reserve seqs: other hubs won {RESERVE_ATTEMPTS} attempts in a row"
        )))
    }

    /// The last seq handed out: the newest range's `high`, or the counter
    /// document's `value` when that is higher (a database of an older hub,
    /// or a repair that found events above the ranges).
    async fn chain_head(&self) -> Result<u64, StoreError> {
        let newest = self
            .collection(queries::SEQ_RANGES)
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .await
            .map_err(backend)?;
        let newest = match &newest {
            Some(range) => from_bson_int(int_field(range, "high", "a seq range")?),
            None => 0,
        };
        let counter = self
            .collection(queries::META)
            .find_one(doc! { "_id": queries::SEQ_COUNTER })
            .await
            .map_err(backend)?;
        let value = match &counter {
            Some(doc) => from_bson_int(int_field(doc, "value", "the seq counter")?),
            None => 0,
        };
        Ok(newest.max(value))
    }

    /// Marks this store's range `low..=high` done (its batch is written or
    /// given up), records `value` and `applied` on the counter document
    /// (lower bounds only) and raises `durable_seq` to the horizon; returns
    /// it.
    pub(super) async fn release(
        &self,
        state: &mut WriterState,
        low: u64,
        high: u64,
    ) -> Result<u64, StoreError> {
        let ranges = self.collection(queries::SEQ_RANGES);
        ranges
            .update_one(
                doc! { "_id": seq_to_bson(low) },
                doc! { "$set": { "done": true } },
            )
            .await
            .map_err(backend)?;
        // Hubs releasing their first ranges at once can both insert the
        // missing counter document (see `writes::upsert_one`).
        writes::upsert_one(
            &self.collection(queries::META),
            doc! { "_id": queries::SEQ_COUNTER },
            doc! { "$max": { "value": seq_to_bson(high), "applied": seq_to_bson(state.applied) } },
        )
        .await?;
        state.releases += 1;
        if state.releases.is_multiple_of(PRUNE_RANGES_EVERY) {
            // Finished (or long lapsed) ranges below this one; the newest
            // range, the head of the chain, is never below it.
            let lapsed = now_millis()
                .saturating_sub(duration_millis(self.inner.options.range_lease).saturating_mul(10));
            ranges
                .delete_many(doc! {
                    "_id": { "$lt": seq_to_bson(low) },
                    "$or": [ { "done": true }, { "expires": { "$lt": DateTime::from_millis(lapsed) } } ],
                })
                .await
                .map_err(backend)?;
        }
        self.refresh_horizon().await
    }

    /// The visibility horizon now: the lowest `_id` of the ranges neither
    /// done nor lapsed − 1, else the chain's head.
    pub(super) async fn horizon(&self) -> Result<u64, StoreError> {
        // The head first: every range at or below it was inserted before
        // the query for open ranges starts, so that query sees it.
        let head = self.chain_head().await?;
        let now = DateTime::from_millis(now_millis());
        let oldest_open = self
            .collection(queries::SEQ_RANGES)
            .find_one(doc! { "done": false, "expires": { "$gt": now } })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(backend)?;
        Ok(match &oldest_open {
            Some(range) => {
                let low = from_bson_int(int_field(range, "_id", "a seq range")?);
                low.saturating_sub(1).min(head)
            }
            None => head,
        })
    }

    /// Raises `durable_seq` to the horizon (other hubs' commits, ranges
    /// that lapsed); returns the horizon this store now reads up to.
    pub async fn refresh_horizon(&self) -> Result<u64, StoreError> {
        self.check_open()?;
        let horizon = self.horizon().await?;
        self.inner.durable_seq.fetch_max(horizon, Ordering::AcqRel);
        Ok(self.durable())
    }

    pub(super) async fn apply_group_changes(
        &self,
        progress: &[GroupProgress],
        dead_letters: &[DeadLetter],
        removed: &[crate::store::DeadLetterRef],
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let run = |kind, collection, statements| {
            writes::run(
                &inner.db,
                &inner.write_concern,
                kind,
                collection,
                statements,
            )
        };
        if !dead_letters.is_empty() {
            let puts = dead_letters
                .iter()
                .map(|letter| {
                    let doc = dead_letter_document(letter);
                    writes::update(
                        doc! { "_id": doc.get("_id").cloned().unwrap_or(Bson::Null) },
                        doc,
                        true,
                    )
                })
                .collect();
            run(Kind::Update, queries::DEAD_LETTERS, puts).await?;
        }
        if !progress.is_empty() {
            let mut statements = Vec::with_capacity(progress.len() * 2);
            for p in progress {
                let gid = group_id(&p.key);
                let cursor = seq_to_bson(p.cursor);
                let mut set = doc! { "pattern": &p.key.pattern, "group": &p.key.group };
                // `attempts` maps a seq (as a string key) to the attempts
                // used; entries at or below the cursor are ignored when
                // loading.
                let mut unset = Document::new();
                // The last change of each seq (a path can be set or unset,
                // not both, in one update).
                let changes: BTreeMap<u64, u32> = p.attempt_changes.iter().copied().collect();
                for (seq, attempts) in changes {
                    let field = format!("attempts.{seq}");
                    if attempts == 0 {
                        unset.insert(field, "");
                    } else {
                        set.insert(field, i64::from(attempts));
                    }
                }
                // `$max`: with several hubs, one that has not learned yet
                // of the others' progress never moves the cursor back.
                let mut update = doc! {
                    "$set": set,
                    "$max": { "cursor": cursor },
                    "$pull": { "done": { "$lte": cursor } },
                };
                if !unset.is_empty() {
                    update.insert("$unset", unset);
                }
                statements.push(writes::update(doc! { "_id": &gid }, update, true));
                let marks: Vec<i64> = p
                    .done_above
                    .iter()
                    .map(|&seq| seq_to_bson(seq))
                    .filter(|&seq| seq > cursor)
                    .collect();
                if !marks.is_empty() {
                    statements.push(writes::update(
                        doc! { "_id": &gid },
                        doc! { "$addToSet": { "done": { "$each": marks } } },
                        false,
                    ));
                }
            }
            run(Kind::Update, queries::GROUPS, statements).await?;
        }
        if !removed.is_empty() {
            let deletes = removed
                .iter()
                .map(|r| writes::delete(doc! { "_id": dead_letter_id(&r.key, r.seq) }))
                .collect();
            run(Kind::Delete, queries::DEAD_LETTERS, deletes).await?;
        }
        Ok(())
    }
}

/// Records that `topic` has an event at `seq` (`$max`: replaying is harmless).
pub(super) fn topic_update(topic: &str, seq: i64) -> Document {
    writes::update(
        doc! { "_id": topic },
        doc! { "$max": { "last": seq } },
        true,
    )
}

/// Upserts a latest-by-key entry unless it already points at a newer event.
pub(super) fn latest_update(topic: &str, key: &str, seq: i64) -> Document {
    writes::update(
        doc! { "_id": latest_id(topic, key) },
        doc! {
            "$max": { "seq": seq },
            "$setOnInsert": { "topic": topic, "key": key },
        },
        true,
    )
}

/// Reservation attempts before a commit fails (each lost only to another
/// hub's reservation, so reaching it means heavy contention).
const RESERVE_ATTEMPTS: usize = 1000;
/// Error code of a duplicate `_id`.
const DUPLICATE_KEY: i32 = 11000;
/// Finished ranges are deleted every this many releases.
const PRUNE_RANGES_EVERY: u64 = 64;

pub(super) fn is_duplicate_key(error: &MongoError) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}
