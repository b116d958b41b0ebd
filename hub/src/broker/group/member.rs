//! A member of a group: one connection's subscription with its limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use promhub_core::Policy;

use super::ConnId;
use crate::send_queue::SendQueue;

/// Per-member limits (from SUBSCRIBE opts, else the group defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberOpts {
    pub max_inflight: u32,
    pub ack_timeout_ms: u64,
    pub max_deliver: u32,
    /// Bound on the bytes of unacknowledged group deliveries of the
    /// member's connection (the group default `max_inflight_bytes`; not a
    /// SUBSCRIBE option).
    pub max_inflight_bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Member {
    pub conn: ConnId,
    pub send_queue: Arc<SendQueue>,
    pub policy: Arc<Policy>,
    pub opts: MemberOpts,
    pub(super) inflight: u32,
    /// Event bytes of the unacknowledged deliveries of the connection,
    /// shared by its members of every group (only the broker task touches
    /// it; atomic because it is shared).
    inflight_bytes: Arc<AtomicUsize>,
}

impl Member {
    pub fn new(
        conn: ConnId,
        send_queue: Arc<SendQueue>,
        policy: Arc<Policy>,
        opts: MemberOpts,
    ) -> Self {
        Member {
            conn,
            send_queue,
            policy,
            opts,
            inflight: 0,
            inflight_bytes: Arc::default(),
        }
    }

    /// Counts this member's unacknowledged bytes in the connection's
    /// counter, which its other group subscriptions share.
    pub fn sharing_bytes(mut self, connection_bytes: Arc<AtomicUsize>) -> Self {
        self.inflight_bytes = connection_bytes;
        self
    }

    pub(super) fn add_bytes(&self, bytes: usize) {
        self.inflight_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn remove_bytes(&self, bytes: usize) {
        // Saturating: a miscount must not wrap into "never again".
        let _ = self
            .inflight_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(bytes))
            });
    }

    /// Held back by the connection's byte bound. With nothing in flight a
    /// member always gets one delivery (however large, and whatever its
    /// connection's other groups hold), so it can never stall.
    pub(super) fn over_byte_bound(&self) -> bool {
        self.inflight > 0
            && self.inflight_bytes.load(Ordering::Relaxed) >= self.opts.max_inflight_bytes
    }
}
