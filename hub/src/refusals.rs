//! Counts of everything the hub refuses, cuts or makes wait to protect
//! itself (semantics.md §4a): one process-wide counter per [`Refusal`],
//! exported as `promhub_refusals_total{what="…"}`.
//!
//! Static and lock-free because the places that count (accept loop,
//! connection readers, broker, import handler) have no common owner, and a
//! refusal must cost no more than a relaxed add.

use std::sync::atomic::{AtomicU64, Ordering};

/// What was refused, cut or delayed. The names are the `what` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A connection over `limits.max_connections`, answered with HTTP 503.
    ConnectionCap,
    /// A connection over `limits.max_connections_per_ip`, HTTP 503.
    ConnectionsPerIp,
    /// An upgrade whose `Origin` is not in `allowed_origins`, HTTP 403.
    Origin,
    /// A socket that did not complete the HTTP upgrade in time.
    UpgradeDeadline,
    /// A WebSocket that did not send AUTH in time.
    AuthDeadline,
    /// A frame over the hard size limit (closed with 1009).
    FrameTooBig,
    /// A text frame that is not UTF-8 (closed with 1007).
    InvalidUtf8,
    /// A SUBSCRIBE over `limits.max_subscriptions_per_connection`.
    SubscriptionCap,
    /// A new group over `limits.max_groups`.
    GroupCap,
    /// A group subscription over `limits.max_groups_per_connection`.
    GroupsPerConnection,
    /// A snapshot cut short because its reader fell behind (4009).
    SnapshotCut,
    /// A group delivery or read-ahead that waited for the shared group
    /// buffer (`limits.group_buffer_bytes`).
    GroupBudgetWait,
    /// An imported line refused by a publish quota.
    ImportRateLimited,
    /// An imported line over the frame size limit.
    ImportLineTooLarge,
    /// A commit that failed because the disk is full.
    DiskFull,
}

impl Refusal {
    /// Every kind, in the order of the counters.
    pub const ALL: [Refusal; 15] = [
        Refusal::ConnectionCap,
        Refusal::ConnectionsPerIp,
        Refusal::Origin,
        Refusal::UpgradeDeadline,
        Refusal::AuthDeadline,
        Refusal::FrameTooBig,
        Refusal::InvalidUtf8,
        Refusal::SubscriptionCap,
        Refusal::GroupCap,
        Refusal::GroupsPerConnection,
        Refusal::SnapshotCut,
        Refusal::GroupBudgetWait,
        Refusal::ImportRateLimited,
        Refusal::ImportLineTooLarge,
        Refusal::DiskFull,
    ];

    /// The `what` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ConnectionCap => "connection_cap",
            Refusal::ConnectionsPerIp => "connections_per_ip",
            Refusal::Origin => "origin",
            Refusal::UpgradeDeadline => "upgrade_deadline",
            Refusal::AuthDeadline => "auth_deadline",
            Refusal::FrameTooBig => "frame_too_big",
            Refusal::InvalidUtf8 => "invalid_utf8",
            Refusal::SubscriptionCap => "subscription_cap",
            Refusal::GroupCap => "group_cap",
            Refusal::GroupsPerConnection => "groups_per_connection",
            Refusal::SnapshotCut => "snapshot_cut",
            Refusal::GroupBudgetWait => "group_budget_wait",
            Refusal::ImportRateLimited => "import_rate_limited",
            Refusal::ImportLineTooLarge => "import_line_too_large",
            Refusal::DiskFull => "disk_full",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static COUNTS: [AtomicU64; Refusal::ALL.len()] = [const { AtomicU64::new(0) }; Refusal::ALL.len()];

/// Counts one refusal.
pub fn count(what: Refusal) {
    COUNTS[what.index()].fetch_add(1, Ordering::Relaxed);
}

/// How many of `what` since the process started.
pub fn total(what: Refusal) -> u64 {
    COUNTS[what.index()].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_counter_and_name() {
        let names: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
        for (i, what) in Refusal::ALL.iter().enumerate() {
            assert_eq!(what.index(), i, "{what:?} out of order in ALL");
        }
        let before = total(Refusal::Origin);
        count(Refusal::Origin);
        assert_eq!(total(Refusal::Origin), before + 1);
    }
}
