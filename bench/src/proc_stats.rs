//! CPU time and memory of a process, from `/proc` (Linux).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, which Linux fixes at
/// 100 per second for user space whatever the kernel's own HZ.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process's CPU time (user + system) in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    cpu_seconds_of(Path::new(&format!("/proc/{pid}/stat")))
}

/// The CPU time (user + system, seconds) in a `stat` file of `/proc`: a
/// process's, or a thread's (`/proc/thread-self/stat`).
pub fn cpu_seconds_of(path: &Path) -> Result<f64> {
    let stat =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based).
    let ticks = |index: usize| -> Result<f64> {
        fields
            .get(index - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .context("malformed stat")
    };
    Ok((ticks(14)? + ticks(15)?) / TICKS_PER_SECOND)
}

/// `VmRSS` (resident now) and `VmHWM` (peak resident) in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// What a process used between [`Meter::start`] and [`Meter::finish`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Usage {
    pub pid: u32,
    pub cpu_seconds: f64,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
    /// The largest RSS seen by the sampler during the run.
    pub rss_kib_max: u64,
}

/// Measures a process over a run; [`sample`](Meter::sample) it now and
/// then to catch the peak RSS of this run (`VmHWM` covers the whole life
/// of the process).
#[derive(Debug)]
pub struct Meter {
    pid: u32,
    started: Instant,
    cpu_start: f64,
    rss_start: u64,
    rss_max: u64,
}

impl Meter {
    pub fn start(pid: u32) -> Result<Meter> {
        let (rss, _) = memory_kib(pid)?;
        Ok(Meter {
            pid,
            started: Instant::now(),
            cpu_start: cpu_seconds(pid)?,
            rss_start: rss,
            rss_max: rss,
        })
    }

    pub fn sample(&mut self) {
        if let Ok((rss, _)) = memory_kib(self.pid) {
            self.rss_max = self.rss_max.max(rss);
        }
    }

    pub fn finish(mut self) -> Result<Usage> {
        self.sample();
        let wall = self.started.elapsed().max(Duration::from_millis(1));
        let cpu = (cpu_seconds(self.pid)? - self.cpu_start).max(0.0);
        let (rss_end, _) = memory_kib(self.pid)?;
        Ok(Usage {
            pid: self.pid,
            cpu_seconds: cpu,
            cpu_percent: 100.0 * cpu / wall.as_secs_f64(),
            rss_kib_start: self.rss_start,
            rss_kib_end: rss_end,
            rss_kib_max: self.rss_max.max(rss_end),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        // Burn a little CPU so the reading has something to show.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        let (rss, peak) = memory_kib(pid).unwrap();
        assert!(rss > 0 && peak >= rss);
        let usage = Meter::start(pid).unwrap().finish().unwrap();
        assert!(usage.rss_kib_max >= usage.rss_kib_end.min(usage.rss_kib_start));
        assert!(memory_kib(u32::MAX).is_err());
    }
}
