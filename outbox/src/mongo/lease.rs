//! One drainer at a time per outbox collection: a lease document per
//! collection, taken and renewed by one holder until it lapses or is
//! released.
//!
//! Claims already make concurrent drainers safe (fenced writes, per-key
//! order); the lease is for deployments where one active drainer per
//! collection is wanted, such as several hubs configured with the same
//! outbox: each hub runs its drainer only while it holds the collection's
//! lease, and another takes over after the lease lapses (a crashed holder)
//! or at once after a release (a stopping one). Between a holder's last
//! renewal and its drainer stopping, a batch may still be in flight while a
//! new holder starts: the claims fence that overlap as they fence any two
//! drainers.
//!
//! The leases of a database live in its `promhub_outbox_leases` collection,
//! one document per outbox collection: `{_id: <collection>, holder,
//! lease_until}`.

use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::{Collection, Database};

use super::codec::date;
use super::is_duplicate_key;
use crate::drainer::duration_ms;
use crate::{Millis, OutboxError};

/// The collection that holds the drain leases of a database.
pub const LEASES_COLLECTION: &str = "promhub_outbox_leases";

/// The right to drain one outbox collection, held by at most one holder at
/// a time (per the clocks of the holders, which must roughly agree).
#[derive(Debug, Clone)]
pub struct DrainLease {
    leases: Collection<Document>,
    outbox: String,
    holder: String,
    duration: Duration,
}

impl DrainLease {
    /// The lease of the outbox collection `outbox` of `db`, for `holder`
    /// (unique per process, e.g. a hub's instance id), lasting `duration`
    /// from each [`acquire`](DrainLease::acquire).
    pub fn new(
        db: &Database,
        outbox: impl Into<String>,
        holder: impl Into<String>,
        duration: Duration,
    ) -> DrainLease {
        DrainLease {
            leases: db.collection(LEASES_COLLECTION),
            outbox: outbox.into(),
            holder: holder.into(),
            duration,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Takes the lease, or renews it if this holder has it, until
    /// `now + duration`: `true`. `false` when another holder's lease is
    /// still running. One round trip.
    pub async fn acquire(&self, now: Millis) -> Result<bool, OutboxError> {
        let until = now.saturating_add(duration_ms(self.duration));
        let taken = self
            .leases
            .update_one(
                doc! {
                    "_id": &self.outbox,
                    "$or": [
                        { "holder": &self.holder },
                        { "lease_until": { "$lte": date(now) } },
                    ],
                },
                doc! { "$set": { "holder": &self.holder, "lease_until": date(until) } },
            )
            .upsert(true)
            .await;
        match taken {
            Ok(_) => Ok(true),
            // No document matched because another holder's lease runs, so
            // the upsert tried to insert a second document with that `_id`.
            Err(error) if is_duplicate_key(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Gives the lease up (if this holder has it), so another holder can
    /// take it at once instead of after it lapses.
    pub async fn release(&self) -> Result<(), OutboxError> {
        self.leases
            .update_one(
                doc! { "_id": &self.outbox, "holder": &self.holder },
                doc! { "$set": { "lease_until": date(0) } },
            )
            .await?;
        Ok(())
    }

    /// Who holds the lease now (at `now`), if anyone.
    pub async fn current_holder(&self, now: Millis) -> Result<Option<String>, OutboxError> {
        let lease = self
            .leases
            .find_one(doc! { "_id": &self.outbox, "lease_until": { "$gt": date(now) } })
            .await?;
        Ok(lease.and_then(|lease| lease.get_str("holder").ok().map(str::to_owned)))
    }
}
