//! The embedded store's schema: every version's DDL and the migration that
//! brings an older file up to [`SCHEMA_VERSION`] in one transaction on open.

use rusqlite::Connection;

use super::backend;
use crate::store::StoreError;

/// Bumped when the schema changes; [`migrate`] refuses files written by a
/// newer version instead of misreading them.
pub(super) const SCHEMA_VERSION: i64 = 6;

const SCHEMA_V1: &str = "
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (name, value) VALUES ('last_seq', 0);

-- seq is the rowid: assigned from meta.last_seq, never by SQLite.
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL,
    topic     TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    key       TEXT,
    payload   TEXT NOT NULL,
    headers   TEXT,
    tags      TEXT,
    caused_by TEXT,
    sid       TEXT
);
CREATE INDEX events_by_topic ON events (topic, seq);

-- Publisher ids (opts.id) stored within the dedup window.
CREATE TABLE dedup (
    id        TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    stored_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX dedup_by_age ON dedup (stored_at);

CREATE TABLE latest (
    topic TEXT NOT NULL,
    key   TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (topic, key)
) WITHOUT ROWID;

CREATE TABLE groups (
    pattern TEXT NOT NULL,
    grp     TEXT NOT NULL,
    cursor  INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp)
) WITHOUT ROWID;

-- Events after a group's cursor that are already done.
CREATE TABLE group_done (
    pattern TEXT NOT NULL,
    grp     TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp, seq)
) WITHOUT ROWID;

CREATE TABLE dead_letters (
    pattern  TEXT NOT NULL,
    grp      TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    reason   TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    dead_at  INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp, seq)
) WITHOUT ROWID;
";

/// Version 2: per-topic counts, so the ops API's lag is two index lookups
/// per topic instead of a scan. `tord` is the event's ordinal within its
/// topic (1, 2, ...): the number of a topic's events in `(a, b]` is
/// `tord(last ≤ b) − tord(last ≤ a)`. `topics` lists every topic with its
/// count and newest seq (to enumerate the topics a pattern matches).
/// Existing events are numbered once by the migration.
const SCHEMA_V2: &str = "
ALTER TABLE events ADD COLUMN tord INTEGER NOT NULL DEFAULT 0;
CREATE TABLE topics (
    topic    TEXT PRIMARY KEY,
    events   INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
UPDATE events SET tord = numbered.n
    FROM (SELECT seq, row_number() OVER (PARTITION BY topic ORDER BY seq) AS n FROM events)
        AS numbered
    WHERE events.seq = numbered.seq;
INSERT INTO topics (topic, events, last_seq)
    SELECT topic, max(tord), max(seq) FROM events GROUP BY topic;
";

/// Version 3: delivery attempts used by failed events above a group's
/// cursor (`GroupProgress::attempt_changes`), so a redelivery after a restart
/// or an idle group's eviction counts on instead of starting again at 1.
const SCHEMA_V3: &str = "
CREATE TABLE group_attempts (
    pattern  TEXT NOT NULL,
    grp      TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp, seq)
) WITHOUT ROWID;
";

/// Version 4: de-duplication per topic (semantics.md §3): a publisher id is
/// a duplicate only on the topic it was stored on, so a publisher can never
/// suppress events on a topic it may not publish to. Existing entries get
/// the topic of the event they point at (by seq); an entry whose event
/// retention already removed is dropped.
const SCHEMA_V4: &str = "
CREATE TABLE dedup_by_topic (
    topic     TEXT NOT NULL,
    id        TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    PRIMARY KEY (topic, id)
) WITHOUT ROWID;
INSERT INTO dedup_by_topic (topic, id, seq, stored_at)
    SELECT e.topic, d.id, d.seq, d.stored_at FROM dedup d JOIN events e ON e.seq = d.seq;
DROP TABLE dedup;
ALTER TABLE dedup_by_topic RENAME TO dedup;
CREATE INDEX dedup_by_age ON dedup (stored_at);
";

/// Version 5: the last seq retention removed from each topic
/// (`Store::removed_since`), so a live subscription resuming `from` a seq
/// learns exactly whether retention took events it had not seen. Files of
/// older versions do not know it: a topic that lost a prefix is taken to
/// have lost everything before its first retained event (at worst a gap is
/// reported that was not one), one that lost every event up to its last.
const SCHEMA_V5: &str = "
ALTER TABLE topics ADD COLUMN removed_upto INTEGER NOT NULL DEFAULT 0;
UPDATE topics SET removed_upto = CASE
    WHEN NOT EXISTS (SELECT 1 FROM events e WHERE e.topic = topics.topic) THEN topics.last_seq
    WHEN (SELECT min(e.tord) FROM events e WHERE e.topic = topics.topic) > 1
        THEN (SELECT min(e.seq) FROM events e WHERE e.topic = topics.topic) - 1
    ELSE 0
END;
";

/// Version 6: the seq counter is the larger of `meta.last_seq` and the
/// newest `topics.last_seq` (every stored event updates its topic's row in
/// the same commit, and topic rows are never deleted), so a commit no
/// longer writes `meta` — one page less per commit — and the store brings
/// `meta.last_seq` up to date when it closes. Older hubs, which read the
/// counter from `meta` alone, refuse the file as newer.
const SCHEMA_V6: &str = "
UPDATE meta SET value = max(value, (SELECT coalesce(max(last_seq), 0) FROM topics))
    WHERE name = 'last_seq';
";

/// The scripts that take a file from version `i` to `i + 1`.
const STEPS: [&str; SCHEMA_VERSION as usize] = [
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6,
];

/// The newest seq ever assigned in a file of [`SCHEMA_VERSION`] (see
/// version 6).
pub(super) fn last_seq(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row(
        "SELECT max((SELECT value FROM meta WHERE name = 'last_seq'),
                    (SELECT coalesce(max(last_seq), 0) FROM topics))",
        [],
        |row| row.get(0),
    )
    .map_err(backend)
}

/// Creates the schema in a new file or migrates an older one, all in one
/// transaction.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend)?;
    let steps = match version {
        SCHEMA_VERSION => return Ok(()),
        newer if newer > SCHEMA_VERSION => {
            return Err(StoreError::Corrupt(format!(
                "database schema version {newer} is newer than this hub supports ({SCHEMA_VERSION})"
            )));
        }
        older if older >= 0 => STEPS[older as usize..].join("\n"),
        other => {
            return Err(StoreError::Corrupt(format!(
                "database schema version {other} is unknown"
            )));
        }
    };
    let script =
        format!("BEGIN IMMEDIATE;\n{steps}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;");
    conn.execute_batch(&script).map_err(|e| {
        // Leave no half-migrated schema behind.
        let _ = conn.execute_batch("ROLLBACK");
        StoreError::Backend(format!("cannot create or migrate the schema: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use anyhow::{Result, ensure};
    use promhub_core::{Pattern, Topic};
    use rusqlite::params;
    use serde_json::value::RawValue;

    use super::*;
    use crate::store::sqlite::{DB_FILE, SqliteOptions, SqliteStore};
    use crate::store::{Appended, CommitBatch, NewEvent, Store};

    #[tokio::test]
    async fn creates_a_versioned_wal_database_and_refuses_a_newer_schema() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let path = store.path().to_owned();
        ensure!(path == dir.path().join(DB_FILE));
        store.close().await?;
        {
            let conn = Connection::open(&path)?;
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            ensure!(mode == "wal", "journal mode {mode}");
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            ensure!(version == SCHEMA_VERSION);
            conn.execute_batch("PRAGMA user_version = 99")?;
        }
        match SqliteStore::open(dir.path(), SqliteOptions::default()) {
            Err(StoreError::Corrupt(msg)) => ensure!(msg.contains("99"), "{msg}"),
            other => anyhow::bail!("expected a schema error, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_version_1_database_gets_topic_counts_on_open() -> Result<()> {
        let dir = tempfile::tempdir()?;
        {
            let conn = Connection::open(dir.path().join(DB_FILE))?;
            conn.execute_batch(&format!("{SCHEMA_V1}\nPRAGMA user_version = 1;"))?;
            for (seq, topic) in [(1, "a.b"), (2, "a.c"), (3, "a.b"), (4, "z")] {
                conn.execute(
                    "INSERT INTO events (seq, id, topic, ts, payload) VALUES (?1, ?2, ?3, 5, '1')",
                    params![seq, format!("e{seq}"), topic],
                )?;
            }
            conn.execute("UPDATE meta SET value = 4 WHERE name = 'last_seq'", [])?;
        }
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let a_star = Pattern::parse("a.*")?;
        ensure!(store.count_matching_after(&a_star, 0).await? == 3);
        ensure!(store.count_matching_after(&a_star, 1).await? == 2);
        ensure!(
            store
                .count_matching_after(&Pattern::parse("a.b")?, 1)
                .await?
                == 1
        );
        // New events continue each topic's numbering.
        store
            .commit(CommitBatch {
                events: vec![NewEvent {
                    id: "n".into(),
                    client_id: false,
                    topic: Topic::parse("a.b")?,
                    ts: 9,
                    key: None,
                    payload: RawValue::from_string("2".into())?,
                    headers: None,
                    tags: None,
                    caused_by: None,
                    sid: None,
                }],
                ..CommitBatch::default()
            })
            .await?;
        ensure!(
            store
                .count_matching_after(&Pattern::parse("a.b")?, 0)
                .await?
                == 3
        );
        ensure!(
            store
                .count_matching_after(&Pattern::parse("**")?, 3)
                .await?
                == 2
        );
        let first = store.first_matching_after(&a_star, 3).await?;
        ensure!(first.map(|e| e.seq) == Some(5));
        store.close().await?;
        Ok(())
    }

    fn client_event(topic: &str, id: &str) -> Result<NewEvent> {
        Ok(NewEvent {
            id: id.into(),
            client_id: true,
            topic: Topic::parse(topic)?,
            ts: 9,
            key: None,
            payload: RawValue::from_string("1".into())?,
            headers: None,
            tags: None,
            caused_by: None,
            sid: None,
        })
    }

    #[tokio::test]
    async fn a_version_4_database_learns_what_retention_removed_before() -> Result<()> {
        let dir = tempfile::tempdir()?;
        {
            let conn = Connection::open(dir.path().join(DB_FILE))?;
            conn.execute_batch(&format!(
                "{}\nPRAGMA user_version = 4;",
                STEPS[..4].join("\n")
            ))?;
            // `a.x` lost its first two events (ordinals 1 and 2); `a.y` lost
            // everything up to seq 6; `a.z` lost nothing.
            for (seq, topic, tord) in [(4, "a.x", 3), (5, "a.x", 4), (7, "a.z", 1)] {
                conn.execute(
                    "INSERT INTO events (seq, id, topic, ts, payload, tord) VALUES (?1, ?2, ?3, 5, '1', ?4)",
                    params![seq, format!("e{seq}"), topic, tord],
                )?;
            }
            for (topic, events, last) in [("a.x", 4, 5), ("a.y", 2, 6), ("a.z", 1, 7)] {
                conn.execute(
                    "INSERT INTO topics (topic, events, last_seq) VALUES (?1, ?2, ?3)",
                    params![topic, events, last],
                )?;
            }
            conn.execute("UPDATE meta SET value = 7 WHERE name = 'last_seq'", [])?;
        }
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let pattern = |text: &str| Pattern::parse(text);
        // Not known exactly in a version 4 file: up to the first retained.
        ensure!(store.removed_since(&pattern("a.x")?, 1).await? == Some(3));
        ensure!(store.removed_since(&pattern("a.x")?, 4).await?.is_none());
        ensure!(store.removed_since(&pattern("a.*")?, 4).await? == Some(6));
        ensure!(store.removed_since(&pattern("a.z")?, 1).await?.is_none());
        store.close().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_version_3_database_keeps_its_dedup_entries_on_their_topic() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis(),
        )?;
        {
            let conn = Connection::open(dir.path().join(DB_FILE))?;
            conn.execute_batch(&format!(
                "{}\nPRAGMA user_version = 3;",
                STEPS[..3].join("\n")
            ))?;
            for (seq, topic, id) in [(1, "orders.created", "order-42"), (2, "evil.x", "x-1")] {
                conn.execute(
                    "INSERT INTO events (seq, id, topic, ts, payload, tord) VALUES (?1, ?2, ?3, 5, '1', 1)",
                    params![seq, id, topic],
                )?;
                conn.execute(
                    "INSERT INTO topics (topic, events, last_seq) VALUES (?1, 1, ?2)",
                    params![topic, seq],
                )?;
            }
            // Version 3 entries are keyed by id alone; the one of seq 99
            // points at an event retention removed.
            for (id, seq) in [("order-42", 1), ("x-1", 2), ("gone", 99)] {
                conn.execute(
                    "INSERT INTO dedup (id, seq, stored_at) VALUES (?1, ?2, ?3)",
                    params![id, seq, now],
                )?;
            }
            conn.execute("UPDATE meta SET value = 99 WHERE name = 'last_seq'", [])?;
        }
        let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
        let outcome = store
            .commit(CommitBatch {
                events: vec![
                    client_event("orders.created", "order-42")?,
                    client_event("evil.x", "order-42")?,
                    client_event("evil.x", "x-1")?,
                    client_event("orders.created", "x-1")?,
                    client_event("evil.x", "gone")?,
                ],
                ..CommitBatch::default()
            })
            .await?
            .events;
        ensure!(
            outcome[0]
                == Appended::Duplicate {
                    id: "order-42".into(),
                    seq: 1
                },
            "the migrated entry still guards its own topic: {:?}",
            outcome[0]
        );
        ensure!(
            matches!(&outcome[1], Appended::Stored { seq: 100, .. }),
            "the same id on another topic is another event: {:?}",
            outcome[1]
        );
        ensure!(
            outcome[2]
                == Appended::Duplicate {
                    id: "x-1".into(),
                    seq: 2
                },
            "{:?}",
            outcome[2]
        );
        ensure!(matches!(&outcome[3], Appended::Stored { seq: 101, .. }));
        ensure!(matches!(&outcome[4], Appended::Stored { seq: 102, .. }));
        store.close().await?;
        let conn = Connection::open(dir.path().join(DB_FILE))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        ensure!(version == SCHEMA_VERSION);
        let mut rows: Vec<(String, String, i64)> = conn
            .prepare("SELECT topic, id, seq FROM dedup ORDER BY seq")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.truncate(2);
        ensure!(
            rows == [
                ("orders.created".to_owned(), "order-42".to_owned(), 1),
                ("evil.x".to_owned(), "x-1".to_owned(), 2)
            ],
            "{rows:?}"
        );
        Ok(())
    }
}
