//! The MongoDB dedupe store: processed event ids in a collection of the
//! application's database, written in the handler's own transaction.
//!
//! Without transaction support (a standalone server, FerretDB) opening fails
//! with a message, unless the caller opts out: then the id is recorded right
//! after the handler succeeded (a crash in between means one more run).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::IndexOptions;
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};

use super::{DedupeOptions, EventRef, HandleError, Handled, answer, payload_or_term};
use crate::Delivery;
use crate::outbox::OutboxError;
use crate::outbox::mongo::check_transactions;

/// Error code of an unsupported feature (FerretDB has no TTL indexes).
const NOT_IMPLEMENTED: i32 = 238;
/// How many times a transaction is tried on transient errors.
const MAX_TRIES: u32 = 10;

/// Why the MongoDB dedupe store failed.
#[derive(Debug, thiserror::Error)]
pub enum MongoDedupeError {
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// The deployment cannot run transactions (see the message for the
    /// opt-out).
    #[error("{0}")]
    NoTransactions(String),
    #[error("gave up after {MAX_TRIES} transient transaction errors: {0}")]
    TooManyRetries(mongodb::error::Error),
}

/// How the MongoDB dedupe store is opened.
#[derive(Debug, Clone)]
pub struct MongoDedupeOptions {
    pub dedupe: DedupeOptions,
    /// Collection of processed ids.
    pub collection: String,
    /// Open even if the deployment cannot run transactions: the id is then
    /// recorded after the handler, not atomically with its writes.
    pub allow_without_transactions: bool,
}

impl MongoDedupeOptions {
    pub fn new(scope: impl Into<String>) -> Self {
        MongoDedupeOptions {
            dedupe: DedupeOptions::new(scope),
            collection: "promhub_processed".to_owned(),
            allow_without_transactions: false,
        }
    }
}

/// Records processed event ids in MongoDB. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoDedupe {
    client: Client,
    collection: Collection<Document>,
    options: DedupeOptions,
    transactions: bool,
    ttl_index: bool,
}

impl MongoDedupe {
    /// Opens the store: checks transaction support, creates a TTL index on
    /// `expires_at` (or a plain one where the server has no TTL indexes;
    /// then [`purge_expired`](Self::purge_expired) removes expired ids).
    pub async fn open(
        client: &Client,
        db: &Database,
        options: MongoDedupeOptions,
    ) -> Result<MongoDedupe, MongoDedupeError> {
        let collection = db.collection::<Document>(&options.collection);
        let probe = db.collection(&format!("{}_transaction_probe", options.collection));
        let transactions = match check_transactions(client, &probe).await {
            Ok(()) => true,
            Err(OutboxError::NoTransactions(reason)) => {
                // The outbox's message names its own opt-out; ours is this one.
                let reason = reason.replace(
                    "MongoOutboxOptions::allow_without_transactions",
                    "MongoDedupeOptions::allow_without_transactions",
                );
                if !options.allow_without_transactions {
                    return Err(MongoDedupeError::NoTransactions(reason));
                }
                tracing::warn!(%reason, "dedupe store opened without transactions (allowed by options)");
                false
            }
            Err(OutboxError::Mongo(e)) => return Err(e.into()),
            Err(other) => return Err(MongoDedupeError::NoTransactions(other.to_string())),
        };
        let ttl = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("processed_ttl".to_owned())
                    .expire_after(Duration::ZERO)
                    .build(),
            )
            .build();
        let ttl_index = match collection.create_index(ttl).await {
            Ok(_) => true,
            Err(e) if command_code(&e) == Some(NOT_IMPLEMENTED) => {
                let plain = IndexModel::builder()
                    .keys(doc! { "expires_at": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("processed_expiry".to_owned())
                            .build(),
                    )
                    .build();
                collection.create_index(plain).await?;
                false
            }
            Err(e) => return Err(e.into()),
        };
        Ok(MongoDedupe {
            client: client.clone(),
            collection,
            options: options.dedupe,
            transactions,
            ttl_index,
        })
    }

    /// Whether ids are recorded in the handler's transaction.
    pub fn has_transactions(&self) -> bool {
        self.transactions
    }

    /// Whether the server expires ids by itself (TTL index).
    pub fn has_ttl_index(&self) -> bool {
        self.ttl_index
    }

    /// Runs `handler` once per `event`: in one transaction with its record
    /// (retried as a whole on transient errors, so the
    /// handler must only write through the session it is given), or, when
    /// opened without transactions, records the id after it succeeded.
    pub async fn process<R, E, F>(
        &self,
        event: EventRef<'_>,
        mut handler: F,
    ) -> Result<Handled<R>, HandleError<E, MongoDedupeError>>
    where
        F: for<'s> FnMut(&'s mut ClientSession) -> BoxFuture<'s, Result<R, E>>,
    {
        let store = |e: mongodb::error::Error| HandleError::Store(MongoDedupeError::from(e));
        let id = record_id(&self.options.scope, &event);
        let mut session = self.client.start_session().await.map_err(store)?;
        if !self.transactions {
            if self.is_live(&id, &mut session).await.map_err(store)? {
                return Ok(Handled::AlreadyProcessed);
            }
            let output = handler(&mut session).await.map_err(HandleError::Handler)?;
            self.record(&id, event, &mut session).await.map_err(store)?;
            return Ok(Handled::Processed(output));
        }
        let mut tries = 0;
        loop {
            tries += 1;
            session.start_transaction().await.map_err(store)?;
            let attempt = async {
                if self.is_live(&id, &mut session).await? {
                    return Ok(None);
                }
                // Written before the handler runs: a concurrent consumer
                // handling the same id conflicts here and retries.
                self.record(&id, event, &mut session).await?;
                Ok::<_, mongodb::error::Error>(Some(()))
            }
            .await;
            let retry = |e: &mongodb::error::Error| {
                tries < MAX_TRIES && e.contains_label(TRANSIENT_TRANSACTION_ERROR)
            };
            match attempt {
                Ok(None) => {
                    let _ = session.abort_transaction().await;
                    return Ok(Handled::AlreadyProcessed);
                }
                Ok(Some(())) => {}
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    if retry(&e) {
                        continue;
                    }
                    return Err(store(e));
                }
            }
            let output = match handler(&mut session).await {
                Ok(output) => output,
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(HandleError::Handler(e));
                }
            };
            match commit(&mut session).await {
                Ok(()) => return Ok(Handled::Processed(output)),
                Err(e) if retry(&e) => continue,
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                    return Err(HandleError::Store(MongoDedupeError::TooManyRetries(e)));
                }
                Err(e) => return Err(store(e)),
            }
        }
    }

    /// Handles one delivery with [`process`](Self::process) (the handler
    /// gets the session and the payload; it may run more than once when the
    /// transaction is retried), then answers the hub like
    /// [`SqliteDedupe::handle`](super::SqliteDedupe::handle).
    pub async fn handle<T, R, E, F>(
        &self,
        delivery: Delivery<T>,
        mut handler: F,
    ) -> Result<Handled<R>, HandleError<E, MongoDedupeError>>
    where
        E: std::fmt::Display,
        F: for<'s> FnMut(&'s mut ClientSession, Arc<T>) -> BoxFuture<'s, Result<R, E>>,
    {
        let (payload, event, acker) = delivery.into_parts();
        let (payload, acker) = payload_or_term(payload, acker).await?;
        let payload = Arc::new(payload);
        let outcome = self
            .process((&event).into(), |session| {
                handler(session, Arc::clone(&payload))
            })
            .await;
        answer(acker, outcome).await
    }

    /// Whether `event` is recorded as processed (and not expired).
    pub async fn is_processed(&self, event: EventRef<'_>) -> Result<bool, MongoDedupeError> {
        let mut session = self.client.start_session().await?;
        let id = record_id(&self.options.scope, &event);
        Ok(self.is_live(&id, &mut session).await?)
    }

    /// Deletes expired ids now (the TTL index does it by itself where the
    /// server has one); returns how many.
    pub async fn purge_expired(&self) -> Result<u64, MongoDedupeError> {
        let now = mongodb::bson::DateTime::now();
        let deleted = self
            .collection
            .delete_many(doc! { "expires_at": { "$lte": now } })
            .await?;
        Ok(deleted.deleted_count)
    }

    async fn is_live(
        &self,
        id: &str,
        session: &mut ClientSession,
    ) -> Result<bool, mongodb::error::Error> {
        let now = mongodb::bson::DateTime::now();
        let found = self
            .collection
            .find_one(doc! { "_id": id, "expires_at": { "$gt": now } })
            .session(session)
            .await?;
        Ok(found.is_some())
    }

    async fn record(
        &self,
        id: &str,
        event: EventRef<'_>,
        session: &mut ClientSession,
    ) -> Result<(), mongodb::error::Error> {
        let now = mongodb::bson::DateTime::now();
        let ttl_ms = i64::try_from(self.options.ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at =
            mongodb::bson::DateTime::from_millis(now.timestamp_millis().saturating_add(ttl_ms));
        // An expired record of the same id is taken over.
        self.collection
            .update_one(
                doc! { "_id": id },
                doc! { "$set": {
                    "scope": &self.options.scope,
                    "topic": event.topic,
                    "event_id": event.id,
                    "processed_at": now,
                    "expires_at": expires_at,
                } },
            )
            .upsert(true)
            .session(session)
            .await?;
        Ok(())
    }
}

/// One document per (scope, topic, event id); the scope's length keeps ids
/// of different scopes apart whatever characters they contain.
fn record_id(scope: &str, event: &EventRef<'_>) -> String {
    format!("{}:{scope}:{}", scope.len(), event.record_key())
}

async fn commit(session: &mut ClientSession) -> Result<(), mongodb::error::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        match session.commit_transaction().await {
            Err(e) if tries < MAX_TRIES && e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => {
                continue;
            }
            other => return other,
        }
    }
}

fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}
