//! The broker's side of delivery claims (groups whose members may be on
//! several hubs; `store/mongo/claims.rs` has the protocol): claim requests,
//! status checks of events other hubs hold every `cluster_poll_ms`, and
//! the writes that finish or give up this hub's claims. Each runs in a
//! spawned task whose result comes back as a command; a group has at most
//! one of each in flight.

use std::time::Duration;

use tokio::time::Instant;

use super::group::{ClaimWrites, GroupId};
use super::{Broker, Command};
use crate::store::StoreError;
use crate::store::mongo::{ClaimOutcome, ClaimStatus};

/// How long a group waits before claiming again after a failed claim.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

impl Broker {
    /// Sends the group's pending claim request, if any.
    pub(super) fn maybe_claim(&mut self, gid: GroupId) {
        let Some(claims) = self.claims.clone() else {
            return;
        };
        let Some(group) = self.groups.get_mut(&gid) else {
            return;
        };
        let Some((seqs, prune)) = group.take_claims() else {
            return;
        };
        let key = group.key.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let result = claims.claim(&key, &seqs, prune).await;
            let _ = commands.send(Command::Claimed { gid, result }).await;
        });
    }

    pub(super) fn claimed(&mut self, gid: GroupId, result: Result<ClaimOutcome, StoreError>) {
        match result {
            Ok(outcome) => {
                self.with_group(gid, |group, fx| group.on_claimed(&outcome, fx));
            }
            Err(error) => {
                tracing::warn!(%error, "cluster: claiming group deliveries failed; retrying");
                self.with_group(gid, |group, fx| group.on_claim_failed(fx));
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(CLAIM_RETRY).await;
                    let _ = commands.send(Command::RetryClaims { gid }).await;
                });
            }
        }
    }

    /// Marks this hub's finished claims done and gives up the released
    /// ones (one write in flight per group: ACKs batch up behind it).
    pub(super) fn maybe_write_claims(&mut self, gid: GroupId) {
        let Some(claims) = self.claims.clone() else {
            return;
        };
        let Some(group) = self.groups.get_mut(&gid) else {
            return;
        };
        let Some((mut finished, released)) = group.take_claim_writes() else {
            return;
        };
        if self.other_hubs.none() {
            // Alone: nobody waits on these claims. A hub that joins later
            // finds them held by a live hub until the group's cursor (or a
            // done mark) passes them: later, never twice.
            finished.clear();
        }
        let key = group.key.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let result = async {
                claims.finish(&key, &finished).await?;
                claims.release(&key, &released).await
            }
            .await;
            let failed = match result {
                Ok(()) => None,
                Err(error) => {
                    tracing::warn!(%error, "cluster: recording group claims failed; retrying");
                    tokio::time::sleep(CLAIM_RETRY).await;
                    Some((finished, released))
                }
            };
            let _ = commands.send(Command::ClaimsWritten { gid, failed }).await;
        });
    }

    pub(super) fn claims_written(&mut self, gid: GroupId, failed: Option<ClaimWrites>) {
        if let Some(group) = self.groups.get_mut(&gid) {
            group.on_claim_writes(failed);
        }
        self.maybe_write_claims(gid);
        self.evict_idle_groups();
    }

    /// Every `cluster_poll_ms`: asks what became of the events other hubs
    /// hold, for every group waiting on some.
    pub(super) fn maybe_check_claims(&mut self) {
        let now = Instant::now();
        if self.claim_check_due.is_some_and(|due| due > now) {
            return;
        }
        let Some(claims) = self.claims.clone() else {
            return;
        };
        self.claim_check_due = Some(now + self.claim_check_every);
        let gids: Vec<GroupId> = self.groups.keys().copied().collect();
        for gid in gids {
            let Some(group) = self.groups.get_mut(&gid) else {
                continue;
            };
            let Some(seqs) = group.take_status_check() else {
                continue;
            };
            let key = group.key.clone();
            let claims = claims.clone();
            let commands = self.commands.clone();
            tokio::spawn(async move {
                let now_ms = i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX);
                let result = claims.status(&key, &seqs, now_ms).await;
                let _ = commands.send(Command::ClaimStatus { gid, result }).await;
            });
        }
    }

    pub(super) fn claim_status(
        &mut self,
        gid: GroupId,
        result: Result<Vec<(u64, ClaimStatus)>, StoreError>,
    ) {
        match result {
            Ok(answers) => {
                self.with_group(gid, |group, fx| group.on_status(&answers, fx));
            }
            Err(error) => {
                tracing::warn!(%error, "cluster: checking other hubs' group deliveries failed");
                if let Some(group) = self.groups.get_mut(&gid) {
                    group.on_status_failed();
                }
            }
        }
    }
}
