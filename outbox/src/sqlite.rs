//! The embedded outbox store: a table in the application's own SQLite
//! database, so a record commits or rolls back with the business write.
//!
//! ```no_run
//! # fn example() -> Result<(), promhub_outbox::OutboxError> {
//! use promhub_outbox::{NewRecord, sqlite::{SqliteOutbox, with_transaction}};
//! let mut conn = rusqlite::Connection::open("app.db")?;
//! SqliteOutbox::create_schema(&conn)?;
//! with_transaction(&mut conn, |tx| {
//!     tx.execute("INSERT INTO orders (id) VALUES (?1)", ["o-1"])?;
//!     SqliteOutbox::enqueue_in(tx, NewRecord::new("order.created", &"o-1")?.key("o-1"))?;
//!     Ok::<_, promhub_outbox::OutboxError>(())
//! })?;
//! # Ok(()) }
//! ```
//!
//! The drainer's store ([`SqliteOutbox::open`]) uses its own connection;
//! every claim is one `BEGIN IMMEDIATE` transaction (SQLite has one writer
//! at a time, so it is atomic against every other drainer and writer).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Millis;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::drainer::{duration_ms, now_ms};
use super::ordering::{Candidate, claimable, keys_of};
use super::{Claim, NewRecord, OutboxError, OutboxRecord, OutboxStats, OutboxStore, Replay};

/// The outbox table.
pub const TABLE: &str = "promhub_outbox";

/// Candidates read per claimed record. The candidate query already keeps
/// only keys' heads (so a long backlog of one key cannot crowd the others
/// out); `ordering::claimable` checks them again.
const OVERFETCH: usize = 1;

/// How often [`with_transaction`] retries a transaction that found the
/// database busy (on top of the connection's busy timeout).
const BUSY_RETRIES: u32 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS promhub_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT,
    key TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claim_token TEXT,
    lease_until INTEGER,
    last_err TEXT,
    created_at INTEGER NOT NULL,
    sent_at INTEGER
);
CREATE INDEX IF NOT EXISTS promhub_outbox_due ON promhub_outbox (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS promhub_outbox_lease ON promhub_outbox (status, lease_until);
CREATE INDEX IF NOT EXISTS promhub_outbox_key_head ON promhub_outbox (key, seq)
    WHERE status IN ('pending', 'claimed');
CREATE INDEX IF NOT EXISTS promhub_outbox_token ON promhub_outbox (claim_token)
    WHERE claim_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS promhub_outbox_sent ON promhub_outbox (sent_at) WHERE status = 'sent';
";

const COLUMNS: &str = "id, topic, payload, headers, key, status, attempts, next_attempt_at, \
                       claim_token, lease_until, last_err, created_at, sent_at";

/// `pending` and due, or `claimed` with an expired lease (`?1` = now).
const DUE: &str = "((status = 'pending' AND next_attempt_at <= ?1) \
                   OR (status = 'claimed' AND lease_until <= ?1))";

/// The embedded outbox store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteOutbox {
    /// Opens (creating the table if needed) the outbox in the database file
    /// `path`, the application's own.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteOutbox, OutboxError> {
        let conn = Connection::open(path)?;
        prepare_connection(&conn)?;
        Self::create_schema(&conn)?;
        Ok(SqliteOutbox {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Creates the outbox table and its indexes (idempotent), on the
    /// application's connection.
    pub fn create_schema(conn: &Connection) -> Result<(), OutboxError> {
        conn.execute_batch(SCHEMA)?;
        Ok(())
    }

    /// Adds a record inside the application's transaction: it commits or
    /// rolls back with the business write. Returns the record's id.
    pub fn enqueue_in(tx: &Transaction<'_>, record: NewRecord) -> Result<String, OutboxError> {
        insert(tx, record, now_ms())
    }

    /// Runs `f` on the store's connection in a blocking task.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| OutboxError::Task("the outbox connection was poisoned".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| OutboxError::Task(e.to_string()))?
    }
}

/// Runs `body` in an immediate transaction and commits it. Starting the
/// transaction is retried while the database stays busy longer than the
/// busy timeout (`BEGIN IMMEDIATE` takes the write lock up front, so the
/// body itself does not meet a busy database).
pub fn with_transaction<T, E>(
    conn: &mut Connection,
    body: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<rusqlite::Error>,
{
    let mut tries = 0;
    let tx = loop {
        tries += 1;
        match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Err(e) if tries < BUSY_RETRIES && is_busy(&e) => continue,
            other => break other?,
        }
    };
    let value = body(&tx)?;
    tx.commit()?;
    Ok(value)
}

fn is_busy(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

fn prepare_connection(conn: &Connection) -> Result<(), OutboxError> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(())
}

fn to_sql_ms(ms: Millis) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn insert(conn: &Connection, mut record: NewRecord, now: Millis) -> Result<String, OutboxError> {
    let id = record.take_id();
    let headers = record
        .headers
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(OutboxError::Payload)?;
    let payload = serde_json::to_string(&record.payload).map_err(OutboxError::Payload)?;
    let inserted = conn.execute(
        "INSERT INTO promhub_outbox (id, topic, payload, headers, key, status, attempts, \
         next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6)",
        params![
            id,
            record.topic,
            payload,
            headers,
            record.key,
            to_sql_ms(now)
        ],
    );
    match inserted {
        Ok(_) => Ok(id),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            Err(OutboxError::DuplicateId(id))
        }
        Err(e) => Err(e.into()),
    }
}

fn record_from_row(row: &Row<'_>) -> Result<OutboxRecord, OutboxError> {
    let ms = |index: usize| -> Result<Option<Millis>, OutboxError> {
        let value: Option<i64> = row.get(index)?;
        Ok(value.map(|v| u64::try_from(v).unwrap_or(0)))
    };
    let payload: String = row.get(2)?;
    let headers: Option<String> = row.get(3)?;
    let status: String = row.get(5)?;
    Ok(OutboxRecord {
        id: row.get(0)?,
        topic: row.get(1)?,
        payload: serde_json::from_str(&payload)
            .map_err(|e| OutboxError::Corrupt(format!("payload: {e}")))?,
        headers: headers
            .map(|h| serde_json::from_str(&h))
            .transpose()
            .map_err(|e| OutboxError::Corrupt(format!("headers: {e}")))?,
        key: row.get(4)?,
        status: status.parse()?,
        attempts: row.get(6)?,
        next_attempt_at: ms(7)?.unwrap_or(0),
        claim_token: row.get(8)?,
        lease_until: ms(9)?,
        last_err: row.get(10)?,
        created_at: ms(11)?.unwrap_or(0),
        sent_at: ms(12)?,
    })
}

/// The records matching `condition`, in creation order (`?1` is `param`).
fn select_records(
    conn: &Connection,
    condition: &str,
    limit: Option<i64>,
    param: &str,
) -> Result<Vec<OutboxRecord>, OutboxError> {
    let sql =
        format!("SELECT {COLUMNS} FROM promhub_outbox WHERE {condition} ORDER BY seq LIMIT ?2");
    let params = params![param, limit.unwrap_or(-1)];
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params)?;
    let mut records = Vec::new();
    while let Some(row) = rows.next()? {
        records.push(record_from_row(row)?);
    }
    Ok(records)
}

fn json_list(items: &[String]) -> Result<String, OutboxError> {
    serde_json::to_string(items).map_err(OutboxError::Payload)
}

fn claim(
    conn: &mut Connection,
    limit: usize,
    lease_until: Millis,
    now: Millis,
) -> Result<Claim, OutboxError> {
    let token = uuid::Uuid::now_v7().to_string();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let candidates = {
        let mut statement = tx.prepare_cached(&format!(
            "SELECT seq, key FROM promhub_outbox AS o WHERE {DUE} AND (key IS NULL OR seq = \
             (SELECT MIN(seq) FROM promhub_outbox WHERE key = o.key \
              AND status IN ('pending', 'claimed'))) ORDER BY seq LIMIT ?2"
        ))?;
        let fetch = i64::try_from(limit.saturating_mul(OVERFETCH)).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![to_sql_ms(now), fetch], |row| {
            Ok(Candidate {
                id: row.get::<_, i64>(0)?,
                key: row.get(1)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let keys = keys_of(&candidates);
    let mut heads = HashMap::new();
    if !keys.is_empty() {
        let mut statement = tx.prepare_cached(
            "SELECT key, MIN(seq) FROM promhub_outbox WHERE status IN ('pending', 'claimed') \
             AND key IN (SELECT value FROM json_each(?1)) GROUP BY key",
        )?;
        let rows = statement.query_map([json_list(&keys)?], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (key, head) = row?;
            heads.insert(key, head);
        }
    }
    let chosen = claimable(&candidates, &heads, limit);
    if !chosen.is_empty() {
        let seqs = serde_json::to_string(&chosen).map_err(OutboxError::Payload)?;
        tx.execute(
            &format!(
                "UPDATE promhub_outbox SET status = 'claimed', claim_token = ?2, \
                 lease_until = ?3, attempts = attempts + 1 \
                 WHERE seq IN (SELECT value FROM json_each(?4)) AND {DUE}"
            ),
            params![to_sql_ms(now), token, to_sql_ms(lease_until), seqs],
        )?;
    }
    let records = select_records(&tx, "claim_token = ?1 AND status = 'claimed'", None, &token)?;
    tx.commit()?;
    Ok(Claim {
        token,
        lease_until,
        records,
    })
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn enqueue(&self, record: NewRecord, now: Millis) -> Result<String, OutboxError> {
        self.with_conn(move |conn| insert(conn, record, now)).await
    }

    async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        now: Millis,
    ) -> Result<Claim, OutboxError> {
        let lease_until = now + duration_ms(lease);
        self.with_conn(move |conn| claim(conn, limit, lease_until, now))
            .await
    }

    async fn renew(&self, token: &str, lease_until: Millis) -> Result<u64, OutboxError> {
        let token = token.to_owned();
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE promhub_outbox SET lease_until = ?2 \
                 WHERE claim_token = ?1 AND status = 'claimed'",
                params![token, to_sql_ms(lease_until)],
            )?;
            Ok(changed as u64)
        })
        .await
    }

    async fn mark_sent(
        &self,
        token: &str,
        ids: &[String],
        now: Millis,
    ) -> Result<u64, OutboxError> {
        let token = token.to_owned();
        let ids = json_list(ids)?;
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE promhub_outbox SET status = 'sent', sent_at = ?3, claim_token = NULL, \
                 lease_until = NULL, last_err = NULL \
                 WHERE claim_token = ?1 AND status = 'claimed' \
                 AND id IN (SELECT value FROM json_each(?2))",
                params![token, ids, to_sql_ms(now)],
            )?;
            Ok(changed as u64)
        })
        .await
    }

    async fn retry_later(
        &self,
        token: &str,
        id: &str,
        next_attempt_at: Millis,
        error: &str,
    ) -> Result<u64, OutboxError> {
        let (token, id, error) = (token.to_owned(), id.to_owned(), error.to_owned());
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let at = to_sql_ms(next_attempt_at);
            let changed = tx.execute(
                "UPDATE promhub_outbox SET status = 'pending', next_attempt_at = ?3, \
                 last_err = ?4, claim_token = NULL, lease_until = NULL \
                 WHERE claim_token = ?1 AND status = 'claimed' AND id = ?2",
                params![token, id, at, error],
            )?;
            if changed > 0 {
                tx.execute(
                    "UPDATE promhub_outbox SET next_attempt_at = MAX(next_attempt_at, ?2) \
                     WHERE status = 'pending' \
                     AND key = (SELECT key FROM promhub_outbox WHERE id = ?1) \
                     AND seq > (SELECT seq FROM promhub_outbox WHERE id = ?1)",
                    params![id, at],
                )?;
            }
            tx.commit()?;
            Ok(changed as u64)
        })
        .await
    }

    async fn mark_dead(&self, token: &str, id: &str, error: &str) -> Result<u64, OutboxError> {
        let (token, id, error) = (token.to_owned(), id.to_owned(), error.to_owned());
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE promhub_outbox SET status = 'dead', last_err = ?3, claim_token = NULL, \
                 lease_until = NULL WHERE claim_token = ?1 AND status = 'claimed' AND id = ?2",
                params![token, id, error],
            )?;
            Ok(changed as u64)
        })
        .await
    }

    async fn release(&self, token: &str, ids: &[String], now: Millis) -> Result<u64, OutboxError> {
        let token = token.to_owned();
        let ids = json_list(ids)?;
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE promhub_outbox SET status = 'pending', claim_token = NULL, \
                 lease_until = NULL, attempts = MAX(attempts - 1, 0), \
                 next_attempt_at = MAX(next_attempt_at, ?3) \
                 WHERE claim_token = ?1 AND status = 'claimed' \
                 AND id IN (SELECT value FROM json_each(?2))",
                params![token, ids, to_sql_ms(now)],
            )?;
            Ok(changed as u64)
        })
        .await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<OutboxRecord>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| select_records(conn, "status = ?1", Some(limit), "dead"))
            .await
    }

    async fn replay_dead(&self, which: Replay, now: Millis) -> Result<u64, OutboxError> {
        self.with_conn(move |conn| {
            let set = "UPDATE promhub_outbox SET status = 'pending', attempts = 0, \
                       next_attempt_at = ?1, last_err = NULL WHERE status = 'dead'";
            let changed = match which {
                Replay::All => conn.execute(set, [to_sql_ms(now)])?,
                Replay::Ids(ids) => conn.execute(
                    &format!("{set} AND id IN (SELECT value FROM json_each(?2))"),
                    params![to_sql_ms(now), json_list(&ids)?],
                )?,
            };
            Ok(changed as u64)
        })
        .await
    }

    async fn purge_sent(&self, sent_before: Millis) -> Result<u64, OutboxError> {
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "DELETE FROM promhub_outbox WHERE status = 'sent' AND sent_at < ?1",
                [to_sql_ms(sent_before)],
            )?;
            Ok(changed as u64)
        })
        .await
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.with_conn(|conn| {
            let (backlog, oldest): (i64, Option<i64>) = conn.query_row(
                "SELECT COUNT(*), MIN(created_at) FROM promhub_outbox \
                 WHERE status IN ('pending', 'claimed')",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let dead: i64 = conn.query_row(
                "SELECT COUNT(*) FROM promhub_outbox WHERE status = 'dead'",
                [],
                |row| row.get(0),
            )?;
            Ok(OutboxStats {
                backlog: backlog as u64,
                oldest_unsent_at: oldest.map(|at| at as u64),
                dead: dead as u64,
            })
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<OutboxRecord>, OutboxError> {
        let id = id.to_owned();
        self.with_conn(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM promhub_outbox WHERE id = ?1"
            ))?;
            let row = statement
                .query_row([id], |row| Ok(record_from_row(row)))
                .optional()?;
            row.transpose()
        })
        .await
    }
}
