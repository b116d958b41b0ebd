//! Options of a publish and of a subscription.

use std::collections::BTreeMap;
use std::time::Duration;

use promhub_core::frames::{Millis, PublishOpts, StartFrom, SubscribeOpts};

/// Options of [`Client::publish`](crate::Client::publish); the default
/// publishes with none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    pub(crate) opts: PublishOpts,
}

impl PublishOptions {
    pub fn new() -> Self {
        PublishOptions::default()
    }

    /// The latest-by-key key (e.g. `host:name:pid`): the hub keeps the
    /// latest event of every key for snapshots.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.opts.key = Some(key.into());
        self
    }

    /// A client-chosen event id. The hub de-duplicates by it, which makes
    /// retrying a publish whose outcome is unknown safe; the client itself
    /// re-sends such a publish after a reconnect.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.opts.id = Some(id.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.opts
            .headers
            .get_or_insert_with(BTreeMap::new)
            .insert(name.into(), value.into());
        self
    }

    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.opts.tags = Some(tags.into_iter().map(Into::into).collect());
        self
    }

    /// Ids of the events that caused this one.
    pub fn caused_by<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.opts.caused_by = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// A session or stream id.
    pub fn sid(mut self, sid: impl Into<String>) -> Self {
        self.opts.sid = Some(sid.into());
        self
    }

    /// The event time (Unix ms); by default the hub's clock.
    pub fn ts(mut self, ts: Millis) -> Self {
        self.opts.ts = Some(ts);
        self
    }
}

impl From<PublishOpts> for PublishOptions {
    fn from(opts: PublishOpts) -> Self {
        PublishOptions { opts }
    }
}

/// Events a subscription buffers between the connection and the
/// application by default.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 1024;

/// Options of [`Client::subscribe`](crate::Client::subscribe).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub(crate) opts: SubscribeOpts,
    pub(crate) buffer: Option<usize>,
}

impl SubscribeOptions {
    pub fn new() -> Self {
        SubscribeOptions::default()
    }

    /// Where a new consumer group starts (default: the next event
    /// published). An existing group keeps its cursor.
    pub fn from(mut self, from: StartFrom) -> Self {
        self.opts.from = Some(from);
        self
    }

    /// A new group starts at the first retained event.
    pub fn from_earliest(self) -> Self {
        self.from(StartFrom::Earliest)
    }

    /// The most unacknowledged events the hub hands this connection at
    /// once for this subscription (flow control).
    pub fn max_inflight(mut self, max_inflight: u32) -> Self {
        self.opts.max_inflight = Some(max_inflight);
        self
    }

    /// How long a delivery may stay unacknowledged before the hub delivers
    /// it again ([`Delivery::working`](crate::Delivery::working) pushes the
    /// deadline back).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.opts.ack_timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Attempts before an event is dead-lettered.
    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.opts.max_deliver = Some(max_deliver);
        self
    }

    /// First deliver the latest event of every key matching the pattern
    /// (marked [`Delivery::is_snapshot`](crate::Delivery::is_snapshot)).
    pub fn snapshot(mut self, snapshot: bool) -> Self {
        self.opts.snapshot = Some(snapshot);
        self
    }

    /// Deliveries held for the application before it reads them (default
    /// [`DEFAULT_SUBSCRIPTION_BUFFER`], at least twice `max_inflight`).
    /// When the application falls further behind, deliveries are dropped
    /// and a [`ConnectionEvent::SlowConsumer`](crate::ConnectionEvent::SlowConsumer)
    /// is reported: an ephemeral subscription loses them, a durable group
    /// gets them again after the ack timeout.
    pub fn buffer(mut self, deliveries: usize) -> Self {
        self.buffer = Some(deliveries);
        self
    }

    pub(crate) fn buffer_size(&self) -> usize {
        let inflight = self.opts.max_inflight.map_or(0, |n| n as usize);
        self.buffer
            .unwrap_or(DEFAULT_SUBSCRIPTION_BUFFER.max(inflight.saturating_mul(2)))
            .max(1)
    }
}

impl From<SubscribeOpts> for SubscribeOptions {
    fn from(opts: SubscribeOpts) -> Self {
        SubscribeOptions { opts, buffer: None }
    }
}
