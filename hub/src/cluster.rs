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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::{Collection, Database};
use promhub_core::frames::Millis;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The collection of the hubs of a database.
pub const HUBS_COLLECTION: &str = "hubs";
/// Expired registrations are deleted this many leases after they ran out.
const PURGE_AFTER_LEASES: u64 = 10;

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

    /// Registers this hub, or renews its lease, until `now + lease`.
    pub async fn heartbeat(&self, now: Millis) -> Result<(), mongodb::error::Error> {
        let now = millis(now);
        self.hubs
            .update_one(
                doc! { "_id": &self.id },
                doc! { "$set": {
                    "pid": i64::from(std::process::id()),
                    "address": &self.address,
                    "started": DateTime::from_millis(millis(self.started)),
                    "heartbeat": DateTime::from_millis(now),
                    "lease_until": DateTime::from_millis(now.saturating_add(self.lease_ms())),
                } },
            )
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

/// Renews `registry`'s lease every third of its duration and logs the
/// other hubs joining and leaving, until `shutdown`; then removes the
/// registration.
pub fn spawn(
    registry: Arc<Registry>,
    others: OtherHubs,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = (registry.lease() / 3).max(Duration::from_millis(50));
        // The other hubs whose lease ran at the last listing.
        let mut known: Option<BTreeSet<String>> = None;
        loop {
            let now = crate::clock::now_ms();
            if let Err(error) = registry.heartbeat(now).await {
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
