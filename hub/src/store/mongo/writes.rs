//! Many update or delete statements in few round trips: the `update` and
//! `delete` commands take a list of statements, which the driver's
//! one-document helpers do not expose (and `bulkWrite` needs MongoDB 8).

use mongodb::Database;
use mongodb::bson::{Bson, Document, RawArrayBuf, RawBson, RawDocumentBuf, doc};

use super::super::StoreError;
use super::backend;

/// Most statements in one command (the server's limit is 100,000). Kept
/// small for FerretDB 1.x (SQLite backend, a pool of 100 SQL connections
/// per database): it holds a connection for each matching non-`multi`
/// update statement until the command ends, so a command of 100 such
/// statements waited for itself for ever and froze the database. Operator
/// updates are sent as `multi` (see [`update`]), which frees it; the bound
/// still covers replacements (dead letters).
const MAX_STATEMENTS: usize = 64;
/// Approximate most bytes of statements in one command (the server's
/// limit is 16 MiB plus a little).
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Which write command.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Update,
    Delete,
}

impl Kind {
    fn command(self) -> (&'static str, &'static str) {
        match self {
            Kind::Update => ("update", "updates"),
            Kind::Delete => ("delete", "deletes"),
        }
    }
}

/// An update statement: `filter` → `update`, inserting when nothing matches
/// if `upsert`. Every filter here is an `_id` equality, so at most one
/// document matches; an operator update is still sent as `multi`: FerretDB
/// 1.x reads a non-`multi` statement's match through a cursor it leaves
/// open, holding one of its SQL connections, until the whole command ends,
/// while a `multi` one reads to the end and lets the connection go (a
/// replacement cannot be `multi`).
pub(super) fn update(filter: Document, update: Document, upsert: bool) -> Document {
    let multi = update.keys().all(|key| key.starts_with('$'));
    doc! { "q": filter, "u": update, "upsert": upsert, "multi": multi }
}

/// A delete statement removing every match.
pub(super) fn delete(filter: Document) -> Document {
    doc! { "q": filter, "limit": 0 }
}

/// Runs `statements` against `collection` with the store's write concern,
/// in order (each command is `ordered`, and commands run one after
/// another). Fails on the first statement that fails.
pub(super) async fn run(
    db: &Database,
    write_concern: &Document,
    kind: Kind,
    collection: &str,
    statements: Vec<Document>,
) -> Result<(), StoreError> {
    let mut chunk = RawArrayBuf::new();
    let mut count = 0usize;
    let mut bytes = 0usize;
    for statement in statements {
        let raw = RawDocumentBuf::from_document(&statement)
            .map_err(|e| StoreError::Backend(format!("cannot encode a write: {e}")))?;
        if count > 0 && (count >= MAX_STATEMENTS || bytes + raw.as_bytes().len() > MAX_BYTES) {
            let full = std::mem::take(&mut chunk);
            send(db, write_concern, kind, collection, full).await?;
            count = 0;
            bytes = 0;
        }
        bytes += raw.as_bytes().len();
        count += 1;
        chunk.push(RawBson::Document(raw));
    }
    if count > 0 {
        send(db, write_concern, kind, collection, chunk).await?;
    }
    Ok(())
}

async fn send(
    db: &Database,
    write_concern: &Document,
    kind: Kind,
    collection: &str,
    statements: RawArrayBuf,
) -> Result<(), StoreError> {
    let (name, list) = kind.command();
    let mut command = RawDocumentBuf::new();
    command.append(name, collection);
    command.append(list, statements);
    command.append("ordered", true);
    let write_concern = RawDocumentBuf::from_document(write_concern)
        .map_err(|e| StoreError::Backend(format!("cannot encode the write concern: {e}")))?;
    command.append("writeConcern", write_concern);
    let mut attempt = 1;
    loop {
        let reply = db.run_raw_command(command.clone()).await.map_err(backend)?;
        match check_reply(&reply, name, collection) {
            // Two hubs upserting the same new `_id` at once: one insert
            // wins, the other statement fails with a duplicate key and
            // matches the document when sent again (every statement of the
            // store is idempotent: `$max`, `$set`, `$setOnInsert`, ...).
            Err(error) if matches!(kind, Kind::Update) && duplicate_key(&reply) && attempt < 3 => {
                tracing::debug!(%error, attempt, "MongoDB: concurrent upsert; sending the statements again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a write error of `reply` is a duplicate key.
fn duplicate_key(reply: &Document) -> bool {
    reply.get_array("writeErrors").is_ok_and(|errors| {
        errors.iter().any(|error| {
            error
                .as_document()
                .is_some_and(|error| error.get_i32("code") == Ok(11000))
        })
    })
}

/// `ok: 1` replies still carry the statements that failed.
fn check_reply(reply: &Document, command: &str, collection: &str) -> Result<(), StoreError> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        for error in errors {
            let Bson::Document(error) = error else {
                continue;
            };
            let code = error.get_i32("code").unwrap_or_default();
            let message = error.get_str("errmsg").unwrap_or("no message");
            return Err(StoreError::Backend(format!(
                "MongoDB {command} on {collection} failed: {message} (code {code})"
            )));
        }
    }
    if let Ok(error) = reply.get_document("writeConcernError") {
        let message = error.get_str("errmsg").unwrap_or("no message");
        return Err(StoreError::Backend(format!(
            "MongoDB {command} on {collection} was not acknowledged as durable: {message}"
        )));
    }
    Ok(())
}

/// Attempts of an upsert that lost to another hub's insert of its `_id`.
const UPSERT_ATTEMPTS: usize = 3;

/// `update_one(filter, update)` with upsert, sent again when it fails with
/// a duplicate key: hubs starting or writing at once can each find no
/// document and insert it (MongoDB may answer the loser so too; FerretDB
/// always can). The update of the loser then applies to the winner's
/// document, so every caller's update must be idempotent.
pub(super) async fn upsert_one(
    collection: &mongodb::Collection<Document>,
    filter: Document,
    update: Document,
) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        match collection
            .update_one(filter.clone(), update.clone())
            .upsert(true)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if super::commit::is_duplicate_key(&e) && attempt < UPSERT_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(backend(e)),
        }
    }
}
