//! The embedded dedupe store: a table in the application's own SQLite
//! database, written in the same transaction as the handler's writes.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promhub_core::frames::Event;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{DedupeOptions, EventRef, HandleError, Handled, answer, payload_or_term};
use crate::Delivery;

/// Expired ids are deleted at most this often (from inside `process`).
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Why the SQLite dedupe store failed.
#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the dedupe store's lock was poisoned by a panicking handler")]
    Poisoned,
    #[error("the dedupe task stopped: {0}")]
    Task(String),
}

/// Records processed events (by topic and id, see [`EventRef`]) in the
/// table `promhub_processed` of an SQLite database, in the handler's own
/// transaction.
///
/// ```no_run
/// # async fn example(mut orders: promhub::Subscription<serde_json::Value>) -> anyhow::Result<()> {
/// use futures_util::StreamExt;
/// use promhub::idempotent::{DedupeOptions, SqliteDedupe};
///
/// let dedupe = SqliteDedupe::open("shop.db", DedupeOptions::new("billing"))?;
/// while let Some(delivery) = orders.next().await {
///     // Runs once per event (topic and id); a redelivery is only acknowledged.
///     dedupe
///         .handle(delivery, |tx, event, order| {
///             tx.execute(
///                 "INSERT INTO invoices (event_id, body) VALUES (?1, ?2)",
///                 (&event.id, order.to_string()),
///             )
///         })
///         .await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteDedupe {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connection: Mutex<Connection>,
    options: DedupeOptions,
    next_purge_ms: Mutex<u64>,
}

impl SqliteDedupe {
    /// Opens (or creates) the database at `path` and its dedupe table.
    pub fn open(path: impl AsRef<Path>, options: DedupeOptions) -> Result<Self, DedupeError> {
        let connection = Connection::open(path)?;
        // WAL: readers of the application's tables are not blocked by the
        // dedupe writes; a busy timeout instead of failing on a concurrent
        // writer in another process.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.busy_timeout(Duration::from_secs(5))?;
        Self::with_connection(connection, options)
    }

    /// Uses an open connection to the application's database.
    pub fn with_connection(
        connection: Connection,
        options: DedupeOptions,
    ) -> Result<Self, DedupeError> {
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS promhub_processed (
                 scope TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 processed_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL,
                 PRIMARY KEY (scope, event_id)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS promhub_processed_expiry
                 ON promhub_processed (expires_at);",
        )?;
        Ok(SqliteDedupe {
            inner: Arc::new(Inner {
                connection: Mutex::new(connection),
                options,
                next_purge_ms: Mutex::new(0),
            }),
        })
    }

    /// Runs `handler` in one transaction with the record of `event`, unless
    /// it is already recorded (and not expired). The handler's error rolls
    /// everything back.
    pub fn process<R, E>(
        &self,
        event: EventRef<'_>,
        handler: impl FnOnce(&Transaction<'_>) -> Result<R, E>,
    ) -> Result<Handled<R>, HandleError<E, DedupeError>> {
        let now = unix_ms();
        let mut connection = self.connection().map_err(HandleError::Store)?;
        self.purge_if_due(&connection, now)
            .map_err(HandleError::Store)?;
        // IMMEDIATE: take the write lock before the check, so two
        // processes cannot both see the id as new.
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| HandleError::Store(e.into()))?;
        let expires_at = now.saturating_add(duration_ms(self.inner.options.ttl));
        // A new id is inserted; an expired record is taken over; a live
        // record changes nothing (0 rows).
        let recorded = tx
            .execute(
                "INSERT INTO promhub_processed (scope, event_id, processed_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, event_id) DO UPDATE
                     SET processed_at = excluded.processed_at, expires_at = excluded.expires_at
                     WHERE promhub_processed.expires_at <= ?3",
                params![
                    self.inner.options.scope,
                    event.record_key(),
                    now_i64(now),
                    now_i64(expires_at)
                ],
            )
            .map_err(|e| HandleError::Store(e.into()))?;
        if recorded == 0 {
            // Dropping `tx` rolls back (nothing was written anyway).
            return Ok(Handled::AlreadyProcessed);
        }
        let output = handler(&tx).map_err(HandleError::Handler)?;
        tx.commit().map_err(|e| HandleError::Store(e.into()))?;
        Ok(Handled::Processed(output))
    }

    /// Whether `event` is recorded as processed (and not expired).
    pub fn is_processed(&self, event: EventRef<'_>) -> Result<bool, DedupeError> {
        let connection = self.connection()?;
        let found = connection
            .query_row(
                "SELECT 1 FROM promhub_processed
                 WHERE scope = ?1 AND event_id = ?2 AND expires_at > ?3",
                params![
                    self.inner.options.scope,
                    event.record_key(),
                    now_i64(unix_ms())
                ],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// Deletes expired records now; returns how many.
    pub fn purge_expired(&self) -> Result<usize, DedupeError> {
        let connection = self.connection()?;
        Ok(purge(&connection, unix_ms())?)
    }

    /// Handles one delivery: decodes its payload, runs `handler` through
    /// [`process`](Self::process) on a blocking thread, then answers the
    /// hub: ACK when processed or already processed, NACK (with the error
    /// as reason) when the handler or the store failed, dead-letter when
    /// the payload is not a `T`.
    pub async fn handle<T, R, E, F>(
        &self,
        delivery: Delivery<T>,
        handler: F,
    ) -> Result<Handled<R>, HandleError<E, DedupeError>>
    where
        T: Send + 'static,
        R: Send + 'static,
        E: std::fmt::Display + Send + 'static,
        F: FnOnce(&Transaction<'_>, &Event, &T) -> Result<R, E> + Send + 'static,
    {
        let (payload, event, acker) = delivery.into_parts();
        let (payload, acker) = payload_or_term(payload, acker).await?;
        let this = self.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            this.process((&event).into(), |tx| handler(tx, &event, &payload))
        })
        .await
        .unwrap_or_else(|join_error| {
            Err(HandleError::Store(DedupeError::Task(
                join_error.to_string(),
            )))
        });
        answer(acker, outcome).await
    }

    fn connection(&self) -> Result<MutexGuard<'_, Connection>, DedupeError> {
        self.inner
            .connection
            .lock()
            .map_err(|_| DedupeError::Poisoned)
    }

    fn purge_if_due(&self, connection: &Connection, now: u64) -> Result<(), DedupeError> {
        let mut next = self
            .inner
            .next_purge_ms
            .lock()
            .map_err(|_| DedupeError::Poisoned)?;
        if now >= *next {
            let purged = purge(connection, now)?;
            if purged > 0 {
                tracing::debug!(purged, "expired processed-event records deleted");
            }
            *next = now.saturating_add(duration_ms(PURGE_INTERVAL));
        }
        Ok(())
    }
}

fn purge(connection: &Connection, now: u64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM promhub_processed WHERE expires_at <= ?1",
        params![now_i64(now)],
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// SQLite integers are signed; times past i64::MAX ms are clamped.
fn now_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(ttl: Duration) -> (tempfile::TempDir, SqliteDedupe) {
        let dir = tempfile::tempdir().expect("tempdir");
        let dedupe = SqliteDedupe::open(
            dir.path().join("app.db"),
            DedupeOptions::new("billing").ttl(ttl),
        )
        .expect("open");
        dedupe
            .process::<_, rusqlite::Error>(EventRef::new("t", "setup"), |tx| {
                tx.execute_batch("CREATE TABLE invoices (event_id TEXT PRIMARY KEY)")
            })
            .expect("setup");
        (dir, dedupe)
    }

    fn invoice(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<usize> {
        tx.execute("INSERT INTO invoices (event_id) VALUES (?1)", [id])
    }

    fn invoices(dedupe: &SqliteDedupe) -> i64 {
        let connection = dedupe.connection().unwrap();
        connection
            .query_row("SELECT COUNT(*) FROM invoices", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_second_handling_of_the_same_id_does_not_run_the_handler() {
        let (_dir, dedupe) = store(DEFAULT_TTL_FOR_TESTS);
        let first = dedupe.process(E1, |tx| invoice(tx, "e1")).unwrap();
        assert_eq!(first, Handled::Processed(1));
        let mut ran = false;
        let second = dedupe
            .process(E1, |tx| {
                ran = true;
                invoice(tx, "e1")
            })
            .unwrap();
        assert_eq!(second, Handled::AlreadyProcessed);
        assert!(!ran);
        assert_eq!(invoices(&dedupe), 1);
        assert!(dedupe.is_processed(E1).unwrap());
        assert!(!dedupe.is_processed(EventRef::new("t", "e2")).unwrap());
    }

    #[test]
    fn a_failing_handler_rolls_back_its_writes_and_the_record() {
        let (_dir, dedupe) = store(DEFAULT_TTL_FOR_TESTS);
        let failed = dedupe.process(E1, |tx| {
            invoice(tx, "e1")?;
            Err::<(), _>(rusqlite::Error::InvalidQuery)
        });
        assert!(matches!(failed, Err(HandleError::Handler(_))));
        assert_eq!(invoices(&dedupe), 0);
        assert!(!dedupe.is_processed(E1).unwrap());
        // The next attempt runs the handler.
        let retried = dedupe.process(E1, |tx| invoice(tx, "e1")).unwrap();
        assert!(retried.is_processed());
        assert_eq!(invoices(&dedupe), 1);
    }

    #[test]
    fn scopes_are_separate_consumers() {
        let (dir, billing) = store(DEFAULT_TTL_FOR_TESTS);
        let shipping =
            SqliteDedupe::open(dir.path().join("app.db"), DedupeOptions::new("shipping")).unwrap();
        assert!(
            billing
                .process(E1, |_| Ok::<_, rusqlite::Error>(()))
                .unwrap()
                .is_processed()
        );
        assert!(
            shipping
                .process(E1, |_| Ok::<_, rusqlite::Error>(()))
                .unwrap()
                .is_processed()
        );
        assert_eq!(
            billing
                .process(E1, |_| Ok::<_, rusqlite::Error>(()))
                .unwrap(),
            Handled::AlreadyProcessed
        );
    }

    #[test]
    fn an_expired_record_is_processed_again_and_purged() {
        let (_dir, dedupe) = store(Duration::ZERO);
        assert!(
            dedupe
                .process(E1, |_| Ok::<_, rusqlite::Error>(()))
                .unwrap()
                .is_processed()
        );
        // A zero TTL: the record expired at once.
        assert!(!dedupe.is_processed(E1).unwrap());
        assert!(
            dedupe
                .process(E1, |_| Ok::<_, rusqlite::Error>(()))
                .unwrap()
                .is_processed()
        );
        // "setup" and "e1" are both expired.
        assert_eq!(dedupe.purge_expired().unwrap(), 2);
        assert_eq!(dedupe.purge_expired().unwrap(), 0);
    }

    #[test]
    fn the_record_survives_reopening() {
        let (dir, dedupe) = store(DEFAULT_TTL_FOR_TESTS);
        dedupe.process(E1, |tx| invoice(tx, "e1")).unwrap();
        drop(dedupe);
        let reopened =
            SqliteDedupe::open(dir.path().join("app.db"), DedupeOptions::new("billing")).unwrap();
        assert_eq!(
            reopened.process(E1, |tx| invoice(tx, "e1")).unwrap(),
            Handled::AlreadyProcessed
        );
    }

    const DEFAULT_TTL_FOR_TESTS: Duration = super::super::DEFAULT_TTL;
    const E1: EventRef<'static> = EventRef {
        topic: "t",
        id: "e1",
    };

    #[test]
    fn the_same_id_on_another_topic_is_another_event() {
        let (_dir, dedupe) = store(DEFAULT_TTL_FOR_TESTS);
        let planted = EventRef::new("orders.evil", "order-42");
        assert!(
            dedupe
                .process(planted, |_| Ok::<_, rusqlite::Error>(()))
                .unwrap()
                .is_processed()
        );
        let victim = EventRef::new("orders.created", "order-42");
        assert!(!dedupe.is_processed(victim).unwrap());
        assert_eq!(
            dedupe
                .process(victim, |tx| invoice(tx, "order-42"))
                .unwrap(),
            Handled::Processed(1)
        );
    }
}
