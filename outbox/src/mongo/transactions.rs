//! Transactions on MongoDB: detecting a deployment that cannot run them,
//! and running a body in one with the driver's recommended retries.

use futures_util::future::BoxFuture;
use mongodb::bson::{Document, doc};
use mongodb::error::{
    Error as MongoError, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::{Client, ClientSession, Collection};

use crate::OutboxError;

/// How many times [`with_transaction`] runs the body (transient errors) or
/// retries the commit (unknown commit result) before giving up.
const MAX_TRIES: u32 = 10;

const OPT_OUT: &str = "Run MongoDB as a replica set (a single-node replica set is enough: \
     `mongod --replSet rs0` then `rs.initiate()`) or connect to a mongos. To use the outbox \
     without transactions anyway (records are then written on their own, so a crash between \
     the business write and the record can lose or invent an event), set \
     `MongoOutboxOptions::allow_without_transactions = true`.";

/// Fails unless the deployment runs multi-document transactions: a
/// standalone server (`hello` names no replica set and is no mongos)
/// cannot, and a probe transaction checks the rest (a server may refuse
/// transactions, or accept and ignore them: the probe's aborted insert
/// must leave nothing behind). `probe` is a scratch collection for that
/// insert. Public for the native SDK's idempotent consumers, which need
/// transactions for the same reason as the outbox.
pub async fn check_transactions(
    client: &Client,
    probe: &Collection<Document>,
) -> Result<(), OutboxError> {
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await?;
    let mongos = hello.get_str("msg").is_ok_and(|msg| msg == "isdbgrid");
    if !mongos && hello.get_str("setName").is_err() {
        return Err(OutboxError::NoTransactions(format!(
            "the MongoDB server is a standalone server (its `hello` reports no replica set), \
             which cannot run multi-document transactions, so an outbox record could not \
             commit or roll back together with the business write. {OPT_OUT}"
        )));
    }
    let probe_id = format!("promhub-transaction-probe-{}", uuid::Uuid::now_v7());
    let refused = |e: MongoError| {
        OutboxError::NoTransactions(format!(
            "the MongoDB server refused a probe transaction ({e}), so an outbox record could \
             not commit or roll back together with the business write. {OPT_OUT}"
        ))
    };
    let mut session = client.start_session().await?;
    session.start_transaction().await.map_err(refused)?;
    probe
        .insert_one(doc! { "_id": &probe_id })
        .session(&mut session)
        .await
        .map_err(refused)?;
    session.abort_transaction().await.map_err(refused)?;
    if probe.find_one(doc! { "_id": &probe_id }).await?.is_some() {
        probe.delete_one(doc! { "_id": &probe_id }).await?;
        return Err(OutboxError::NoTransactions(format!(
            "the MongoDB server ignored a probe transaction (an aborted insert stayed), so an \
             outbox record would not roll back with the business write. {OPT_OUT}"
        )));
    }
    Ok(())
}

/// Runs `body` in a transaction of a fresh session and commits it,
/// retrying the whole transaction on `TransientTransactionError` and the
/// commit on `UnknownTransactionCommitResult` (at most 10 times each).
/// `body` may run more than once: it must only write through the session.
///
/// ```no_run
/// # async fn example(client: mongodb::Client, outbox: promhub_outbox::mongo::MongoOutbox)
/// # -> Result<(), promhub_outbox::OutboxError> {
/// use mongodb::bson::doc;
/// use promhub_outbox::{NewRecord, mongo::with_transaction};
/// let orders = client.database("shop").collection::<mongodb::bson::Document>("orders");
/// with_transaction(&client, |session| {
///     let (orders, outbox) = (orders.clone(), outbox.clone());
///     Box::pin(async move {
///         orders.insert_one(doc! { "_id": "o-1" }).session(&mut *session).await?;
///         let record = NewRecord::new("order.created", &"o-1")?.key("o-1");
///         outbox.enqueue_in(session, record).await?;
///         Ok(())
///     })
/// })
/// .await
/// # }
/// ```
pub async fn with_transaction<T, F>(client: &Client, mut body: F) -> Result<T, OutboxError>
where
    F: for<'s> FnMut(&'s mut ClientSession) -> BoxFuture<'s, Result<T, OutboxError>>,
{
    let mut session = client.start_session().await?;
    let mut tries = 0;
    loop {
        tries += 1;
        session.start_transaction().await?;
        let value = match body(&mut session).await {
            Ok(value) => value,
            Err(e) => {
                // Aborting can fail too (e.g. the server is gone); the
                // body's error is the one worth reporting.
                let _ = session.abort_transaction().await;
                if tries < MAX_TRIES && has_label(&e, TRANSIENT_TRANSACTION_ERROR) {
                    continue;
                }
                return Err(e);
            }
        };
        let mut commits = 0;
        let committed = loop {
            commits += 1;
            match session.commit_transaction().await {
                Err(e)
                    if commits < MAX_TRIES
                        && e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) =>
                {
                    continue;
                }
                other => break other,
            }
        };
        match committed {
            Ok(()) => return Ok(value),
            Err(e) if tries < MAX_TRIES && e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn has_label(error: &OutboxError, label: &str) -> bool {
    matches!(error, OutboxError::Mongo(e) if e.contains_label(label))
}
