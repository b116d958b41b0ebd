//! Opening the embedded store's connections (the write connection with
//! its pragmas and schema, the read-only pool's) and the data dir's lock.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::schema::migrate;
use super::{SqliteOptions, backend, seq_to_sql};
use crate::store::StoreError;

/// Whether the file system holding `dir` has no room for a small write
/// (to explain an open that failed with a vague "disk I/O error").
pub(super) fn disk_is_full(dir: &Path) -> bool {
    use std::io::Write;
    let probe = dir.join(".promhub-space-probe");
    let result = std::fs::File::create(&probe).and_then(|mut file| {
        file.write_all(&[0; 64 * 1024])?;
        file.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::StorageFull)
}

fn apply_common_pragmas(conn: &Connection, options: &SqliteOptions) -> Result<(), StoreError> {
    conn.busy_timeout(options.busy_timeout).map_err(backend)?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_size_kib))
        .map_err(backend)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

pub(super) fn open_write_connection(
    path: &Path,
    options: &SqliteOptions,
) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    apply_common_pragmas(&conn, options)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "cannot switch {} to WAL mode (got {mode})",
            path.display()
        )));
    }
    // PUBACK is sent only once a commit is synced: SQLite syncs the WAL
    // inside every commit; with NORMAL only before a checkpoint (the
    // commit is then in the OS's page cache: it survives the process, not
    // the OS). (Checkpoints are the store's, driven by the WAL hook
    // installed after the migration, which replaces SQLite's automatic
    // ones.)
    let synchronous = if options.sync_each_commit {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(backend)?;
    // Keep the WAL file from staying huge after a burst: cut back to the
    // bound whenever SQLite restarts it (the WAL bound truncates it when it
    // grows past the bound anyway, see `wal.rs`).
    conn.pragma_update(
        None,
        "journal_size_limit",
        i64::try_from(options.wal_limit_bytes).unwrap_or(i64::MAX),
    )
    .map_err(backend)?;
    migrate(&conn)?;
    Ok(conn)
}

pub(super) fn open_read_connection(
    path: &Path,
    options: &SqliteOptions,
) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    apply_common_pragmas(&conn, options)?;
    if options.mmap_size > 0 {
        conn.pragma_update(None, "mmap_size", seq_to_sql(options.mmap_size))
            .map_err(backend)?;
    }
    Ok(conn)
}

/// File locked (an OS advisory lock, released when the process dies) while
/// a store has the data dir open.
pub const LOCK_FILE: &str = "promhub.lock";

/// Takes the data dir's lock: two hubs on one folder would each hand out
/// seqs and never see the other's events live, so the second is refused.
pub(super) fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "data dir {} is in use by another promhub hub (or store); stop it or pick another --data",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}
