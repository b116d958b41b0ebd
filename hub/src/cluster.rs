//! The hub registry (semantics.md §7): every hub on a MongoDB store
//! registers itself in the database's `hubs` collection with a heartbeat
//! lease, so hubs sharing one database know of each other without any
//! configuration.
//!
//! One document per hub: `{_id: <hub id>, pid, address, started,
//! heartbeat, lease_until}`. The hub id is `hub-PID-UUID`, new at each
//! start (the same id names the hub in the outbox drain leases). A task
//! renews the lease every third of `cluster_lease_ms` (upserting, so a
//! document removed behind the hub's back comes back), lists the hubs after
//! each renewal and logs at info every other hub that joined (its lease
//! appeared) or left (its document was removed by a clean shutdown, or its
//! lease ran out: a crashed hub). A hub that stops cleanly deletes its
//! document. Documents whose lease ran out more than `PURGE_AFTER_LEASES`
//! leases ago are deleted by whichever hub renews next.
//!
//! `GET /cluster` (ops API) lists the documents with `alive` = lease still
//! running. Leases are judged by the clocks of the hubs, which must
//! roughly agree (as for the outbox drain leases).
//!
//! Each renewal also writes the hub's [`HubSnapshot`] (`snapshot`): its
//! counters and its members of each group (at most
//! [`MAX_SNAPSHOT_GROUPS`] groups), so the ops API of any hub answers for
//! the whole cluster (`/metrics`, `/groups`, `/cursors`, `/lag`), as of
//! each hub's last renewal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::{Collection, Database};
use promhub_core::frames::Millis;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerHandle;
use crate::metrics::Metrics;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The collection of the hubs of a database.
pub const HUBS_COLLECTION: &str = "hubs";
/// Expired registrations are deleted this many leases after they ran out.
const PURGE_AFTER_LEASES: u64 = 10;
/// Groups at most in a hub's snapshot (those with the most members first):
/// bounds the registry document (about 200 bytes per group).
pub const MAX_SNAPSHOT_GROUPS: usize = 1000;

/// What a hub tells the others at each renewal: its counters since it
/// started and its part of each group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSnapshot {
    pub connections: u64,
    pub publishes: u64,
    pub live_deliveries: u64,
    pub group_deliveries: u64,
    pub acks: u64,
    pub nacks: u64,
    pub redeliveries: u64,
    pub dead_letters: u64,
    /// Groups with members on this hub (at most [`MAX_SNAPSHOT_GROUPS`]).
    pub groups: Vec<HubGroup>,
    /// Groups with members on this hub that the list left out.
    pub groups_left_out: u64,
}

/// One hub's part of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubGroup {
    pub pattern: String,
    pub group: String,
    pub members: u64,
    /// Deliveries its members hold unacknowledged.
    pub inflight: u64,
    /// Events this hub waits on other hubs for.
    pub held_elsewhere: u64,
    /// Since the group was loaded on this hub.
    pub acked: u64,
    pub delivered: u64,
}

impl HubSnapshot {
    /// This hub's counters now (no groups).
    pub(crate) fn counters(metrics: &Metrics) -> HubSnapshot {
        let counters = &metrics.groups;
        HubSnapshot {
            connections: u64::try_from(metrics.connections_open.get()).unwrap_or(0),
            publishes: metrics.publishes.get(),
            live_deliveries: metrics.live_deliveries.get(),
            group_deliveries: counters.deliveries.get(),
            acks: counters.acks.get(),
            nacks: counters.nacks.get(),
            redeliveries: counters.redeliveries.get(),
            dead_letters: counters.dead_letters.get(),
            groups: Vec::new(),
            groups_left_out: 0,
        }
    }

    /// The counters by name, for `/metrics`.
    pub(crate) fn counts(&self) -> [(&'static str, u64); 8] {
        [
            ("connections", self.connections),
            ("publishes", self.publishes),
            ("live_deliveries", self.live_deliveries),
            ("group_deliveries", self.group_deliveries),
            ("acks", self.acks),
            ("nacks", self.nacks),
            ("redeliveries", self.redeliveries),
            ("dead_letters", self.dead_letters),
        ]
    }
}

/// This hub's snapshot now.
pub(crate) async fn snapshot(metrics: &Metrics, broker: &BrokerHandle) -> HubSnapshot {
    let mut views = broker.inspect(None).await.groups;
    views.retain(|view| !view.members.is_empty());
    views.sort_by_key(|view| std::cmp::Reverse(view.members.len()));
    let left_out = views.len().saturating_sub(MAX_SNAPSHOT_GROUPS);
    views.truncate(MAX_SNAPSHOT_GROUPS);
    HubSnapshot {
        groups: views
            .into_iter()
            .map(|view| HubGroup {
                pattern: view.key.pattern,
                group: view.key.group,
                members: view.members.len() as u64,
                inflight: view.members.iter().map(|m| u64::from(m.inflight)).sum(),
                held_elsewhere: view.held_elsewhere as u64,
                acked: view.acked,
                delivered: view.delivered,
            })
            .collect(),
        groups_left_out: left_out as u64,
        ..HubSnapshot::counters(metrics)
    }
}

/// A new hub id: `hub-PID-UUID` (unique per process start).
pub fn new_hub_id() -> String {
    format!(
        "hub-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    )
}

/// One hub's registration, as `GET /cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubLease {
    pub id: String,
    pub pid: u32,
    /// The address the hub's listener is bound to (`ws://HOST:PORT/PATH`).
    pub address: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    pub lease_until_ms: i64,
    /// The lease is still running (at the asking hub's clock).
    pub alive: bool,
    /// What the hub reported at its last renewal.
    pub snapshot: Option<HubSnapshot>,
}

/// How many other hubs had a running lease at the registry's last listing,
/// shared with the log follower: a hub alone on its database need not tail
/// the log for other hubs' commits. Unknown (as if there were others)
/// until the first listing.
#[derive(Debug, Clone)]
pub struct OtherHubs(Arc<AtomicUsize>);

impl Default for OtherHubs {
    fn default() -> Self {
        OtherHubs(Arc::new(AtomicUsize::new(usize::MAX)))
    }
}

impl OtherHubs {
    /// Whether the last listing found no other hub alive.
    pub fn none(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }

    fn set(&self, count: usize) {
        self.0.store(count, Ordering::Release);
    }
}

/// This hub's registration in one database.
#[derive(Debug)]
pub struct Registry {
    hubs: Collection<Document>,
    id: String,
    address: String,
    started: Millis,
    lease: Duration,
}

impl Registry {
    pub fn new(
        db: &Database,
        id: impl Into<String>,
        address: impl Into<String>,
        lease: Duration,
        now: Millis,
    ) -> Registry {
        Registry {
            hubs: db.collection(HUBS_COLLECTION),
            id: id.into(),
            address: address.into(),
            started: now,
            lease,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Registers this hub, or renews its lease, until `now + lease`, with
    /// its snapshot when given.
    pub async fn heartbeat(
        &self,
        now: Millis,
        snapshot: Option<&HubSnapshot>,
    ) -> Result<(), mongodb::error::Error> {
        let now = millis(now);
        let mut set = doc! {
            "pid": i64::from(std::process::id()),
            "address": &self.address,
            "started": DateTime::from_millis(millis(self.started)),
            "heartbeat": DateTime::from_millis(now),
            "lease_until": DateTime::from_millis(now.saturating_add(self.lease_ms())),
        };
        if let Some(snapshot) = snapshot {
            set.insert("snapshot", mongodb::bson::to_document(snapshot)?);
        }
        self.hubs
            .update_one(doc! { "_id": &self.id }, doc! { "$set": set })
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Every registered hub (this one included), by id.
    pub async fn list(&self, now: Millis) -> Result<Vec<HubLease>, mongodb::error::Error> {
        let now = millis(now);
        let docs: Vec<Document> = self
            .hubs
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter_map(|doc| {
                let date = |field| doc.get_datetime(field).ok().map(|d| d.timestamp_millis());
                let lease_until_ms = date("lease_until")?;
                Some(HubLease {
                    id: doc.get_str("_id").ok()?.to_owned(),
                    pid: doc
                        .get_i64("pid")
                        .ok()
                        .and_then(|pid| u32::try_from(pid).ok())
                        .unwrap_or(0),
                    address: doc.get_str("address").unwrap_or("").to_owned(),
                    started_ms: date("started").unwrap_or(0),
                    heartbeat_ms: date("heartbeat").unwrap_or(0),
                    lease_until_ms,
                    alive: lease_until_ms > now,
                    snapshot: doc
                        .get_document("snapshot")
                        .ok()
                        .and_then(|d| mongodb::bson::from_document(d.clone()).ok()),
                })
            })
            .collect())
    }

    /// Deletes registrations whose lease ran out long ago.
    async fn purge(&self, now: Millis) -> Result<(), mongodb::error::Error> {
        let cutoff = millis(now).saturating_sub(
            self.lease_ms()
                .saturating_mul(PURGE_AFTER_LEASES as i64)
                .max(60_000),
        );
        self.hubs
            .delete_many(doc! { "lease_until": { "$lt": DateTime::from_millis(cutoff) } })
            .await?;
        Ok(())
    }

    /// Removes this hub's registration (clean shutdown).
    pub async fn leave(&self) -> Result<(), mongodb::error::Error> {
        self.hubs.delete_one(doc! { "_id": &self.id }).await?;
        Ok(())
    }
}

fn millis(ms: Millis) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Where a hub's snapshot comes from.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotSource {
    pub metrics: Arc<Metrics>,
    pub broker: BrokerHandle,
}

/// Renews `registry`'s lease (with this hub's snapshot) every third of its
/// duration and logs the other hubs joining and leaving, until `shutdown`;
/// then removes the registration.
pub(crate) fn spawn(
    registry: Arc<Registry>,
    others: OtherHubs,
    source: SnapshotSource,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = (registry.lease() / 3).max(Duration::from_millis(50));
        // The other hubs whose lease ran at the last listing.
        let mut known: Option<BTreeSet<String>> = None;
        // Taken after each renewal for the next one: a busy broker never
        // delays the lease (other hubs take a lapsed hub's group
        // deliveries over).
        let mut last_snapshot: Option<HubSnapshot> = None;
        loop {
            let now = crate::clock::now_ms();
            if let Err(error) = registry.heartbeat(now, last_snapshot.as_ref()).await {
                tracing::warn!(%error, hub = registry.id(), "cluster: cannot renew this hub's lease");
            }
            match registry.list(now).await {
                Ok(hubs) => {
                    let alive: BTreeSet<String> = hubs
                        .iter()
                        .filter(|hub| hub.alive && hub.id != registry.id())
                        .map(|hub| hub.id.clone())
                        .collect();
                    let before = known.take().unwrap_or_default();
                    for hub in hubs.iter().filter(|hub| !before.contains(&hub.id)) {
                        if alive.contains(&hub.id) {
                            tracing::info!(hub = %hub.id, address = %hub.address, "cluster: a hub joined");
                        }
                    }
                    for id in before.difference(&alive) {
                        tracing::info!(hub = %id, "cluster: a hub left (stopped, or its lease ran out)");
                    }
                    others.set(alive.len());
                    known = Some(alive);
                }
                Err(error) => tracing::warn!(%error, "cluster: cannot list the hubs"),
            }
            if let Err(error) = registry.purge(now).await {
                tracing::debug!(%error, "cluster: cannot purge expired registrations");
            }
            last_snapshot = Some(snapshot(&source.metrics, &source.broker).await);
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        match registry.leave().await {
            Ok(()) => tracing::info!(hub = registry.id(), "cluster: this hub left"),
            Err(error) => {
                tracing::warn!(%error, "cluster: cannot remove this hub's registration; it lapses with its lease")
            }
        }
    })
}
