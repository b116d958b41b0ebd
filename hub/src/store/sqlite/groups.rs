//! Consumer-group state in the embedded store: its changes inside a
//! commit (cursors, done marks, attempts, dead letters) and its reads.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, backend, bits_to_sql, from_sql_int, seq_to_sql};
use crate::store::{CommitBatch, DeadLetter, GroupKey, GroupRecord, StoreError};

/// The group key in columns 0 (pattern) and 1 (group) of a row.
fn group_key_of(row: &Row<'_>) -> Result<GroupKey, StoreError> {
    Ok(GroupKey {
        pattern: row.get(0).map_err(backend)?,
        group: row.get(1).map_err(backend)?,
    })
}

/// A group's record: its cursor with the done marks and recorded attempts
/// above it.
fn group_record_in(
    tx: &rusqlite::Transaction<'_>,
    key: GroupKey,
    cursor: i64,
) -> Result<GroupRecord, StoreError> {
    let mut stmt = tx
        .prepare_cached("SELECT seq FROM group_done WHERE pattern = ?1 AND grp = ?2 ORDER BY seq")
        .map_err(backend)?;
    let done_above = stmt
        .query_map(params![key.pattern, key.group], |row| row.get::<_, i64>(0))
        .map_err(backend)?
        .map(|r| r.map(from_sql_int).map_err(backend))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT seq, attempts FROM group_attempts
             WHERE pattern = ?1 AND grp = ?2 AND seq > ?3 ORDER BY seq",
        )
        .map_err(backend)?;
    let attempts_above = stmt
        .query_map(params![key.pattern, key.group, cursor], |row| {
            Ok((from_sql_int(row.get(0)?), row.get::<_, u32>(1)?))
        })
        .map_err(backend)?
        .map(|r| r.map_err(backend))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GroupRecord {
        key,
        cursor: from_sql_int(cursor),
        done_above,
        attempts_above,
    })
}

pub(super) fn apply_group_changes(
    tx: &rusqlite::Transaction<'_>,
    batch: &CommitBatch,
) -> Result<(), StoreError> {
    if !batch.progress.is_empty() {
        let mut put_cursor = tx
            .prepare_cached(
                "INSERT INTO groups (pattern, grp, cursor) VALUES (?1, ?2, ?3)
                 ON CONFLICT (pattern, grp) DO UPDATE SET cursor = excluded.cursor",
            )
            .map_err(backend)?;
        let mut drop_done = tx
            .prepare_cached("DELETE FROM group_done WHERE pattern = ?1 AND grp = ?2 AND seq <= ?3")
            .map_err(backend)?;
        let mut add_done = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO group_done (pattern, grp, seq) VALUES (?1, ?2, ?3)",
            )
            .map_err(backend)?;
        for p in &batch.progress {
            let cursor = seq_to_sql(p.cursor);
            put_cursor
                .execute(params![p.key.pattern, p.key.group, cursor])
                .map_err(backend)?;
            drop_done
                .execute(params![p.key.pattern, p.key.group, cursor])
                .map_err(backend)?;
            for seq in p.done_above.iter().map(|&seq| seq_to_sql(seq)) {
                if seq > cursor {
                    add_done
                        .execute(params![p.key.pattern, p.key.group, seq])
                        .map_err(backend)?;
                }
            }
            if !p.attempt_changes.is_empty() {
                change_attempts(tx, &p.key, &p.attempt_changes)?;
            }
        }
    }
    if !batch.dead_letters.is_empty() {
        let mut put = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters
                    (pattern, grp, seq, event_id, reason, attempts, dead_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(backend)?;
        for d in &batch.dead_letters {
            put.execute(params![
                d.key.pattern,
                d.key.group,
                seq_to_sql(d.seq),
                d.event_id,
                d.reason,
                d.attempts,
                bits_to_sql(d.dead_at),
            ])
            .map_err(backend)?;
        }
    }
    if !batch.removed_dead_letters.is_empty() {
        let mut delete = tx
            .prepare_cached("DELETE FROM dead_letters WHERE pattern = ?1 AND grp = ?2 AND seq = ?3")
            .map_err(backend)?;
        for r in &batch.removed_dead_letters {
            delete
                .execute(params![r.key.pattern, r.key.group, seq_to_sql(r.seq)])
                .map_err(backend)?;
        }
    }
    Ok(())
}

/// Records (`attempts > 0`) or forgets (`0`) attempts of a group's events.
fn change_attempts(
    tx: &rusqlite::Transaction<'_>,
    key: &GroupKey,
    changes: &[(u64, u32)],
) -> Result<(), StoreError> {
    let mut put = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO group_attempts (pattern, grp, seq, attempts)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    let mut forget = tx
        .prepare_cached("DELETE FROM group_attempts WHERE pattern = ?1 AND grp = ?2 AND seq = ?3")
        .map_err(backend)?;
    for &(seq, attempts) in changes {
        let seq = seq_to_sql(seq);
        if attempts == 0 {
            forget.execute(params![key.pattern, key.group, seq])
        } else {
            put.execute(params![key.pattern, key.group, seq, attempts])
        }
        .map_err(backend)?;
    }
    Ok(())
}

pub(super) async fn load_group(
    store: &SqliteStore,
    key: &GroupKey,
) -> Result<Option<GroupRecord>, StoreError> {
    let key = key.clone();
    store
        .read(move |tx, _| {
            let cursor = tx
                .prepare_cached("SELECT cursor FROM groups WHERE pattern = ?1 AND grp = ?2")
                .and_then(|mut s| {
                    s.query_row(params![key.pattern, key.group], |row| row.get::<_, i64>(0))
                        .optional()
                })
                .map_err(backend)?;
            match cursor {
                Some(cursor) => group_record_in(tx, key, cursor).map(Some),
                None => Ok(None),
            }
        })
        .await
}

pub(super) async fn groups_page(
    store: &SqliteStore,
    after: Option<&GroupKey>,
    limit: usize,
) -> Result<Vec<GroupRecord>, StoreError> {
    let after = after.cloned();
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    store
        .read(move |tx, _| {
            let mut page = Vec::new();
            {
                let mut stmt;
                let mut rows = match &after {
                    // The primary key's order: one index range, whatever
                    // the number of groups.
                    Some(after) => {
                        stmt = tx
                            .prepare_cached(
                                "SELECT pattern, grp, cursor FROM groups
                             WHERE (pattern, grp) > (?1, ?2)
                             ORDER BY pattern, grp LIMIT ?3",
                            )
                            .map_err(backend)?;
                        stmt.query(params![after.pattern, after.group, limit_sql])
                    }
                    None => {
                        stmt = tx
                            .prepare_cached(
                                "SELECT pattern, grp, cursor FROM groups
                             ORDER BY pattern, grp LIMIT ?1",
                            )
                            .map_err(backend)?;
                        stmt.query(params![limit_sql])
                    }
                }
                .map_err(backend)?;
                while let Some(row) = rows.next().map_err(backend)? {
                    page.push((group_key_of(row)?, row.get::<_, i64>(2).map_err(backend)?));
                }
            }
            page.into_iter()
                .map(|(key, cursor)| group_record_in(tx, key, cursor))
                .collect()
        })
        .await
}

pub(super) async fn group_count(store: &SqliteStore) -> Result<u64, StoreError> {
    store
        .read(|tx, _| {
            tx.prepare_cached("SELECT count(*) FROM groups")
                .and_then(|mut s| s.query_row([], |row| row.get::<_, i64>(0)))
                .map(from_sql_int)
                .map_err(backend)
        })
        .await
}

pub(super) async fn groups(store: &SqliteStore) -> Result<Vec<GroupRecord>, StoreError> {
    store
        .read(|tx, _| {
            let mut records: BTreeMap<GroupKey, GroupRecord> = BTreeMap::new();
            let mut stmt = tx
                .prepare_cached("SELECT pattern, grp, cursor FROM groups")
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let key = group_key_of(row)?;
                let cursor = from_sql_int(row.get(2).map_err(backend)?);
                records.insert(
                    key.clone(),
                    GroupRecord {
                        key,
                        cursor,
                        done_above: Vec::new(),
                        attempts_above: Vec::new(),
                    },
                );
            }
            let mut stmt = tx
                .prepare_cached(
                    "SELECT pattern, grp, seq FROM group_done ORDER BY pattern, grp, seq",
                )
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let key = group_key_of(row)?;
                let seq = from_sql_int(row.get(2).map_err(backend)?);
                // A mark without its group row cannot be written by commit.
                if let Some(record) = records.get_mut(&key) {
                    record.done_above.push(seq);
                }
            }
            let mut stmt = tx
                .prepare_cached(
                    "SELECT pattern, grp, seq, attempts FROM group_attempts
                 ORDER BY pattern, grp, seq",
                )
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let key = group_key_of(row)?;
                let seq = from_sql_int(row.get(2).map_err(backend)?);
                let used: u32 = row.get(3).map_err(backend)?;
                if let Some(record) = records.get_mut(&key).filter(|r| seq > r.cursor) {
                    record.attempts_above.push((seq, used));
                }
            }
            Ok(records.into_values().collect())
        })
        .await
}

pub(super) async fn dead_letters(
    store: &SqliteStore,
    key: &GroupKey,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let key = key.clone();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store
        .read(move |tx, _| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, event_id, reason, attempts, dead_at FROM dead_letters
                 WHERE pattern = ?1 AND grp = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                )
                .map_err(backend)?;
            let mut rows = stmt
                .query(params![
                    key.pattern,
                    key.group,
                    seq_to_sql(after_seq),
                    limit
                ])
                .map_err(backend)?;
            let mut letters = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                letters.push(DeadLetter {
                    key: key.clone(),
                    seq: from_sql_int(row.get(0).map_err(backend)?),
                    event_id: row.get(1).map_err(backend)?,
                    reason: row.get(2).map_err(backend)?,
                    attempts: row.get(3).map_err(backend)?,
                    dead_at: from_sql_int(row.get::<_, i64>(4).map_err(backend)?),
                });
            }
            Ok(letters)
        })
        .await
}

pub(super) async fn dead_letter_count(
    store: &SqliteStore,
    key: &GroupKey,
) -> Result<u64, StoreError> {
    let key = key.clone();
    store
        .read(move |tx, _| {
            tx.prepare_cached("SELECT count(*) FROM dead_letters WHERE pattern = ?1 AND grp = ?2")
                .and_then(|mut s| {
                    s.query_row(params![key.pattern, key.group], |row| row.get::<_, i64>(0))
                })
                .map(from_sql_int)
                .map_err(backend)
        })
        .await
}
