//! The MongoDB outbox store: a collection of the application's database,
//! written in the application's `ClientSession` transaction.
//!
//! [`MongoOutbox::open`] checks that the deployment runs multi-document
//! transactions and fails with [`OutboxError::NoTransactions`] otherwise,
//! unless [`MongoOutboxOptions::allow_without_transactions`]. A drain-only
//! user (the hub draining collections other applications write) does not
//! need transactions itself: [`MongoOutbox::open_for_draining`].
//!
//! One drainer at a time per collection, where that is wanted (the hub
//! does it): [`DrainLease`].
//!
//! Indexes: `{status, next_attempt_at}` and `{status, lease_until}` (due
//! records), `{key, status, created_at, _id}` (a key's head),
//! `{claim_token}` (fenced writes, read-back), `{created_at, _id}`
//! (creation order) and a TTL index on `sent_at` (retention; servers
//! without TTL indexes get a plain one and rely on the drainer's purge).

mod codec;
mod lease;
pub mod queries;
mod transactions;

use std::collections::HashMap;
use std::time::Duration;

use crate::Millis;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::IndexOptions;
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};

use self::codec::{date, id_string, id_values, new_document, record_from_document};
pub use self::lease::{DrainLease, LEASES_COLLECTION};
pub use self::transactions::check_transactions;
pub use self::transactions::with_transaction;
use super::drainer::duration_ms;
use super::ordering::{Candidate, claimable, keys_of};
use super::{Claim, NewRecord, OutboxError, OutboxRecord, OutboxStats, OutboxStore, Replay};

/// Error code of an unsupported feature (FerretDB has no TTL indexes).
const NOT_IMPLEMENTED: i32 = 238;
/// Error code of a duplicate key.
const DUPLICATE_KEY: i32 = 11000;
/// Error codes of an index that exists with other options (the TTL index
/// of an earlier run with another retention).
const INDEX_OPTIONS_CONFLICT: i32 = 85;
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

/// Due records read per claimed record: room to skip the records behind
/// each key's head. A key with a longer backlog than 4× the batch size ahead
/// of the other keys' records slows them down (one record of it per claim)
/// until it has drained below that.
const OVERFETCH: usize = 4;

/// How the MongoDB outbox is opened.
#[derive(Debug, Clone)]
pub struct MongoOutboxOptions {
    /// Open even if the deployment cannot run transactions (standalone
    /// server): records are then written on their own, not atomically with
    /// the business write. Off by default: opening fails with a message.
    pub allow_without_transactions: bool,
    /// Sent records are deleted this long after `sent_at` by a TTL index
    /// (where the server has TTL indexes; the drainer's purge does the same
    /// everywhere).
    pub retention: Duration,
}

impl Default for MongoOutboxOptions {
    fn default() -> Self {
        MongoOutboxOptions {
            allow_without_transactions: false,
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// The MongoDB outbox store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoOutbox {
    collection: Collection<Document>,
    /// False when opened without transaction support.
    transactions: bool,
    /// Whether the server keeps the TTL index (FerretDB has none).
    ttl_index: bool,
}

impl MongoOutbox {
    /// Opens the outbox collection `name` of `db` for an application that
    /// enqueues in transactions: checks transaction support, creates the
    /// indexes.
    pub async fn open(
        client: &Client,
        db: &Database,
        name: &str,
        options: MongoOutboxOptions,
    ) -> Result<MongoOutbox, OutboxError> {
        let collection = db.collection::<Document>(name);
        let transactions = match check_transactions(
            client,
            &db.collection(&format!("{name}_transaction_probe")),
        )
        .await
        {
            Ok(()) => true,
            Err(OutboxError::NoTransactions(reason)) if options.allow_without_transactions => {
                tracing::warn!(%reason, "outbox opened without transactions (allowed by options)");
                false
            }
            Err(e) => return Err(e),
        };
        let ttl_index = ensure_indexes(&collection, options.retention).await?;
        Ok(MongoOutbox {
            collection,
            transactions,
            ttl_index,
        })
    }

    /// Opens an outbox collection only to drain it (the writers use
    /// transactions of their own; draining needs none).
    pub async fn open_for_draining(
        db: &Database,
        name: &str,
        retention: Duration,
    ) -> Result<MongoOutbox, OutboxError> {
        let collection = db.collection::<Document>(name);
        let ttl_index = ensure_indexes(&collection, retention).await?;
        Ok(MongoOutbox {
            collection,
            transactions: false,
            ttl_index,
        })
    }

    /// Whether the deployment runs transactions (false only when opened
    /// with `allow_without_transactions` or for draining).
    pub fn has_transactions(&self) -> bool {
        self.transactions
    }

    /// Whether the server keeps a TTL index on `sent_at`.
    pub fn has_ttl_index(&self) -> bool {
        self.ttl_index
    }

    pub fn collection(&self) -> &Collection<Document> {
        &self.collection
    }

    /// Adds a record inside the application's transaction (the session's
    /// current one): it commits or rolls back with the business write.
    pub async fn enqueue_in(
        &self,
        session: &mut ClientSession,
        record: NewRecord,
    ) -> Result<String, OutboxError> {
        let (id, document) = new_document(record, super::now_ms())?;
        self.collection
            .insert_one(document)
            .session(session)
            .await
            .map_err(|e| duplicate_or(e, &id))?;
        Ok(id)
    }

    async fn collect(
        &self,
        filter: Document,
        limit: Option<i64>,
    ) -> Result<Vec<OutboxRecord>, OutboxError> {
        let mut find = self.collection.find(filter).sort(queries::creation_order());
        if let Some(limit) = limit {
            find = find.limit(limit);
        }
        let documents: Vec<Document> = find.await?.try_collect().await?;
        documents.into_iter().map(record_from_document).collect()
    }
}

fn is_duplicate_key(error: &MongoError) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

fn duplicate_or(error: MongoError, id: &str) -> OutboxError {
    if is_duplicate_key(&error) {
        OutboxError::DuplicateId(id.to_owned())
    } else {
        error.into()
    }
}

fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}

/// Creates the indexes; returns whether the TTL index exists.
async fn ensure_indexes(
    collection: &Collection<Document>,
    retention: Duration,
) -> Result<bool, OutboxError> {
    let plain = |keys: Document, name: &str| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().name(name.to_owned()).build())
            .build()
    };
    // One command per index: FerretDB (2.x) drops the connection when one
    // `createIndexes` names several indexes that all exist already, i.e. on
    // every open after the first (a hub restarting, a second hub).
    for index in [
        plain(doc! { "status": 1, "next_attempt_at": 1 }, "outbox_due"),
        plain(doc! { "status": 1, "lease_until": 1 }, "outbox_lease"),
        plain(
            doc! { "key": 1, "status": 1, "created_at": 1, "_id": 1 },
            "outbox_key_head",
        ),
        plain(doc! { "claim_token": 1 }, "outbox_claim"),
        plain(doc! { "created_at": 1, "_id": 1 }, "outbox_created"),
    ] {
        collection.create_index(index).await?;
    }
    let ttl = IndexModel::builder()
        .keys(doc! { "sent_at": 1 })
        .options(
            IndexOptions::builder()
                .name("outbox_sent_ttl".to_owned())
                .expire_after(retention)
                .build(),
        )
        .build();
    match collection.create_index(ttl).await {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some(NOT_IMPLEMENTED) => {
            tracing::info!(
                "the MongoDB server has no TTL indexes; the drainer's purge removes sent records"
            );
            collection
                .create_index(plain(doc! { "sent_at": 1 }, "outbox_sent"))
                .await?;
            Ok(false)
        }
        Err(e)
            if matches!(
                error_code(&e),
                Some(INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT)
            ) =>
        {
            tracing::warn!(
                error = %e,
                "the outbox's TTL index exists with another retention and is kept (drop \
                 `outbox_sent_ttl` to change it); the drainer's purge applies the configured one"
            );
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl OutboxStore for MongoOutbox {
    async fn enqueue(&self, record: NewRecord, now: Millis) -> Result<String, OutboxError> {
        let (id, document) = new_document(record, now)?;
        self.collection
            .insert_one(document)
            .await
            .map_err(|e| duplicate_or(e, &id))?;
        Ok(id)
    }

    async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        now: Millis,
    ) -> Result<Claim, OutboxError> {
        let token = uuid::Uuid::now_v7().to_string();
        let lease_until = now + duration_ms(lease);
        // 1. Due records, oldest first (ids and keys only).
        let fetch = i64::try_from(limit.saturating_mul(OVERFETCH)).unwrap_or(i64::MAX);
        let found: Vec<Document> = self
            .collection
            .find(queries::due(now))
            .sort(queries::creation_order())
            .projection(doc! { "_id": 1, "key": 1, "created_at": 1 })
            .limit(fetch)
            .await?
            .try_collect()
            .await?;
        let mut values: HashMap<String, Bson> = HashMap::with_capacity(found.len());
        let mut candidates = Vec::with_capacity(found.len());
        let newest = found
            .last()
            .and_then(|d| d.get("created_at"))
            .cloned()
            .unwrap_or(Bson::Null);
        for document in found {
            let value = document.get("_id").cloned().unwrap_or(Bson::Null);
            let id = id_string(&value)?;
            let key = document.get_str("key").ok().map(str::to_owned);
            values.insert(id.clone(), value);
            candidates.push(Candidate { id, key });
        }
        if candidates.is_empty() {
            return Ok(Claim {
                token,
                lease_until,
                records: Vec::new(),
            });
        }
        // 2. The head (oldest unsent record) of each of their keys.
        let keys = keys_of(&candidates);
        let mut heads = HashMap::with_capacity(keys.len());
        if !keys.is_empty() {
            let mut cursor = self
                .collection
                .find(queries::key_heads(&keys, &newest))
                .sort(queries::creation_order())
                .projection(doc! { "_id": 1, "key": 1 })
                .limit(fetch.saturating_mul(2))
                .await?;
            while let Some(unsent) = cursor.try_next().await? {
                if let (Ok(key), Some(id)) = (unsent.get_str("key"), unsent.get("_id"))
                    && !heads.contains_key(key)
                {
                    heads.insert(key.to_owned(), id_string(id)?);
                }
            }
        }
        // 3. Claim them in one update that re-checks the filter: another
        // drainer may have taken some in between.
        let chosen: Vec<Bson> = claimable(&candidates, &heads, limit)
            .iter()
            .filter_map(|id| values.get(id).cloned())
            .collect();
        if !chosen.is_empty() {
            let mut filter = queries::due(now);
            filter.insert("_id", doc! { "$in": chosen });
            self.collection
                .update_many(
                    filter,
                    doc! {
                        "$set": {
                            "status": "claimed",
                            "claim_token": &token,
                            "lease_until": date(lease_until),
                        },
                        "$inc": { "attempts": 1 },
                    },
                )
                .await?;
        }
        // 4. Read back what this token got.
        let records = self
            .collect(doc! { "claim_token": &token, "status": "claimed" }, None)
            .await?;
        Ok(Claim {
            token,
            lease_until,
            records,
        })
    }

    async fn renew(&self, token: &str, lease_until: Millis) -> Result<u64, OutboxError> {
        let result = self
            .collection
            .update_many(
                doc! { "claim_token": token, "status": "claimed" },
                doc! { "$set": { "lease_until": date(lease_until) } },
            )
            .await?;
        Ok(result.matched_count)
    }

    async fn mark_sent(
        &self,
        token: &str,
        ids: &[String],
        now: Millis,
    ) -> Result<u64, OutboxError> {
        let result = self
            .collection
            .update_many(
                doc! {
                    "claim_token": token,
                    "status": "claimed",
                    "_id": { "$in": id_values(ids) },
                },
                doc! {
                    "$set": { "status": "sent", "sent_at": date(now) },
                    "$unset": { "claim_token": "", "lease_until": "", "last_err": "" },
                },
            )
            .await?;
        Ok(result.modified_count)
    }

    async fn retry_later(
        &self,
        token: &str,
        id: &str,
        next_attempt_at: Millis,
        error: &str,
    ) -> Result<u64, OutboxError> {
        let ids = [id.to_owned()];
        let Some(record) = self
            .collection
            .find_one_and_update(
                doc! { "claim_token": token, "status": "claimed", "_id": { "$in": id_values(&ids) } },
                doc! {
                    "$set": {
                        "status": "pending",
                        "next_attempt_at": date(next_attempt_at),
                        "last_err": error,
                    },
                    "$unset": { "claim_token": "", "lease_until": "" },
                },
            )
            .await?
        else {
            return Ok(0);
        };
        // The key's later pending records wait as long (they are blocked
        // anyway), so they do not fill the next claims.
        if let (Ok(key), Some(created_at)) = (record.get_str("key"), record.get("created_at")) {
            self.collection
                .update_many(
                    doc! {
                        "key": key,
                        "status": "pending",
                        "created_at": { "$gte": created_at.clone() },
                        "next_attempt_at": { "$lt": date(next_attempt_at) },
                    },
                    doc! { "$set": { "next_attempt_at": date(next_attempt_at) } },
                )
                .await?;
        }
        Ok(1)
    }

    async fn mark_dead(&self, token: &str, id: &str, error: &str) -> Result<u64, OutboxError> {
        let ids = [id.to_owned()];
        let result = self
            .collection
            .update_one(
                doc! { "claim_token": token, "status": "claimed", "_id": { "$in": id_values(&ids) } },
                doc! {
                    "$set": { "status": "dead", "last_err": error },
                    "$unset": { "claim_token": "", "lease_until": "" },
                },
            )
            .await?;
        Ok(result.modified_count)
    }

    async fn release(&self, token: &str, ids: &[String], now: Millis) -> Result<u64, OutboxError> {
        let result = self
            .collection
            .update_many(
                doc! {
                    "claim_token": token,
                    "status": "claimed",
                    "_id": { "$in": id_values(ids) },
                },
                doc! {
                    "$set": { "status": "pending" },
                    "$max": { "next_attempt_at": date(now) },
                    "$inc": { "attempts": -1 },
                    "$unset": { "claim_token": "", "lease_until": "" },
                },
            )
            .await?;
        Ok(result.modified_count)
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<OutboxRecord>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.collect(doc! { "status": "dead" }, Some(limit)).await
    }

    async fn replay_dead(&self, which: Replay, now: Millis) -> Result<u64, OutboxError> {
        let mut filter = doc! { "status": "dead" };
        if let Replay::Ids(ids) = &which {
            filter.insert("_id", doc! { "$in": id_values(ids) });
        }
        let result = self
            .collection
            .update_many(
                filter,
                doc! {
                    "$set": { "status": "pending", "attempts": 0_i32, "next_attempt_at": date(now) },
                    "$unset": { "last_err": "" },
                },
            )
            .await?;
        Ok(result.modified_count)
    }

    async fn purge_sent(&self, sent_before: Millis) -> Result<u64, OutboxError> {
        let result = self
            .collection
            .delete_many(doc! { "status": "sent", "sent_at": { "$lt": date(sent_before) } })
            .await?;
        Ok(result.deleted_count)
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let unsent = doc! { "status": { "$in": ["pending", "claimed"] } };
        let backlog = self.collection.count_documents(unsent.clone()).await?;
        let oldest = self
            .collection
            .find_one(unsent)
            .sort(queries::creation_order())
            .projection(doc! { "created_at": 1 })
            .await?
            .and_then(|d| d.get_datetime("created_at").ok().copied())
            .map(|at| u64::try_from(at.timestamp_millis()).unwrap_or(0));
        let dead = self
            .collection
            .count_documents(doc! { "status": "dead" })
            .await?;
        Ok(OutboxStats {
            backlog,
            oldest_unsent_at: oldest,
            dead,
        })
    }

    async fn get(&self, id: &str) -> Result<Option<OutboxRecord>, OutboxError> {
        let ids = [id.to_owned()];
        self.collection
            .find_one(doc! { "_id": { "$in": id_values(&ids) } })
            .await?
            .map(record_from_document)
            .transpose()
    }
}
