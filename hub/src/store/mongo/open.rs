//! Opening the store: connecting, the indexes, and repairing what a crash
//! left half-written.

use super::*;

impl MongoStore {
    /// Connects with default options; see [`MongoStore::connect_with`].
    pub async fn connect(uri: &str) -> Result<MongoStore, StoreError> {
        Self::connect_with(uri, MongoOptions::default()).await
    }

    /// Connects to the database named in `uri` (`mongodb://HOST:PORT/DB`),
    /// checks that the server answers, creates the indexes and repairs what
    /// a crash may have left half-written.
    pub async fn connect_with(uri: &str, options: MongoOptions) -> Result<MongoStore, StoreError> {
        let mut client_options = ClientOptions::parse(uri).await.map_err(|e| {
            StoreError::Backend(format!("invalid MongoDB URI {}: {e}", redacted(uri)))
        })?;
        let db_name = client_options
            .default_database
            .clone()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                StoreError::Backend(format!(
                    "the MongoDB URI {} names no database (mongodb://HOST:PORT/DB)",
                    redacted(uri)
                ))
            })?;
        client_options
            .app_name
            .get_or_insert_with(|| "promhub".to_owned());
        // The URI's `serverSelectionTimeoutMS` wins.
        client_options
            .server_selection_timeout
            .get_or_insert(options.server_selection_timeout);
        // PUBACK follows the write concern's acknowledgement of every
        // write of a batch: the URI's (`w`, `journal`, `wtimeoutMS`) if it
        // sets one, else a majority of the replica set with it in their
        // journals, so a PUBACK survives a crash or a failover.
        let write_concern = write_concern_of(client_options.write_concern.take())?;
        client_options.write_concern = Some(write_concern.clone());
        let uri_read_concern = client_options.read_concern.is_some();
        let client = Client::with_options(client_options).map_err(backend)?;
        let db = client.database(&db_name);
        let hello = db.run_command(doc! { "hello": 1 }).await.map_err(|e| {
            StoreError::Backend(format!("cannot reach MongoDB at {}: {e}", redacted(uri)))
        })?;
        // On a replica set every read is of majority-committed data (unless
        // the URI says otherwise), so no hub delivers an event that a
        // failover could roll back. A standalone server (FerretDB) has
        // nothing else to read.
        let replica_set = hello.get_str("setName").is_ok();
        let db = if replica_set && !uri_read_concern {
            client.database_with_options(
                &db_name,
                mongodb::options::DatabaseOptions::builder()
                    .read_concern(mongodb::options::ReadConcern::majority())
                    .build(),
            )
        } else {
            db
        };
        tracing::info!(
            replica_set,
            write_concern = %write_concern_document(&write_concern),
            "MongoDB connected"
        );
        let store = MongoStore {
            inner: Arc::new(Inner {
                client,
                db,
                write_concern: write_concern_document(&write_concern),
                options,
                dedup_ttl: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                durable_seq: AtomicU64::new(0),
                writer_id: crate::cluster::new_hub_id(),
                writer: Mutex::new(WriterState {
                    applied: 0,
                    needs_repair: true,
                    last_prune: None,
                    chain_head: None,
                    releases: 0,
                }),
            }),
        };
        store.ensure_indexes().await?;
        {
            let mut state = store.inner.writer.lock().await;
            store.migrate_dedup().await?;
            store.repair(&mut state).await?;
            store.fill_topics().await?;
        }
        tracing::info!(
            database = %db_name,
            last_seq = store.inner.durable_seq.load(Ordering::Acquire),
            dedup_ttl = store.inner.dedup_ttl.load(Ordering::Acquire),
            "MongoDB store opened"
        );
        Ok(store)
    }

    /// Creates every index the store's queries need (idempotent). On a
    /// server without TTL indexes (FerretDB) the de-duplication expiry index
    /// is a plain one and the writer deletes expired entries itself.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        for (collection, index) in queries::secondary_indexes() {
            self.collection(collection)
                .create_index(index)
                .await
                .map_err(|e| {
                    StoreError::Backend(format!("cannot create an index on {collection}: {e}"))
                })?;
        }
        let dedup = self.collection(queries::DEDUP);
        let ttl = IndexModel::builder()
            .keys(doc! { "expire_at": 1 })
            .options(
                IndexOptions::builder()
                    .name(queries::DEDUP_EXPIRY_INDEX.to_owned())
                    // Each entry carries its own expiry time.
                    .expire_after(Duration::ZERO)
                    .build(),
            )
            .build();
        let ttl = match dedup.create_index(ttl).await {
            Ok(_) => true,
            Err(e) if error_code(&e) == Some(NOT_IMPLEMENTED) => {
                tracing::warn!(
                    "the MongoDB server has no TTL indexes; the hub deletes expired \
                     de-duplication entries itself"
                );
                let plain = IndexModel::builder()
                    .keys(doc! { "expire_at": 1 })
                    .options(
                        IndexOptions::builder()
                            .name(queries::DEDUP_EXPIRY_PLAIN_INDEX.to_owned())
                            .build(),
                    )
                    .build();
                dedup.create_index(plain).await.map_err(backend)?;
                false
            }
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "cannot create the de-duplication expiry index: {e}"
                )));
            }
        };
        self.inner.dedup_ttl.store(ttl, Ordering::Release);
        Ok(())
    }

    /// Re-writes the side effects (de-duplication, latest-by-key) of every
    /// event above `applied`, whose batch may have been cut short, and
    /// brings the counter and `durable_seq` up to the stored events.
    pub(super) async fn repair(&self, state: &mut WriterState) -> Result<(), StoreError> {
        let meta = self
            .collection(queries::META)
            .find_one(doc! { "_id": queries::SEQ_COUNTER })
            .await
            .map_err(backend)?;
        let (counter, stored_applied) = match &meta {
            Some(doc) => (
                from_bson_int(int_field(doc, "value", "the seq counter")?),
                match doc.get("applied") {
                    None => 0,
                    Some(_) => from_bson_int(int_field(doc, "applied", "the seq counter")?),
                },
            ),
            None => (0, 0),
        };
        let from = state.applied.max(stored_applied);
        let mut cursor = self
            .collection(queries::EVENTS)
            .find(doc! { "_id": { "$gt": seq_to_bson(from) } })
            .sort(doc! { "_id": 1 })
            .projection(doc! { "id": 1, "cid": 1, "topic": 1, "key": 1, "at": 1 })
            .await
            .map_err(backend)?;
        // The newest stored copy of each (topic, publisher id).
        let mut dedup: HashMap<String, dedup::Entry> = HashMap::new();
        let mut latest = Vec::new();
        let mut topics: HashMap<String, i64> = HashMap::new();
        let mut highest = from;
        let mut repaired = 0u64;
        while let Some(doc) = cursor.try_next().await.map_err(backend)? {
            let seq = int_field(&doc, "_id", "an event")?;
            let what = format!("event {seq}");
            highest = highest.max(from_bson_int(seq));
            repaired += 1;
            let topic = str_field(&doc, "topic", &what)?;
            if doc.get_bool("cid").unwrap_or(false) {
                let stored_at = doc
                    .get_datetime("at")
                    .copied()
                    .unwrap_or_else(|_| DateTime::now());
                let entry = dedup::Entry {
                    topic: topic.to_owned(),
                    id: str_field(&doc, "id", &what)?.to_owned(),
                    seq,
                    stored_at,
                };
                dedup.insert(entry.key(), entry);
            }
            if let Ok(key) = doc.get_str("key") {
                latest.push(latest_update(topic, key, seq));
            }
            let newest = topics.entry(topic.to_owned()).or_insert(seq);
            *newest = (*newest).max(seq);
        }
        self.restore_dedup(dedup.into_values().collect()).await?;
        let inner = &self.inner;
        writes::run(
            &inner.db,
            &inner.write_concern,
            Kind::Update,
            queries::LATEST,
            latest,
        )
        .await?;
        self.record_topics(&topics).await?;
        let highest = highest.max(counter);
        if counter < highest || stored_applied < highest {
            // The counter must never hand out a seq that is already stored.
            writes::upsert_one(
                &self.collection(queries::META),
                doc! { "_id": queries::SEQ_COUNTER },
                doc! {
                    "$max": { "value": seq_to_bson(highest), "applied": seq_to_bson(stored_applied) },
                },
            )
            .await?;
        }
        if repaired > 0 {
            tracing::info!(
                events = repaired,
                "MongoDB store: re-applied the side effects of the newest events"
            );
        }
        // Other hubs may have batches in flight: read up to the horizon
        // only, and count as applied only what lies below it (a batch of
        // theirs cut short is repaired by the next repair).
        let horizon = self.horizon().await?;
        state.applied = highest.min(horizon);
        state.needs_repair = false;
        state.chain_head = None;
        inner.durable_seq.fetch_max(horizon, Ordering::AcqRel);
        Ok(())
    }

    /// A database written by a hub without the `topics` collection gets it
    /// filled once from the events (one pass at start, then marked done).
    pub(super) async fn fill_topics(&self) -> Result<(), StoreError> {
        let meta = self.collection(queries::META);
        if meta
            .find_one(doc! { "_id": queries::TOPICS_COMPLETE })
            .await
            .map_err(backend)?
            .is_some()
        {
            return Ok(());
        }
        let mut newest: HashMap<String, i64> = HashMap::new();
        let mut cursor = self
            .collection(queries::EVENTS)
            .find(doc! {})
            .projection(doc! { "topic": 1 })
            .await
            .map_err(backend)?;
        while let Some(doc) = cursor.try_next().await.map_err(backend)? {
            let seq = int_field(&doc, "_id", "an event")?;
            let topic = str_field(&doc, "topic", "an event")?;
            let entry = newest.entry(topic.to_owned()).or_insert(seq);
            *entry = (*entry).max(seq);
        }
        if !newest.is_empty() {
            tracing::info!(
                topics = newest.len(),
                "MongoDB store: listed the topics of existing events"
            );
        }
        self.record_topics(&newest).await?;
        writes::upsert_one(
            &meta,
            doc! { "_id": queries::TOPICS_COMPLETE },
            doc! { "$set": { "value": 1 } },
        )
        .await?;
        Ok(())
    }
}

/// The write concern of every write: the URI's when it sets one, else
/// `{w: "majority", j: true}`. An unacknowledged one (`w=0`) is refused: a
/// PUBACK must follow the server's acknowledgement.
pub(super) fn write_concern_of(from_uri: Option<WriteConcern>) -> Result<WriteConcern, StoreError> {
    let concern = from_uri.unwrap_or_default();
    if concern.w == Some(Acknowledgment::Nodes(0)) {
        return Err(StoreError::Backend(
            "the MongoDB URI sets w=0 (unacknowledged writes): a PUBACK needs the server's \
             acknowledgement; use w=1, w=majority or leave w out"
                .into(),
        ));
    }
    if concern.w.is_none() && concern.journal.is_none() && concern.w_timeout.is_none() {
        return Ok(WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .build());
    }
    Ok(concern)
}

/// The `writeConcern` field of the commands built by hand.
pub(super) fn write_concern_document(concern: &WriteConcern) -> Document {
    mongodb::bson::to_document(concern).unwrap_or_else(|_| doc! { "w": "majority", "j": true })
}

#[cfg(test)]
mod write_concern_tests {
    use super::*;

    async fn from_uri(query: &str) -> Result<Document, StoreError> {
        let options = ClientOptions::parse(format!("mongodb://127.0.0.1:1/db{query}"))
            .await
            .unwrap();
        write_concern_of(options.write_concern).map(|c| write_concern_document(&c))
    }

    #[tokio::test]
    async fn the_default_is_majority_with_journal() {
        assert_eq!(
            from_uri("").await.unwrap(),
            doc! { "w": "majority", "j": true }
        );
    }

    #[tokio::test]
    async fn the_uri_sets_the_write_concern() {
        assert_eq!(
            from_uri("?w=1&journal=false").await.unwrap(),
            doc! { "w": 1, "j": false }
        );
        assert_eq!(
            from_uri("?w=majority&wtimeoutMS=2500").await.unwrap(),
            doc! { "w": "majority", "wtimeout": 2500 }
        );
    }

    #[tokio::test]
    async fn unacknowledged_writes_are_refused_with_a_reason() {
        let e = from_uri("?w=0").await.unwrap_err();
        assert!(e.to_string().contains("w=0"), "{e}");
    }
}
