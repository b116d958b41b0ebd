//! Connection caps: every accepted socket holds a [`Slot`] from accept
//! until it closes (an HTTP connection, or the WebSocket it became), so a
//! flood of half-open sockets counts like real clients and can never take
//! the descriptors the hub itself needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Descriptors the default `max_connections` leaves for everything that
/// is not a client socket: stdio and the log, the listener, the runtime's
/// epoll and wake-up descriptors, the store (SQLite's database, WAL, shared
/// memory and lock files; MongoDB's connection pool and those of drained
/// outbox collections), JWKS fetches, and the sockets being answered with
/// 503 ([`MAX_REFUSING`]). Half the limit when the limit is below twice
/// this.
pub(crate) const FD_RESERVE: u64 = 256;

/// Sockets over a cap that are being answered with 503 at once; past it
/// more are closed without an answer (each holds a descriptor for at most
/// the refusal timeout).
pub(crate) const MAX_REFUSING: usize = 64;

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// `limits.max_connections`.
    Total,
    /// `limits.max_connections_per_ip`.
    PerIp,
}

/// The open-connection counters.
#[derive(Debug)]
pub(crate) struct Caps {
    max: usize,
    per_ip: Option<usize>,
    open: AtomicUsize,
    /// Open connections per client address; only kept with a per-IP cap.
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    idle: Notify,
}

/// One open connection's place under the caps; freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Caps {
    pub(crate) fn new(max: usize, per_ip: Option<usize>) -> Arc<Caps> {
        Arc::new(Caps {
            max,
            per_ip,
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
            idle: Notify::new(),
        })
    }

    /// A slot for a new connection from `ip`, or which cap it is over.
    pub(crate) fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Over> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            });
        if taken.is_err() {
            return Err(Over::Total);
        }
        // An IPv4 client on a dual-stack socket is the same client.
        let ip = ip.to_canonical();
        if let Some(per_ip) = self.per_ip {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            let open = by_ip.entry(ip).or_insert(0);
            if *open >= per_ip {
                if *open == 0 {
                    by_ip.remove(&ip);
                }
                drop(by_ip);
                self.leave();
                return Err(Over::PerIp);
            }
            *open += 1;
        }
        Ok(Slot {
            caps: Arc::clone(self),
            ip,
        })
    }

    /// Open connections now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn leave(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.caps.per_ip.is_some() {
            let mut by_ip = self.caps.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(open) = by_ip.get_mut(&self.ip) {
                *open -= 1;
                if *open == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
        self.caps.leave();
    }
}

/// `max_connections` when it is not configured: the file-descriptor limit,
/// raised to its hard limit first, minus [`FD_RESERVE`] (or half of it,
/// for a small limit). Returns (cap, limit).
pub(crate) fn from_fd_limit() -> (usize, u64) {
    let limit = raise_fd_limit();
    (cap_for(limit), limit)
}

/// Raises the soft file-descriptor limit to the hard limit; the limit in
/// force afterwards.
pub(crate) fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024);
            tracing::warn!(%error, soft, "cannot raise the file-descriptor limit; keeping it");
            soft
        }
    }
}

/// The connection cap `limit` descriptors allow.
pub(crate) fn cap_for(limit: u64) -> usize {
    let reserve = FD_RESERVE.min(limit / 2);
    usize::try_from(limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn slots_count_until_dropped_and_caps_refuse() {
        let caps = Caps::new(3, Some(2));
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a1 = caps.try_enter(a).unwrap();
        let _a2 = caps.try_enter(a).unwrap();
        assert_eq!(caps.try_enter(a).unwrap_err(), Over::PerIp);
        let _b1 = caps.try_enter(b).unwrap();
        assert_eq!(caps.open(), 3);
        assert_eq!(caps.try_enter(b).unwrap_err(), Over::Total);
        drop(a1);
        assert_eq!(caps.open(), 2);
        let _a3 = caps.try_enter(a).unwrap();
        // A per-IP refusal gives its total slot back.
        assert_eq!(caps.open(), 3);
        // The mapped form of an IPv4 address is the same client.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        drop(_b1);
        assert_eq!(caps.try_enter(mapped).unwrap_err(), Over::PerIp);
        assert_eq!(caps.open(), 2);
    }

    #[test]
    fn the_derived_cap_leaves_a_reserve() {
        assert_eq!(cap_for(1_048_576), 1_048_576 - 256);
        assert_eq!(cap_for(1024), 768);
        assert_eq!(cap_for(256), 128);
        assert_eq!(cap_for(1), 1);
    }
}
