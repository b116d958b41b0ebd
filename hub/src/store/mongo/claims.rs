//! Delivery claims: how the members of one durable group, connected to
//! different hubs, share its work through the database (semantics.md §7).
//!
//! Every hub that has members of a group follows the log and keeps the
//! group's window, as on one hub. Before it hands an event to a member it
//! **claims** it: it inserts `{_id: <group>/<seq>, hub, attempts, done:
//! false}` into `group_claims`. The unique `_id` is the arbiter: of the
//! hubs that try, one inserts, the others get a duplicate key and leave the
//! event to it (it is "elsewhere" for them). The holder redelivers it on
//! NACK, deadline or a member's disconnect like on one hub, and marks the
//! claim `done` once it is acknowledged or dead-lettered (one write per
//! batch of ACKs, one in flight per group). The claim says an event is
//! done: the group's document, which every hub updates, is not the source
//! of truth, because FerretDB 1.x applies an update as read-modify-write of
//! the whole document, so two hubs' concurrent `$max` / `$addToSet` can
//! lose one of them (a cursor went back, a done mark vanished).
//!
//! A hub learns what became of the events held elsewhere by asking
//! ([`GroupClaims::status`]) every `cluster_poll_ms`:
//! - done (its claim says so, or it is at or below the group's stored
//!   cursor or among its stored done marks): done here too;
//! - no claim (its holder let go of it: its members left): claim it again;
//! - held by a hub whose registry lease ran out (it died): taken over in
//!   the same call (`hub` set to this one where it is still the dead one's,
//!   so of several hubs one wins) and delivered again with its attempt
//!   counted. A dead hub's deliveries come back after its lease, sooner
//!   than their ack deadline.
//!
//! Claims more than [`PRUNE_MARGIN`] seqs below the group's stored cursor
//! are deleted by a group's hub after every [`PRUNE_EVERY_CLAIMS`] claims
//! (one write per that many events: `group_claims` stays about the margin
//! plus the windows). The margin covers
//! a cursor that went back on FerretDB for a moment (above): a claim is
//! only deleted where no stale cursor can reach, so a deleted claim never
//! looks free. Cursors are written with `$max`, so a hub
//! that has not learned yet of others' progress never moves a group's
//! cursor back.

use std::collections::{BTreeSet, HashMap};

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, RawArrayBuf, RawBson, RawDocumentBuf, doc};
use mongodb::{Collection, Database};

use super::super::{GroupKey, StoreError};
use super::codec::{group_id, seq_to_bson};
use super::{backend, queries, writes};

/// Ids per `$in` query or insert command.
const CHUNK: usize = 500;
/// Error code of a duplicate `_id`.
const DUPLICATE_KEY: i32 = 11000;
/// A group's hub prunes its claims after this many (see the module docs).
pub const PRUNE_EVERY_CLAIMS: usize = 256;
/// Claims are pruned this many seqs below the stored cursor.
const PRUNE_MARGIN: u64 = 1000;
/// Dead takers followed at most in one take-over.
const TAKE_OVER_CHAIN: usize = 8;

/// What became of a claim attempt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// Claimed by this hub: deliver them.
    pub won: Vec<u64>,
    /// Another hub holds them (or they are done).
    pub lost: Vec<u64>,
}

/// What another hub's event has become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimStatus {
    /// Acknowledged or dead-lettered (or below the group's cursor).
    Done,
    /// Nobody holds it: it may be claimed.
    Free,
    /// A live hub holds it.
    Held,
    /// Its holder died; this hub holds it now, `attempts` deliveries made.
    TakenOver { attempts: u32 },
}

/// The claims of one hub (see the module docs).
#[derive(Debug, Clone)]
pub struct GroupClaims {
    db: Database,
    claims: Collection<Document>,
    hubs: Collection<Document>,
    groups: Collection<Document>,
    write_concern: Document,
    hub: String,
}

fn claim_id(gid: &str, seq: u64) -> String {
    format!("{gid}/{:020}", seq_to_bson(seq))
}

impl GroupClaims {
    pub(super) fn new(db: &Database, write_concern: &Document, hub: &str) -> GroupClaims {
        GroupClaims {
            db: db.clone(),
            claims: db.collection(queries::GROUP_CLAIMS),
            hubs: db.collection(crate::cluster::HUBS_COLLECTION),
            groups: db.collection(queries::GROUPS),
            write_concern: write_concern.clone(),
            hub: hub.to_owned(),
        }
    }

    /// This hub's id in the claims (its registry id).
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Claims `seqs` (with the attempt each delivery will be) for this hub:
    /// one unordered insert per chunk; a duplicate key means another hub
    /// holds it (or held it and finished). With `prune`, also deletes the
    /// group's claims at or below its stored cursor.
    pub async fn claim(
        &self,
        key: &GroupKey,
        seqs: &[(u64, u32)],
        prune: bool,
    ) -> Result<ClaimOutcome, StoreError> {
        let gid = group_id(key);
        let mut outcome = ClaimOutcome::default();
        for chunk in seqs.chunks(CHUNK) {
            let mut documents = RawArrayBuf::new();
            for &(seq, attempts) in chunk {
                let claim = doc! {
                    "_id": claim_id(&gid, seq),
                    "seq": seq_to_bson(seq),
                    "hub": &self.hub,
                    "attempts": i64::from(attempts),
                    "done": false,
                    "at": DateTime::now(),
                };
                let raw = RawDocumentBuf::from_document(&claim)
                    .map_err(|e| StoreError::Backend(format!("cannot encode a claim: {e}")))?;
                documents.push(RawBson::Document(raw));
            }
            let mut command = RawDocumentBuf::new();
            command.append("insert", queries::GROUP_CLAIMS);
            command.append("documents", documents);
            command.append("ordered", false);
            let write_concern =
                RawDocumentBuf::from_document(&self.write_concern).map_err(|e| {
                    StoreError::Backend(format!("cannot encode the write concern: {e}"))
                })?;
            command.append("writeConcern", write_concern);
            let reply = self.db.run_raw_command(command).await.map_err(backend)?;
            if let Ok(error) = reply.get_document("writeConcernError") {
                let message = error.get_str("errmsg").unwrap_or("no message");
                return Err(StoreError::Backend(format!(
                    "MongoDB: claims were not acknowledged as durable: {message}"
                )));
            }
            let mut lost = BTreeSet::new();
            if let Ok(errors) = reply.get_array("writeErrors") {
                for error in errors.iter().filter_map(Bson::as_document) {
                    let code = error.get_i32("code").unwrap_or_default();
                    let index = error
                        .get_i32("index")
                        .ok()
                        .and_then(|i| usize::try_from(i).ok());
                    match index {
                        Some(index) if code == DUPLICATE_KEY && index < chunk.len() => {
                            lost.insert(index);
                        }
                        _ => {
                            let message = error.get_str("errmsg").unwrap_or("no message");
                            return Err(StoreError::Backend(format!(
                                "MongoDB: a claim failed: {message} (code {code})"
                            )));
                        }
                    }
                }
            }
            for (index, &(seq, _)) in chunk.iter().enumerate() {
                if lost.contains(&index) {
                    outcome.lost.push(seq);
                } else {
                    outcome.won.push(seq);
                }
            }
        }
        // Claims at or below the stored cursor are pruned, so an insert can
        // win for an event finished long ago (by a hub this one has not
        // heard from yet). Read after the inserts: a cursor still below a
        // won seq was below it at the insert too, and its claim was not
        // pruned then (claims are pruned only after the cursor passed them).
        let (cursor, done) = self.stored_progress(&gid).await?;
        let finished = |seq: &u64| *seq <= cursor || done.contains(seq);
        if outcome.won.iter().any(finished) {
            let (gone, won): (Vec<u64>, Vec<u64>) = outcome.won.iter().partition(|s| finished(s));
            outcome.won = won;
            outcome.lost.extend(gone);
        }
        if prune {
            self.prune_below(&gid, cursor).await?;
        }
        Ok(outcome)
    }

    /// The group's cursor and done marks above it as stored (every hub's
    /// flushed progress; 0 and none for a group not stored yet).
    async fn stored_progress(&self, gid: &str) -> Result<(u64, BTreeSet<u64>), StoreError> {
        let Some(doc) = self
            .groups
            .find_one(doc! { "_id": gid })
            .projection(doc! { "cursor": 1, "done": 1 })
            .await
            .map_err(backend)?
        else {
            return Ok((0, BTreeSet::new()));
        };
        let done = doc
            .get_array("done")
            .map(|marks| {
                marks
                    .iter()
                    .filter_map(|mark| match mark {
                        Bson::Int64(v) => u64::try_from(*v).ok(),
                        Bson::Int32(v) => u64::try_from(*v).ok(),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((uint(&doc, "cursor"), done))
    }

    /// What became of `seqs` (events this hub does not hold), taking over
    /// those whose holder died.
    pub async fn status(
        &self,
        key: &GroupKey,
        seqs: &[u64],
        now_ms: i64,
    ) -> Result<Vec<(u64, ClaimStatus)>, StoreError> {
        let gid = group_id(key);
        let (cursor, done) = self.stored_progress(&gid).await?;
        let mut found: HashMap<u64, Document> = HashMap::new();
        for chunk in seqs.chunks(CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|&seq| claim_id(&gid, seq)).collect();
            let docs: Vec<Document> = self
                .claims
                .find(doc! { "_id": { "$in": ids } })
                .await
                .map_err(backend)?
                .try_collect()
                .await
                .map_err(backend)?;
            for doc in docs {
                let seq = uint(&doc, "seq");
                found.insert(seq, doc);
            }
        }
        // Holders other than this hub: which of them still run?
        let holders: BTreeSet<&str> = found
            .values()
            .filter(|doc| !doc.get_bool("done").unwrap_or(false))
            .filter_map(|doc| doc.get_str("hub").ok())
            .filter(|&hub| hub != self.hub)
            .collect();
        let alive: BTreeSet<String> = if holders.is_empty() {
            BTreeSet::new()
        } else {
            let docs: Vec<Document> = self
                .hubs
                .find(doc! {
                    "_id": { "$in": holders.iter().copied().collect::<Vec<_>>() },
                    "lease_until": { "$gt": DateTime::from_millis(now_ms) },
                })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(backend)?
                .try_collect()
                .await
                .map_err(backend)?;
            docs.iter()
                .filter_map(|doc| doc.get_str("_id").ok().map(str::to_owned))
                .collect()
        };
        let mut answers = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let status = match found.get(&seq) {
                _ if seq <= cursor || done.contains(&seq) => ClaimStatus::Done,
                Some(doc) if doc.get_bool("done").unwrap_or(false) => ClaimStatus::Done,
                None => ClaimStatus::Free,
                Some(doc) => {
                    let holder = doc.get_str("hub").unwrap_or("");
                    let attempts = uint(doc, "attempts");
                    if holder == self.hub {
                        // A claim whose answer was lost: it is ours.
                        ClaimStatus::TakenOver {
                            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        }
                    } else if alive.contains(holder) {
                        ClaimStatus::Held
                    } else {
                        self.take_over(&gid, seq, holder, attempts).await?
                    }
                }
            };
            answers.push((seq, status));
        }
        Ok(answers)
    }

    /// Deletes the group's claims at or below its stored cursor: everything
    /// there is done for every hub. Keeps `group_claims` as small as the
    /// groups' windows (FerretDB scans the collection for every `$in`).
    async fn prune_below(&self, gid: &str, cursor: u64) -> Result<(), StoreError> {
        let cursor = cursor.saturating_sub(PRUNE_MARGIN);
        if cursor == 0 {
            return Ok(());
        }
        self.claims
            .delete_many(doc! { "_id": {
                "$gt": format!("{gid}/"),
                // Below the next seq's id: take-over markers included.
                "$lt": claim_id(gid, cursor.saturating_add(1)),
            } })
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Moves a dead hub's claim to this hub. The arbiter is again a unique
    /// insert — a marker `<claim id>~<dead holder>` naming the taker — not
    /// a conditional update: FerretDB runs an update as a read then a
    /// write, so two hubs could both "match" the dead holder. A taker that
    /// died before it rewrote the claim is itself taken over, along the
    /// markers.
    async fn take_over(
        &self,
        gid: &str,
        seq: u64,
        holder: &str,
        attempts: u64,
    ) -> Result<ClaimStatus, StoreError> {
        let id = claim_id(gid, seq);
        let mut dead = holder.to_owned();
        for _ in 0..TAKE_OVER_CHAIN {
            let marker =
                doc! { "_id": format!("{id}~{dead}"), "hub": &self.hub, "at": DateTime::now() };
            match self.claims.insert_one(marker).await {
                Ok(_) => {
                    self.claims
                        .update_one(
                            doc! { "_id": &id },
                            doc! { "$set": {
                                "hub": &self.hub,
                                "attempts": i64::try_from(attempts + 1).unwrap_or(i64::MAX),
                                "at": DateTime::now(),
                            } },
                        )
                        .await
                        .map_err(backend)?;
                    tracing::info!(hub = %dead, seq, "cluster: took over a delivery of a hub whose lease ran out");
                    return Ok(ClaimStatus::TakenOver {
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    });
                }
                Err(error) if super::commit::is_duplicate_key(&error) => {
                    let taker = self
                        .claims
                        .find_one(doc! { "_id": format!("{id}~{dead}") })
                        .await
                        .map_err(backend)?
                        .and_then(|doc| doc.get_str("hub").ok().map(str::to_owned))
                        .unwrap_or_default();
                    if taker == self.hub {
                        // Our own take-over whose answer was lost.
                        return Ok(ClaimStatus::TakenOver {
                            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        });
                    }
                    if self.alive(&taker).await? {
                        return Ok(ClaimStatus::Held);
                    }
                    dead = taker;
                }
                Err(error) => return Err(backend(error)),
            }
        }
        Ok(ClaimStatus::Held)
    }

    /// Whether `hub`'s registry lease is running.
    async fn alive(&self, hub: &str) -> Result<bool, StoreError> {
        let now = DateTime::now();
        Ok(self
            .hubs
            .find_one(doc! { "_id": hub, "lease_until": { "$gt": now } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(backend)?
            .is_some())
    }

    /// Marks this hub's claims on `seqs` done (acknowledged or
    /// dead-lettered).
    pub async fn finish(&self, key: &GroupKey, seqs: &[u64]) -> Result<(), StoreError> {
        self.update_own(key, seqs, true).await
    }

    /// Gives this hub's claims on `seqs` up (its members left): another hub
    /// may claim them.
    pub async fn release(&self, key: &GroupKey, seqs: &[u64]) -> Result<(), StoreError> {
        self.update_own(key, seqs, false).await
    }

    async fn update_own(&self, key: &GroupKey, seqs: &[u64], done: bool) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let gid = group_id(key);
        // One statement per id (`writes::run` sends them in small commands,
        // see `writes.rs`): on MongoDB each is an index hit; FerretDB hands
        // only a lone string `_id` equality to SQLite (which matches it
        // without decoding every claim) and an `$in` to neither.
        let statements = seqs
            .iter()
            .map(|&seq| {
                let id = claim_id(&gid, seq);
                if done {
                    // By `_id` alone (see above). The event is done
                    // whoever holds its claim now (one taken over from
                    // this hub, thought dead, is done too), and `done`
                    // only ever turns true.
                    writes::update(doc! { "_id": id }, doc! { "$set": { "done": true } }, false)
                } else {
                    writes::delete(doc! { "_id": id, "hub": &self.hub, "done": false })
                }
            })
            .collect();
        let kind = if done {
            writes::Kind::Update
        } else {
            writes::Kind::Delete
        };
        writes::run(
            &self.db,
            &self.write_concern,
            kind,
            queries::GROUP_CLAIMS,
            statements,
        )
        .await
    }
}

/// A non-negative integer field (0 when absent).
fn uint(doc: &Document, field: &str) -> u64 {
    match doc.get(field) {
        Some(Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Double(v)) if *v >= 0.0 => *v as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
