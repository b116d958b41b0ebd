//! The broker's side of consumer groups: opening and creating them (with
//! the group cap), running a group's state machine with its effects, store
//! reads for groups that are behind or need bodies again, waking groups
//! that waited for the group buffer, and making group state durable.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use promhub_core::ErrorCode;
use promhub_core::frames::{ErrorFrame, Event, HubFrame, StartFrom, SubAck};
use tokio::time::Instant;

use super::committed::Committed;
use super::group::{Effects, FETCH_SCAN_LIMIT, GroupId, GroupState, Member};
use super::{Broker, Command, ConnId, Registration, SubscribeRequest, reply};
use crate::refusals::{self, Refusal};
use crate::store::writer::GroupUpdate;
use crate::store::{GroupKey, GroupProgress, GroupRecord, StoreError};

/// How long a group waits before retrying a failed store read.
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// A loaded group with what it needs from the broker while it changes
/// state (`Effects`), borrowing only those fields of the broker.
macro_rules! group_and_effects {
    ($broker:ident, $gid:expr) => {{
        let now_mono = $broker.mono_ms();
        let now_wall = crate::clock::now_ms();
        $broker.groups.get_mut(&$gid).map(|group| {
            let fx = Effects {
                now_mono,
                now_wall,
                timers: &mut $broker.timers,
                counters: &$broker.counters,
                budget: &mut $broker.budget,
            };
            (group, fx)
        })
    }};
}

impl Broker {
    // -----------------------------------------------------------------
    // Groups: access helpers

    /// Runs `f` on a group with its effects, then takes care of what may
    /// follow: a store read when it fell behind, a flush when it changed.
    pub(super) fn with_group<R>(
        &mut self,
        gid: GroupId,
        f: impl FnOnce(&mut GroupState, &mut Effects<'_>) -> R,
    ) -> Option<R> {
        let (group, mut fx) = group_and_effects!(self, gid)?;
        let result = f(group, &mut fx);
        let (dirty, members) = (group.is_dirty(), group.has_members());
        if members {
            self.group_index.insert(gid, &group.pattern);
            self.idle.remove(&gid);
        } else {
            self.group_index.remove(gid, &group.pattern);
            self.idle.insert(gid);
        }
        if dirty {
            self.mark_dirty(gid);
        }
        self.maybe_fetch(gid);
        self.maybe_read_bodies(gid);
        self.maybe_claim(gid);
        self.maybe_write_claims(gid);
        Some(result)
    }

    /// Groups that waited for the group buffer get their turn, in order,
    /// while there is room.
    pub(super) fn wake_budget_waiters(&mut self) {
        if !self.budget.take_freed() {
            return;
        }
        for _ in 0..self.budget.waiting() {
            let Some(gid) = self.budget.next_waiter() else {
                break;
            };
            self.with_group(gid, |group, fx| group.pump(fx));
        }
    }

    /// Like [`Broker::with_group`] for a group `conn` is a member of;
    /// ignored otherwise (answers for unknown subscriptions are ignored).
    pub(super) fn with_member_group(
        &mut self,
        conn: ConnId,
        key: &GroupKey,
        f: impl FnOnce(&mut GroupState, &mut Effects<'_>),
    ) {
        let Some(&gid) = self.group_ids.get(key) else {
            return;
        };
        if !self.groups.get(&gid).is_some_and(|g| g.is_member(conn)) {
            return;
        }
        self.with_group(gid, f);
    }

    pub(super) fn mark_dirty(&mut self, gid: GroupId) {
        self.dirty.insert(gid);
        if self.flush_due.is_none() {
            self.flush_due =
                Some(Instant::now() + Duration::from_millis(self.defaults.progress_flush_ms));
        }
    }

    pub(super) fn fire_timers(&mut self) {
        let now = self.mono_ms();
        while let Some(&(due, gid, seq)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            self.with_group(gid, |group, fx| group.on_timer(seq, due, fx));
        }
    }

    pub(super) fn group_loaded(
        &mut self,
        key: GroupKey,
        result: Result<Option<GroupRecord>, StoreError>,
    ) {
        match result {
            Ok(Some(record)) => self.open_group(key, record),
            Ok(None) => {
                let Some((first, head)) = self
                    .pending_groups
                    .get(&key)
                    .and_then(|p| p.waiting.first().map(|first| (first, p.head)))
                else {
                    // Everyone waiting left; nothing to create.
                    self.pending_groups.remove(&key);
                    return;
                };
                if self.stored_groups + self.creating_groups >= self.max_groups as u64 {
                    self.refuse_pending(
                        &key,
                        ErrorCode::LimitExceeded,
                        &format!(
                            "the hub keeps at most {} groups (limits.max_groups); \
                             subscribe to an existing group",
                            self.max_groups
                        ),
                    );
                    refusals::count(Refusal::GroupCap);
                    return;
                }
                self.creating_groups += 1;
                let cursor = match first.from {
                    StartFrom::Latest => head,
                    StartFrom::Earliest => 0,
                    StartFrom::Seq(seq) => seq.saturating_sub(1),
                };
                // The group exists once it is durable: SUBACK waits for it,
                // so a restart never moves a new group's starting point.
                let writer = self.writer.clone();
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    let result = writer
                        .record_progress(GroupProgress {
                            key: key.clone(),
                            cursor,
                            done_above: Vec::new(),
                            attempt_changes: Vec::new(),
                        })
                        .await;
                    let _ = commands
                        .send(Command::GroupCreated {
                            key,
                            cursor,
                            result,
                        })
                        .await;
                });
            }
            Err(e) => self.fail_pending(&key, &e),
        }
    }

    pub(super) fn group_created(
        &mut self,
        key: GroupKey,
        cursor: u64,
        result: Result<(), StoreError>,
    ) {
        self.creating_groups = self.creating_groups.saturating_sub(1);
        match result {
            Ok(()) => {
                self.stored_groups += 1;
                let record = GroupRecord {
                    key: key.clone(),
                    cursor,
                    done_above: Vec::new(),
                    attempts_above: Vec::new(),
                };
                self.open_group(key, record);
            }
            Err(e) => self.fail_pending(&key, &e),
        }
    }

    pub(super) fn fail_pending(&mut self, key: &GroupKey, error: &StoreError) {
        tracing::error!(error = %error, pattern = %key.pattern, group = %key.group, "cannot open group");
        self.refuse_pending(
            key,
            ErrorCode::Internal,
            "the group's state could not be loaded; try again",
        );
    }

    /// Answers every SUBSCRIBE waiting for a group with an `ERR`.
    pub(super) fn refuse_pending(&mut self, key: &GroupKey, code: ErrorCode, msg: &str) {
        let waiting = self
            .pending_groups
            .remove(key)
            .map(|p| p.waiting)
            .unwrap_or_default();
        for mut request in waiting {
            reply(
                &request.send_queue,
                HubFrame::Err(ErrorFrame::new(code, msg, request.rid.take())),
            );
            request.registered(Registration::Refused);
        }
    }

    pub(super) fn open_group(&mut self, key: GroupKey, record: GroupRecord) {
        let waiting = self
            .pending_groups
            .remove(&key)
            .map(|p| p.waiting)
            .unwrap_or_default();
        let Some(first) = waiting.first() else {
            return;
        };
        let (Some(name), pattern) = (first.group.clone(), first.pattern.clone()) else {
            return;
        };
        let gid = self.next_group_id;
        self.next_group_id = self.next_group_id.wrapping_add(1);
        let state = GroupState::new(
            gid,
            pattern,
            name,
            record,
            Arc::clone(&self.defaults),
            self.claims.is_some(),
        );
        self.groups.insert(gid, state);
        self.group_ids.insert(key, gid);
        for request in waiting {
            self.join(gid, request);
        }
    }

    pub(super) fn join(&mut self, gid: GroupId, mut request: SubscribeRequest) {
        let Some(group) = self.groups.get(&gid) else {
            return;
        };
        request.registered(Registration::Subscribed);
        // SUBACK goes out before any EVENT of the subscription.
        reply(
            &request.send_queue,
            HubFrame::Suback(SubAck {
                rid: request.rid.clone(),
                topic: request.pattern.clone(),
                group: request.group.clone(),
                from_seq: group.cursor() + 1,
            }),
        );
        let conn = self.conns.entry(request.conn).or_default();
        if !conn.groups.contains(&gid) {
            conn.groups.push(gid);
        }
        let member = Member::new(
            request.conn,
            request.send_queue,
            request.policy,
            request.opts,
        )
        .sharing_bytes(request.group_bytes);
        self.with_group(gid, |group, fx| group.add_member(member, fx));
    }

    // -----------------------------------------------------------------
    // Store pages for groups that are behind

    pub(super) fn maybe_fetch(&mut self, gid: GroupId) {
        let Some((group, mut fx)) = group_and_effects!(self, gid) else {
            return;
        };
        let Some(request) = group.start_fetch(&mut fx) else {
            return;
        };
        let store = Arc::clone(&self.store);
        let commands = self.commands.clone();
        let pattern = group.pattern.clone();
        tokio::spawn(async move {
            let result = store
                .read_after_bounded(
                    request.after,
                    Some(&pattern),
                    request.limit,
                    request.max_bytes,
                    FETCH_SCAN_LIMIT,
                )
                .await
                // Serialized here, off the broker; the page is dropped at once.
                .map(|(events, last)| (committed_all(events), last));
            let _ = commands.send(Command::Fetched { gid, result }).await;
        });
    }

    /// Reads the bodies a group needs again (redeliveries, events that
    /// were blocked), within the group buffer.
    pub(super) fn maybe_read_bodies(&mut self, gid: GroupId) {
        let Some((group, mut fx)) = group_and_effects!(self, gid) else {
            return;
        };
        let Some(seqs) = group.start_body_load(&mut fx) else {
            return;
        };
        let store = Arc::clone(&self.store);
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let result = store.events_by_seq(&seqs).await.map(committed_all);
            let _ = commands.send(Command::BodiesRead { gid, result }).await;
        });
    }

    pub(super) fn bodies_read(
        &mut self,
        gid: GroupId,
        result: Result<Vec<Arc<Committed>>, StoreError>,
    ) {
        match result {
            Ok(committed) => {
                self.with_group(gid, |group, fx| group.on_bodies(&committed, fx));
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading events to deliver again failed; retrying");
                if let Some((group, mut fx)) = group_and_effects!(self, gid) {
                    group.on_bodies_failed(&mut fx);
                }
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(FETCH_RETRY).await;
                    let _ = commands.send(Command::RetryBodies { gid }).await;
                });
            }
        }
    }

    pub(super) fn fetched(
        &mut self,
        gid: GroupId,
        result: Result<(Vec<Arc<Committed>>, u64), StoreError>,
    ) {
        let head = self.head;
        match result {
            Ok((committed, last_examined)) => {
                self.with_group(gid, |group, fx| {
                    group.on_fetched(&committed, last_examined, head, fx);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading events for a group failed; retrying");
                if let Some((group, mut fx)) = group_and_effects!(self, gid) {
                    group.on_fetch_failed(&mut fx);
                }
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(FETCH_RETRY).await;
                    let _ = commands.send(Command::RetryFetch { gid }).await;
                });
            }
        }
    }

    // -----------------------------------------------------------------
    // Making group state durable

    pub(super) fn maybe_flush(&mut self) {
        let Some(due) = self.flush_due else {
            return;
        };
        if self.flush_in_flight || Instant::now() < due {
            return;
        }
        self.flush_due = None;
        let mut updates = Vec::new();
        for gid in std::mem::take(&mut self.dirty) {
            if let Some(update) = self.groups.get_mut(&gid).and_then(GroupState::take_update) {
                updates.push((gid, update));
            }
        }
        if updates.is_empty() {
            for done in self.waiting_for_next_flush.drain(..) {
                let _ = done.send(());
            }
            return;
        }
        self.flush_in_flight = true;
        self.waiting_for_current_flush = std::mem::take(&mut self.waiting_for_next_flush);
        let writer = self.writer.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            // One request per group: each group's dead letters are durable
            // together with the cursor that passes them.
            let results = join_all(updates.into_iter().map(|(gid, update)| {
                let writer = writer.clone();
                async move {
                    let result = writer.update_group(update.clone()).await;
                    (gid, update, result)
                }
            }))
            .await;
            let _ = commands.send(Command::Flushed { results }).await;
        });
    }

    pub(super) fn flushed(&mut self, results: Vec<(GroupId, GroupUpdate, Result<(), StoreError>)>) {
        self.flush_in_flight = false;
        for (gid, update, result) in results {
            if let Err(e) = result {
                tracing::error!(error = %e, "saving group progress failed; will retry");
                if let Some(group) = self.groups.get_mut(&gid) {
                    group.restore_update(update);
                    self.mark_dirty(gid);
                }
            }
        }
        for done in self.waiting_for_current_flush.drain(..) {
            let _ = done.send(());
        }
        if !self.waiting_for_next_flush.is_empty() {
            self.flush_due = Some(Instant::now());
        }
        self.evict_idle_groups();
    }

    /// Forgets groups nobody is subscribed to once their state is durable;
    /// they are loaded again from the store on the next SUBSCRIBE. Only the
    /// groups that lost their members are looked at, not every group.
    pub(super) fn evict_idle_groups(&mut self) {
        let idle: Vec<GroupId> = self
            .idle
            .iter()
            .copied()
            .filter(|gid| {
                self.groups.get(gid).is_none_or(|g| {
                    !g.has_members()
                        && !g.is_dirty()
                        && !g.is_reading()
                        && !self.dirty.contains(gid)
                })
            })
            .collect();
        for gid in idle {
            self.idle.remove(&gid);
            self.budget.forget(gid);
            if let Some(group) = self.groups.remove(&gid) {
                self.group_ids.remove(&group.key);
            }
        }
    }
}

/// Stored events as the broker keeps them, each event dropped once
/// serialized.
fn committed_all(events: Vec<Event>) -> Vec<Arc<Committed>> {
    events
        .into_iter()
        .map(|e| Committed::from_event(&e))
        .collect()
}
