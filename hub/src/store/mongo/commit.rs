//! Committing a batch: the writes of each step, in the order the module
//! docs give (reserve the seqs, events, side effects, groups, then the
//! durable mark).

use super::*;

impl MongoStore {
    /// Applies one batch (see the module docs for the order of writes).
    pub(super) async fn apply(
        &self,
        state: &mut WriterState,
        batch: CommitBatch,
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
        let (known, expired) = self.stored_ids(&lookup, window_start).await?;

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
            self.reserve(state, new_count as u64).await?
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
        let last_seq = if new_count > 0 {
            seq_of(new_count - 1)
        } else {
            0
        };

        self.apply_group_changes(
            &batch.progress,
            &batch.dead_letters,
            &batch.removed_dead_letters,
        )
        .await?;
        self.prune_dedup(state, now).await?;
        state.applied = state.applied.max(last_seq);
        inner.durable_seq.fetch_max(last_seq, Ordering::AcqRel);
        Ok(CommitOutcome {
            events: outcome,
            stored,
        })
    }

    /// Reserves `count` seqs; returns the first. Also records `applied`.
    pub(super) async fn reserve(&self, state: &WriterState, count: u64) -> Result<u64, StoreError> {
        let counter = self
            .collection(queries::META)
            .find_one_and_update(
                doc! { "_id": queries::SEQ_COUNTER },
                doc! {
                    "$inc": { "value": seq_to_bson(count) },
                    "$max": { "applied": seq_to_bson(state.applied) },
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(backend)?
            .ok_or_else(|| StoreError::Backend("the seq counter update returned nothing".into()))?;
        let last = from_bson_int(int_field(&counter, "value", "the seq counter")?);
        let first = last.wrapping_sub(count).wrapping_add(1);
        // Another writer, or a counter reset behind our back, would break
        // the order every reader relies on: refuse rather than reuse seqs.
        if last < count || first <= self.durable() || last > i64::MAX as u64 {
            return Err(StoreError::Corrupt(format!(
                "the seq counter ({last}) is not above the stored events ({}); is another hub \
                 writing to this database?",
                self.durable()
            )));
        }
        Ok(first)
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
                let mut set =
                    doc! { "cursor": cursor, "pattern": &p.key.pattern, "group": &p.key.group };
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
                let mut update = doc! { "$set": set, "$pull": { "done": { "$lte": cursor } } };
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
