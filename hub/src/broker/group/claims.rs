//! A group whose members may be on several hubs (a MongoDB store): the
//! group's side of delivery claims (`store/mongo/claims.rs` has the
//! database's side and the protocol).
//!
//! An entry a local member could take is claimed before its first delivery
//! here (`Claiming` while the claim is in flight: one claim request per
//! group at a time, so a hub's members still get events in seq order). Won:
//! it is this hub's to deliver, redeliver and finish. Lost: another hub
//! holds it (`Elsewhere`); it holds the cursor here until a status check
//! finds it done, free again (claimed anew), or held by a dead hub (taken
//! over and delivered again). Claims this hub finished are marked done in
//! the database, and claims it holds when its last member leaves are given
//! up, so other hubs' members get them.

use std::collections::BTreeSet;

use super::{Effects, EntryState, GroupState};
use crate::store::mongo::{ClaimOutcome, ClaimStatus, PRUNE_EVERY_CLAIMS};

/// The claims side of one group's state.
#[derive(Debug, Default)]
pub(crate) struct ClaimState {
    /// Claims are used (the store is shared by several hubs).
    pub(super) enabled: bool,
    /// A claim request is in flight (its entries are `Claiming`).
    in_flight: bool,
    /// The last claim request failed: no new one until the retry.
    paused: bool,
    /// Entries to claim next, with the attempt their delivery will be.
    pub(super) to_claim: Vec<(u64, u32)>,
    /// Entries another hub holds.
    pub(super) elsewhere: BTreeSet<u64>,
    /// A status check is in flight.
    checking: bool,
    /// This hub's claims now done, to mark in the database.
    pub(super) finished: Vec<u64>,
    /// This hub's claims to give up (no member left to deliver them).
    released: Vec<u64>,
    /// A write of `finished` / `released` is in flight.
    writing: bool,
    /// Claims requested since the last request that pruned.
    since_prune: usize,
}

/// Claim writes for the broker to make: (finished, released).
pub(crate) type ClaimWrites = (Vec<u64>, Vec<u64>);

impl ClaimState {
    pub(super) fn enabled() -> ClaimState {
        ClaimState {
            enabled: true,
            ..ClaimState::default()
        }
    }

    /// Whether a new claim request may start now.
    pub(super) fn can_claim(&self) -> bool {
        !self.in_flight && !self.paused
    }

    /// Claim IO in flight or waiting: the group must stay loaded.
    pub(super) fn busy(&self) -> bool {
        self.in_flight
            || self.checking
            || self.writing
            || !self.to_claim.is_empty()
            || !self.finished.is_empty()
            || !self.released.is_empty()
    }
}

impl GroupState {
    /// The claim request to send, if entries wait for one: the seqs (with
    /// the attempt each delivery will be), and whether it also prunes the
    /// group's claims (every [`PRUNE_EVERY_CLAIMS`] claims).
    pub fn take_claims(&mut self) -> Option<(Vec<(u64, u32)>, bool)> {
        if !self.claims.enabled || !self.claims.can_claim() || self.claims.to_claim.is_empty() {
            return None;
        }
        self.claims.in_flight = true;
        let seqs = std::mem::take(&mut self.claims.to_claim);
        self.claims.since_prune += seqs.len();
        let prune = self.claims.since_prune >= PRUNE_EVERY_CLAIMS;
        if prune {
            self.claims.since_prune = 0;
        }
        Some((seqs, prune))
    }

    /// The answer to [`GroupState::take_claims`].
    pub fn on_claimed(&mut self, outcome: &ClaimOutcome, fx: &mut Effects<'_>) {
        self.claims.in_flight = false;
        let members = self.has_members();
        for &seq in &outcome.won {
            let Some(entry) = entry_mut!(self, seq) else {
                self.claims.released.push(seq);
                continue;
            };
            if entry.state != EntryState::Claiming {
                continue;
            }
            entry.state = EntryState::Ready;
            if members {
                entry.claimed = true;
                self.ready.insert(seq);
            } else {
                // Everyone left meanwhile: let another hub have it.
                self.claims.released.push(seq);
                self.ready.insert(seq);
            }
        }
        for &seq in &outcome.lost {
            let Some(entry) = entry_mut!(self, seq) else {
                continue;
            };
            if entry.state != EntryState::Claiming {
                continue;
            }
            entry.state = EntryState::Elsewhere;
            if entry.body.take().is_some() {
                fx.budget.release_body(&mut self.held, seq, entry.size);
            }
            self.claims.elsewhere.insert(seq);
        }
        self.advance();
        self.pump(fx);
    }

    /// A claim request failed: its entries are ready again, and no claim
    /// is made until [`GroupState::retry_claims`].
    pub fn on_claim_failed(&mut self, fx: &mut Effects<'_>) {
        self.claims.in_flight = false;
        self.claims.paused = true;
        self.unclaim_pending();
        self.pump(fx);
    }

    pub fn retry_claims(&mut self, fx: &mut Effects<'_>) {
        self.claims.paused = false;
        self.pump(fx);
    }

    /// Entries still marked `Claiming` (the request failed) are ready.
    fn unclaim_pending(&mut self) {
        let claiming: Vec<u64> = self
            .window
            .iter()
            .filter(|(_, e)| e.state == EntryState::Claiming)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in claiming {
            if let Some(entry) = self.window.get_mut(&seq) {
                entry.state = EntryState::Ready;
                self.ready.insert(seq);
            }
        }
    }

    /// Entries this hub waits on others for (held elsewhere, or blocked
    /// here), to ask about; `None` when there are none or a check runs.
    pub fn take_status_check(&mut self) -> Option<Vec<u64>> {
        if !self.claims.enabled || self.claims.checking {
            return None;
        }
        let seqs: Vec<u64> = self
            .claims
            .elsewhere
            .iter()
            .chain(self.blocked.iter())
            .copied()
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        if seqs.is_empty() {
            return None;
        }
        self.claims.checking = true;
        Some(seqs)
    }

    /// The answer to [`GroupState::take_status_check`].
    pub fn on_status(&mut self, answers: &[(u64, ClaimStatus)], fx: &mut Effects<'_>) {
        self.claims.checking = false;
        for &(seq, status) in answers {
            let Some(state) = entry!(self, seq).map(|e| e.state) else {
                continue;
            };
            let elsewhere = state == EntryState::Elsewhere;
            match status {
                ClaimStatus::Done if elsewhere || state == EntryState::Blocked => {
                    self.claims.elsewhere.remove(&seq);
                    self.complete(seq, fx);
                }
                ClaimStatus::Free if elsewhere => {
                    self.claims.elsewhere.remove(&seq);
                    if let Some(entry) = entry_mut!(self, seq) {
                        entry.state = EntryState::Ready;
                    }
                    self.ready.insert(seq);
                }
                ClaimStatus::TakenOver { attempts } if elsewhere => {
                    self.claims.elsewhere.remove(&seq);
                    if let Some(entry) = entry_mut!(self, seq) {
                        entry.state = EntryState::Ready;
                        entry.claimed = true;
                        entry.attempts = entry.attempts.max(attempts);
                    }
                    // Its attempts count on, like a failed delivery here.
                    self.record_failure(seq);
                    self.ready.insert(seq);
                }
                // Taken over while nobody here may read it: give it back.
                ClaimStatus::TakenOver { .. } => self.claims.released.push(seq),
                _ => {}
            }
        }
        if !self.has_members() {
            self.release_claims();
        }
        self.advance();
        self.pump(fx);
    }

    pub fn on_status_failed(&mut self) {
        self.claims.checking = false;
    }

    /// Claims this hub holds go back to the database (the last member
    /// left): other hubs' members may have them.
    pub(super) fn release_claims(&mut self) {
        if !self.claims.enabled {
            return;
        }
        for (&seq, entry) in &mut self.window {
            if entry.claimed && entry.state != EntryState::Done {
                entry.claimed = false;
                self.claims.released.push(seq);
            }
        }
    }

    /// Claim writes to make, if any and none is in flight.
    pub fn take_claim_writes(&mut self) -> Option<ClaimWrites> {
        if !self.claims.enabled
            || self.claims.writing
            || (self.claims.finished.is_empty() && self.claims.released.is_empty())
        {
            return None;
        }
        self.claims.writing = true;
        Some((
            std::mem::take(&mut self.claims.finished),
            std::mem::take(&mut self.claims.released),
        ))
    }

    /// The claim writes were made (`None`) or failed (kept for the next).
    pub fn on_claim_writes(&mut self, failed: Option<ClaimWrites>) {
        self.claims.writing = false;
        if let Some((mut finished, mut released)) = failed {
            finished.append(&mut self.claims.finished);
            self.claims.finished = finished;
            released.append(&mut self.claims.released);
            self.claims.released = released;
        }
    }

    /// Finished or given-up claims not yet written (a clean stop waits for
    /// them: a finished claim left unwritten could be delivered again by
    /// another hub, a given-up one would wait for this hub's lease).
    pub fn claim_writes_pending(&self) -> bool {
        self.claims.writing || !self.claims.finished.is_empty() || !self.claims.released.is_empty()
    }

    /// Events another hub holds (ops API).
    pub fn held_elsewhere(&self) -> usize {
        self.claims.elsewhere.len()
    }
}
