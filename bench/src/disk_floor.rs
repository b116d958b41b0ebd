//! The disk's floor under a durable hub: what one commit's IO costs in CPU
//! on this machine with no hub at all — a WAL-sized append (`pages` frames
//! of 24 + 4,096 bytes, each written as SQLite writes a WAL frame: header,
//! then page) and one `fdatasync`, at a fixed commit rate, into a file
//! whose blocks are already allocated (as a reused WAL's are).
//!
//! The paced scenario's CPU per event includes this cost once per commit;
//! a hub that acknowledges only after the fsync and never waits on a timer
//! cannot go below it. Reported next to the paced scenario so its CPU can
//! be read against what the disk alone takes.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::proc_stats;

/// SQLite's WAL frame: a 24-byte header, then the page.
const FRAME_HEADER_BYTES: usize = 24;
const PAGE_BYTES: usize = 4096;
/// The file written over and over (blocks allocated once, up front).
const FILE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct FloorOptions {
    /// Commits per second (each: the append, then `fdatasync`).
    pub commits_per_second: f64,
    /// WAL frames per commit.
    pub pages: usize,
    #[serde(skip)]
    pub duration: Duration,
}

impl Default for FloorOptions {
    /// One commit per millisecond (the paced harness sends its 5,000
    /// events/s in 1-ms bursts of 5: at best one commit each), 3 frames (a
    /// promhub commit of one topic: the events row, its index entry, the
    /// topic's row), 5 s.
    fn default() -> FloorOptions {
        FloorOptions {
            commits_per_second: 1000.0,
            pages: 3,
            duration: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub options: FloorOptions,
    pub commits: u64,
    pub bytes_per_commit: usize,
    /// This thread's user + system time per commit (µs).
    pub cpu_us_per_commit: f64,
    /// Wall time of one `fdatasync` (µs): median, 99th and 99.9th
    /// percentiles — a floor under the tail of any latency that waits for
    /// the sync.
    pub sync_p50_us: f64,
    pub sync_p99_us: f64,
    pub sync_p999_us: f64,
}

impl Floor {
    pub fn line(&self) -> String {
        format!(
            "{} commits of {} frames + fdatasync at {:.0}/s: {:.1} us CPU per commit; fdatasync p50 / p99 / p99.9 {:.0} / {:.0} / {:.0} us",
            self.commits,
            self.options.pages,
            self.options.commits_per_second,
            self.cpu_us_per_commit,
            self.sync_p50_us,
            self.sync_p99_us,
            self.sync_p999_us
        )
    }
}

/// Runs the floor in a file under `dir` (a real disk), on the calling
/// thread (blocking); the file is removed afterwards.
pub fn measure(dir: &Path, options: &FloorOptions) -> Result<Floor> {
    if !(options.commits_per_second.is_finite() && options.commits_per_second > 0.0) {
        bail!("the commit rate must be a positive number");
    }
    if options.pages == 0 {
        bail!("a commit writes at least one frame");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut file = tempfile::tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    preallocate(&mut file)?;
    let header = [0x5a_u8; FRAME_HEADER_BYTES];
    let page = [0xa5_u8; PAGE_BYTES];
    let commit_bytes = options.pages * (FRAME_HEADER_BYTES + PAGE_BYTES);
    let interval = Duration::from_secs_f64(1.0 / options.commits_per_second);
    let mut sync_us = Vec::new();
    let mut offset = 0u64;
    let cpu_start = thread_cpu_seconds()?;
    let started = Instant::now();
    let mut commits = 0u64;
    loop {
        // Commit k is due at k × interval; none is due at or past the end.
        let due_after = interval.mul_f64(commits as f64);
        if due_after >= options.duration || started.elapsed() >= options.duration {
            break;
        }
        let due = started + due_after;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if offset + commit_bytes as u64 > FILE_BYTES {
            offset = 0;
        }
        for _ in 0..options.pages {
            file.write_all_at(&header, offset)?;
            file.write_all_at(&page, offset + FRAME_HEADER_BYTES as u64)?;
            offset += (FRAME_HEADER_BYTES + PAGE_BYTES) as u64;
        }
        let sync_started = Instant::now();
        file.sync_data().context("fdatasync")?;
        sync_us.push(sync_started.elapsed().as_secs_f64() * 1e6);
        commits += 1;
    }
    let cpu = thread_cpu_seconds()? - cpu_start;
    sync_us.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let rank = ((sync_us.len() as f64 * q).ceil() as usize).clamp(1, sync_us.len().max(1));
        sync_us.get(rank - 1).copied().unwrap_or(0.0)
    };
    Ok(Floor {
        options: options.clone(),
        commits,
        bytes_per_commit: commit_bytes,
        cpu_us_per_commit: if commits > 0 {
            cpu * 1e6 / commits as f64
        } else {
            0.0
        },
        sync_p50_us: quantile(0.5),
        sync_p99_us: quantile(0.99),
        sync_p999_us: quantile(0.999),
    })
}

/// Writes every block of the file once and syncs it, so the measured
/// writes overwrite allocated blocks and `fdatasync` has no size or
/// allocation to record.
fn preallocate(file: &mut File) -> Result<()> {
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..(FILE_BYTES / chunk.len() as u64) {
        file.write_all(&chunk)?;
    }
    file.sync_all().context("syncing the preallocated file")?;
    Ok(())
}

fn thread_cpu_seconds() -> Result<f64> {
    proc_stats::cpu_seconds_of(Path::new("/proc/thread-self/stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_floor_run_paces_its_commits_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let options = FloorOptions {
            commits_per_second: 100.0,
            pages: 2,
            duration: Duration::from_millis(300),
        };
        let floor = measure(dir.path(), &options).unwrap();
        // Paced at 100/s for 0.3 s: commit k is due at k × 10 ms, so 30
        // are due in the window (fewer if a sync outlasts its slot).
        assert!(
            (1..=30).contains(&floor.commits),
            "commits: {}",
            floor.commits
        );
        assert_eq!(floor.bytes_per_commit, 2 * (24 + 4096));
        assert!(floor.cpu_us_per_commit.is_finite() && floor.cpu_us_per_commit >= 0.0);
        assert!(floor.sync_p50_us > 0.0);
        assert!(floor.sync_p50_us <= floor.sync_p99_us && floor.sync_p99_us <= floor.sync_p999_us);
        // The file is gone with the run.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn nonsense_options_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let zero_rate = FloorOptions {
            commits_per_second: 0.0,
            ..FloorOptions::default()
        };
        let error = measure(dir.path(), &zero_rate).unwrap_err().to_string();
        assert!(error.contains("positive"), "{error}");
        let no_pages = FloorOptions {
            pages: 0,
            ..FloorOptions::default()
        };
        let error = measure(dir.path(), &no_pages).unwrap_err().to_string();
        assert!(error.contains("at least one frame"), "{error}");
    }
}
