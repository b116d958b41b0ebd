//! The broker: one task that owns every subscription — the live index and
//! all consumer groups — fed by a channel of commands (connections) and the
//! store writer's committed batches.
//!
//! One owner means no locks on the delivery path and a single, obvious
//! order of events: committed batches arrive in `seq` order and are applied
//! to the live index and to every group before the next command. Store
//! reads (group state, pages for groups that are behind, snapshots) and
//! group writes (cursor moves, dead letters, coalesced every
//! `progress_flush_ms`) run in spawned tasks whose results come back as
//! commands, so the broker never waits on IO.

mod committed;
mod group;
mod live;
mod snapshot;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures_util::future::join_all;
use promhub_core::frames::{
    self, ErrorFrame, Event, Group as GroupName, HubFrame, Rid, StartFrom, SubAck, UnsubAck,
};
use promhub_core::{ErrorCode, Pattern, Policy};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::committed::Committed;
pub(crate) use self::group::{ConnId, GroupView, MemberOpts, MemberView, ReplayRefused};
use self::group::{Effects, FETCH_SCAN_LIMIT, GroupId, GroupState, Member, Settle, TimerKey};
pub(crate) use self::live::HoldLimits;
use self::live::{LiveIndex, SnapshotStep};
use self::snapshot::{PageReads, SnapshotPage, SnapshotReader};
use crate::config::GroupDefaults;
use crate::metrics::{GroupCounters, Metrics};
use crate::send_queue::SendQueue;
use crate::store::writer::{CommittedEvents, GroupUpdate, StoreWriter};
use crate::store::{GroupKey, GroupProgress, GroupRecord, Store, StoreError};
use prometheus_client::metrics::counter::Counter;

/// How long a group waits before retrying a failed store read.
const FETCH_RETRY: Duration = Duration::from_secs(1);
/// Commands handled per wake-up before timers get a look.
const COMMANDS_PER_TURN: usize = 512;

/// A SUBSCRIBE that passed the connection's checks.
#[derive(Debug)]
pub(crate) struct SubscribeRequest {
    pub conn: ConnId,
    pub send_queue: Arc<SendQueue>,
    pub policy: Arc<Policy>,
    pub pattern: Pattern,
    pub group: Option<GroupName>,
    pub opts: MemberOpts,
    /// Unacknowledged group-delivery bytes of the whole connection, shared
    /// by all its group subscriptions (bounded by
    /// `MemberOpts::max_inflight_bytes`).
    pub group_bytes: Arc<AtomicUsize>,
    pub from: StartFrom,
    pub snapshot: bool,
    pub rid: Option<Rid>,
    /// Fired once the broker has taken the subscription into account: the
    /// connection waits for it before reading its next frame, so an event
    /// published after this SUBSCRIBE (causally) is never missed.
    pub registered: Option<oneshot::Sender<()>>,
}

/// Subscriptions waiting for their group to be loaded or created.
#[derive(Debug)]
struct PendingGroup {
    /// The broker's head when the first of them arrived: where a new group
    /// `from: latest` starts.
    head: u64,
    waiting: Vec<SubscribeRequest>,
}

#[derive(Debug)]
pub(crate) enum Command {
    Subscribe(SubscribeRequest),
    Unsubscribe {
        conn: ConnId,
        send_queue: Arc<SendQueue>,
        pattern: Pattern,
        group: Option<GroupName>,
        rid: Option<Rid>,
    },
    Ack {
        conn: ConnId,
        key: GroupKey,
        id: String,
        seq: Option<u64>,
    },
    Nack {
        conn: ConnId,
        key: GroupKey,
        id: String,
        seq: Option<u64>,
        reason: Option<String>,
        delay_ms: Option<u64>,
        final_: bool,
    },
    Working {
        conn: ConnId,
        key: GroupKey,
        id: String,
        seq: Option<u64>,
    },
    /// A re-AUTH replaced the connection's policy. `applied` is answered
    /// once every later delivery is checked against it, so the connection
    /// can send `OK` knowing nothing after it was sent under the old one.
    PolicyChanged {
        conn: ConnId,
        policy: Arc<Policy>,
        applied: oneshot::Sender<()>,
    },
    Disconnected {
        conn: ConnId,
    },
    /// Answered once every event committed before it has been fanned out
    /// and every group change made before it is durable.
    Barrier {
        done: oneshot::Sender<()>,
    },
    /// A barrier that waits for the broker to see `seq` committed.
    BarrierAt {
        seq: u64,
        done: oneshot::Sender<()>,
    },
    /// The live state of every loaded group (ops API).
    Inspect {
        reply: oneshot::Sender<Vec<GroupView>>,
    },
    /// Deliver a dead-lettered event to the group again (ops API).
    Replay {
        key: GroupKey,
        event: Event,
        reply: oneshot::Sender<Result<(), ReplayRefused>>,
    },
    /// Final flush, then the broker stops.
    Shutdown {
        done: oneshot::Sender<()>,
    },
    // Results of the broker's own IO tasks.
    GroupLoaded {
        key: GroupKey,
        result: Result<Option<GroupRecord>, StoreError>,
    },
    GroupCreated {
        key: GroupKey,
        cursor: u64,
        result: Result<(), StoreError>,
    },
    Fetched {
        gid: GroupId,
        result: Result<(Vec<Event>, u64), StoreError>,
    },
    RetryFetch {
        gid: GroupId,
    },
    SnapshotPage {
        reader: SnapshotReader,
        result: Result<SnapshotPage, StoreError>,
    },
    Flushed {
        results: Vec<(GroupId, GroupUpdate, Result<(), StoreError>)>,
    },
}

/// The connections' handle on the broker.
#[derive(Debug, Clone)]
pub(crate) struct BrokerHandle {
    commands: mpsc::Sender<Command>,
}

impl BrokerHandle {
    /// Sends a command; false when the broker has stopped.
    pub async fn send(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }

    /// Waits until the group changes sent before are durable.
    pub async fn barrier(&self) {
        let (done, wait) = oneshot::channel();
        if self.send(Command::Barrier { done }).await {
            let _ = wait.await;
        }
    }

    /// The live state of every group loaded in memory (groups with members,
    /// or with changes not yet durable). Empty when the broker stopped.
    pub async fn inspect(&self) -> Vec<GroupView> {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Inspect { reply }).await {
            answer.await.unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    /// Delivers a dead-lettered event to its (loaded, connected) group
    /// again. `None` when the broker stopped.
    pub async fn replay(&self, key: GroupKey, event: Event) -> Option<Result<(), ReplayRefused>> {
        let (reply, answer) = oneshot::channel();
        if !self.send(Command::Replay { key, event, reply }).await {
            return None;
        }
        answer.await.ok()
    }

    /// Flushes group state and stops the broker.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.send(Command::Shutdown { done }).await {
            let _ = wait.await;
        }
    }
}

/// What the broker needs at start.
#[derive(Debug)]
pub(crate) struct BrokerSetup {
    pub store: Arc<dyn Store>,
    pub writer: StoreWriter,
    pub committed: CommittedEvents,
    pub defaults: Arc<GroupDefaults>,
    pub hold_limits: HoldLimits,
    /// The newest seq in the store at start.
    pub head: u64,
    pub metrics: Arc<Metrics>,
}

/// Starts the broker task.
pub(crate) fn spawn(setup: BrokerSetup) -> (BrokerHandle, tokio::task::JoinHandle<()>) {
    let (commands, receiver) = mpsc::channel(16 * 1024);
    let broker = Broker {
        store: Arc::clone(&setup.store),
        writer: setup.writer,
        commands: commands.clone(),
        defaults: setup.defaults,
        head: setup.head,
        live: LiveIndex::new(setup.hold_limits),
        snapshot_reads: PageReads::new(
            Arc::clone(&setup.store),
            commands.clone(),
            setup.hold_limits.frames,
            setup.hold_limits.bytes,
        ),
        groups: HashMap::new(),
        group_ids: HashMap::new(),
        next_group_id: 0,
        pending_groups: HashMap::new(),
        conns: HashMap::new(),
        timers: BTreeSet::new(),
        dirty: HashSet::new(),
        flush_due: None,
        flush_in_flight: false,
        waiting_for_current_flush: Vec::new(),
        waiting_for_next_flush: Vec::new(),
        waiting_for_head: Vec::new(),
        shutdown: None,
        start: Instant::now(),
        counters: setup.metrics.groups.clone(),
        live_deliveries: setup.metrics.live_deliveries.clone(),
    };
    let task = tokio::spawn(broker.run(receiver, setup.committed));
    (BrokerHandle { commands }, task)
}

#[derive(Debug, Default)]
struct ConnSubs {
    send_queue: Option<Arc<SendQueue>>,
    live: Vec<Pattern>,
    groups: Vec<GroupId>,
}

struct Broker {
    store: Arc<dyn Store>,
    writer: StoreWriter,
    /// For the broker's own IO tasks to report back.
    commands: mpsc::Sender<Command>,
    defaults: Arc<GroupDefaults>,
    /// Newest seq seen committed.
    head: u64,
    live: LiveIndex,
    /// Reads snapshot pages for live subscriptions (see `snapshot.rs`).
    snapshot_reads: PageReads,
    groups: HashMap<GroupId, GroupState>,
    group_ids: HashMap<GroupKey, GroupId>,
    next_group_id: GroupId,
    /// Subscriptions waiting for their group to be loaded or created.
    pending_groups: HashMap<GroupKey, PendingGroup>,
    conns: HashMap<ConnId, ConnSubs>,
    timers: BTreeSet<TimerKey>,
    /// Groups with changes not yet handed to the writer.
    dirty: HashSet<GroupId>,
    flush_due: Option<Instant>,
    flush_in_flight: bool,
    waiting_for_current_flush: Vec<oneshot::Sender<()>>,
    waiting_for_next_flush: Vec<oneshot::Sender<()>>,
    /// Barriers waiting for the broker to see a seq committed.
    waiting_for_head: Vec<(u64, oneshot::Sender<()>)>,
    shutdown: Option<oneshot::Sender<()>>,
    start: Instant,
    counters: GroupCounters,
    live_deliveries: Counter,
}

impl Broker {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut committed: CommittedEvents) {
        let mut committed_open = true;
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                batch = committed.recv(), if committed_open => match batch {
                    Some(events) => self.on_committed(&events),
                    None => committed_open = false,
                },
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    self.handle(command);
                    for _ in 0..COMMANDS_PER_TURN {
                        match commands.try_recv() {
                            Ok(command) => self.handle(command),
                            Err(_) => break,
                        }
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {}
            }
            self.fire_timers();
            self.maybe_flush();
            if self.shutdown.is_some() && !self.flush_in_flight && self.dirty.is_empty() {
                if let Some(done) = self.shutdown.take() {
                    let _ = done.send(());
                }
                break;
            }
        }
        tracing::debug!("broker stopped");
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn next_wake(&self) -> Option<Instant> {
        let timer = self
            .timers
            .first()
            .map(|&(due, _, _)| self.start + Duration::from_millis(due));
        match (timer, self.flush_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe(request) => self.subscribe(request),
            Command::Unsubscribe {
                conn,
                send_queue,
                pattern,
                group,
                rid,
            } => self.unsubscribe(conn, &send_queue, pattern, group, rid),
            Command::Ack { conn, key, id, seq } => {
                let settle = Settle { conn, id: &id, seq };
                self.with_member_group(conn, &key, |group, fx| group.ack(settle, fx));
            }
            Command::Nack {
                conn,
                key,
                id,
                seq,
                reason,
                delay_ms,
                final_,
            } => {
                let settle = Settle { conn, id: &id, seq };
                self.with_member_group(conn, &key, |group, fx| {
                    group.nack(settle, reason.as_deref(), delay_ms, final_, fx);
                });
            }
            Command::Working { conn, key, id, seq } => {
                let settle = Settle { conn, id: &id, seq };
                self.with_member_group(conn, &key, |group, fx| group.working(settle, fx));
            }
            Command::PolicyChanged {
                conn,
                policy,
                applied,
            } => {
                self.policy_changed(conn, &policy);
                let _ = applied.send(());
            }
            Command::Disconnected { conn } => self.disconnected(conn),
            Command::Barrier { done } => {
                let store = Arc::clone(&self.store);
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    // If the read fails, wait for nothing more than what the
                    // broker has already seen.
                    let seq = store.last_seq().await.unwrap_or(0);
                    let _ = commands.send(Command::BarrierAt { seq, done }).await;
                });
            }
            Command::BarrierAt { seq, done } => {
                if self.head >= seq {
                    self.barrier_flush(done);
                } else {
                    self.waiting_for_head.push((seq, done));
                }
            }
            Command::Inspect { reply } => {
                let _ = reply.send(self.groups.values().map(GroupState::view).collect());
            }
            Command::Replay { key, event, reply } => {
                let result = match self.group_ids.get(&key) {
                    Some(&gid) => {
                        let committed = Committed::from_event(&event);
                        self.with_group(gid, |group, fx| group.replay(committed, fx))
                            .unwrap_or(Err(ReplayRefused::NoMembers))
                    }
                    None => Err(ReplayRefused::NoMembers),
                };
                let _ = reply.send(result);
            }
            Command::Shutdown { done } => {
                self.shutdown = Some(done);
                self.flush_due = Some(Instant::now());
            }
            Command::GroupLoaded { key, result } => self.group_loaded(key, result),
            Command::GroupCreated {
                key,
                cursor,
                result,
            } => self.group_created(key, cursor, result),
            Command::Fetched { gid, result } => self.fetched(gid, result),
            Command::RetryFetch { gid } => self.maybe_fetch(gid),
            Command::SnapshotPage { reader, result } => self.snapshot_page(reader, result),
            Command::Flushed { results } => self.flushed(results),
        }
    }

    /// The second half of a barrier: wait for group changes to be durable.
    fn barrier_flush(&mut self, done: oneshot::Sender<()>) {
        if self.dirty.is_empty() && !self.flush_in_flight {
            let _ = done.send(());
        } else {
            self.waiting_for_next_flush.push(done);
            self.flush_due = Some(Instant::now());
        }
    }

    // -----------------------------------------------------------------
    // Committed events

    fn on_committed(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let committed: Vec<Arc<Committed>> = events.iter().map(Committed::from_event).collect();
        if let Some(last) = committed.last() {
            self.head = self.head.max(last.seq);
        }
        self.live_deliveries.inc_by(self.live.fan_out(&committed));
        let gids: Vec<GroupId> = self.groups.keys().copied().collect();
        for gid in gids {
            self.with_group(gid, |group, fx| group.on_live(&committed, fx));
        }
        if !self.waiting_for_head.is_empty() {
            let head = self.head;
            let (reached, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_for_head)
                .into_iter()
                .partition(|(seq, _)| *seq <= head);
            self.waiting_for_head = waiting;
            for (_, done) in reached {
                self.barrier_flush(done);
            }
        }
    }

    // -----------------------------------------------------------------
    // Groups: access helpers

    /// Runs `f` on a group with its effects, then takes care of what may
    /// follow: a store read when it fell behind, a flush when it changed.
    fn with_group<R>(
        &mut self,
        gid: GroupId,
        f: impl FnOnce(&mut GroupState, &mut Effects<'_>) -> R,
    ) -> Option<R> {
        let now_mono = self.mono_ms();
        let now_wall = crate::clock::now_ms();
        let group = self.groups.get_mut(&gid)?;
        let mut fx = Effects {
            now_mono,
            now_wall,
            timers: &mut self.timers,
            counters: &self.counters,
        };
        let result = f(group, &mut fx);
        let dirty = group.is_dirty();
        if dirty {
            self.mark_dirty(gid);
        }
        self.maybe_fetch(gid);
        Some(result)
    }

    /// Like [`Broker::with_group`] for a group `conn` is a member of;
    /// ignored otherwise (answers for unknown subscriptions are ignored).
    fn with_member_group(
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

    fn mark_dirty(&mut self, gid: GroupId) {
        self.dirty.insert(gid);
        if self.flush_due.is_none() {
            self.flush_due =
                Some(Instant::now() + Duration::from_millis(self.defaults.progress_flush_ms));
        }
    }

    fn fire_timers(&mut self) {
        let now = self.mono_ms();
        while let Some(&(due, gid, seq)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            self.with_group(gid, |group, fx| group.on_timer(seq, due, fx));
        }
    }

    // -----------------------------------------------------------------
    // Subscribe / unsubscribe

    fn subscribe(&mut self, mut request: SubscribeRequest) {
        if let Some(registered) = request.registered.take() {
            let _ = registered.send(());
        }
        let conn = self.conns.entry(request.conn).or_default();
        conn.send_queue = Some(Arc::clone(&request.send_queue));
        let Some(group) = request.group.clone() else {
            self.subscribe_live(request);
            return;
        };
        let key = GroupKey::new(&request.pattern, &group);
        if let Some(&gid) = self.group_ids.get(&key) {
            self.join(gid, request);
            return;
        }
        if let Some(pending) = self.pending_groups.get_mut(&key) {
            pending.waiting.push(request);
            return;
        }
        self.pending_groups.insert(
            key.clone(),
            PendingGroup {
                head: self.head,
                waiting: vec![request],
            },
        );
        let store = Arc::clone(&self.store);
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let result = store.load_group(&key).await;
            let _ = commands.send(Command::GroupLoaded { key, result }).await;
        });
    }

    fn subscribe_live(&mut self, request: SubscribeRequest) {
        let conn = self.conns.entry(request.conn).or_default();
        if !conn.live.contains(&request.pattern) {
            conn.live.push(request.pattern.clone());
        }
        let head = self.head;
        reply(
            &request.send_queue,
            HubFrame::Suback(SubAck {
                rid: request.rid.clone(),
                topic: request.pattern.clone(),
                group: None,
                from_seq: head + 1,
            }),
        );
        let ticket = self.live.subscribe(
            request.conn,
            &request.pattern,
            Arc::clone(&request.send_queue),
            Arc::clone(&request.policy),
            request.snapshot.then_some(head),
        );
        if let Some(ticket) = ticket {
            let reader =
                SnapshotReader::new(request.conn, request.pattern, ticket, request.send_queue);
            self.snapshot_reads.spawn(reader, None);
        }
    }

    /// A snapshot page was read: queue it, then read the next one (once the
    /// connection has room) or end the snapshot.
    fn snapshot_page(&mut self, reader: SnapshotReader, result: Result<SnapshotPage, StoreError>) {
        match result {
            Ok(page) => {
                let step = self.live.snapshot_page(
                    reader.conn,
                    &reader.pattern,
                    reader.id,
                    page.frames,
                    page.next.is_none(),
                );
                if let (SnapshotStep::Continue, Some(next)) = (step, page.next) {
                    self.snapshot_reads.spawn(reader, Some(next));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, pattern = %reader.pattern, "snapshot read failed");
                self.live
                    .abandon_snapshot(reader.conn, &reader.pattern, reader.id);
            }
        }
    }

    fn group_loaded(&mut self, key: GroupKey, result: Result<Option<GroupRecord>, StoreError>) {
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

    fn group_created(&mut self, key: GroupKey, cursor: u64, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {
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

    fn fail_pending(&mut self, key: &GroupKey, error: &StoreError) {
        tracing::error!(error = %error, pattern = %key.pattern, group = %key.group, "cannot open group");
        let waiting = self
            .pending_groups
            .remove(key)
            .map(|p| p.waiting)
            .unwrap_or_default();
        for request in waiting {
            reply(
                &request.send_queue,
                HubFrame::Err(ErrorFrame::new(
                    ErrorCode::Internal,
                    "the group's state could not be loaded; try again",
                    request.rid,
                )),
            );
        }
    }

    fn open_group(&mut self, key: GroupKey, record: GroupRecord) {
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
        let state = GroupState::new(gid, pattern, name, record, Arc::clone(&self.defaults));
        self.groups.insert(gid, state);
        self.group_ids.insert(key, gid);
        for request in waiting {
            self.join(gid, request);
        }
    }

    fn join(&mut self, gid: GroupId, request: SubscribeRequest) {
        let Some(group) = self.groups.get(&gid) else {
            return;
        };
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

    fn unsubscribe(
        &mut self,
        conn: ConnId,
        send_queue: &Arc<SendQueue>,
        pattern: Pattern,
        group: Option<GroupName>,
        rid: Option<Rid>,
    ) {
        match &group {
            None => {
                self.live.unsubscribe(conn, pattern.as_str());
                if let Some(subs) = self.conns.get_mut(&conn) {
                    subs.live.retain(|p| p != &pattern);
                }
            }
            Some(name) => {
                let key = GroupKey::new(&pattern, name);
                if let Some(pending) = self.pending_groups.get_mut(&key) {
                    pending.waiting.retain(|r| r.conn != conn);
                }
                if let Some(&gid) = self.group_ids.get(&key) {
                    if let Some(subs) = self.conns.get_mut(&conn) {
                        subs.groups.retain(|&g| g != gid);
                    }
                    self.with_group(gid, |group, fx| group.remove_member(conn, fx));
                }
            }
        }
        // Unsubscribing is idempotent: the subscription is gone either way.
        if rid.is_some() {
            reply(
                send_queue,
                HubFrame::Unsuback(UnsubAck {
                    rid,
                    topic: pattern,
                    group,
                }),
            );
        }
    }

    fn policy_changed(&mut self, conn: ConnId, policy: &Arc<Policy>) {
        let Some(subs) = self.conns.get(&conn) else {
            return;
        };
        for pattern in &subs.live {
            self.live.set_policy(conn, pattern.as_str(), policy);
        }
        for gid in subs.groups.clone() {
            self.with_group(gid, |group, fx| group.set_policy(conn, policy, fx));
        }
        for pending in self.pending_groups.values_mut() {
            for request in pending.waiting.iter_mut().filter(|r| r.conn == conn) {
                request.policy = Arc::clone(policy);
            }
        }
    }

    fn disconnected(&mut self, conn: ConnId) {
        for pending in self.pending_groups.values_mut() {
            pending.waiting.retain(|r| r.conn != conn);
        }
        let Some(subs) = self.conns.remove(&conn) else {
            return;
        };
        for pattern in &subs.live {
            self.live.unsubscribe(conn, pattern.as_str());
        }
        for gid in subs.groups {
            self.with_group(gid, |group, fx| group.remove_member(conn, fx));
        }
    }

    // -----------------------------------------------------------------
    // Store pages for groups that are behind

    fn maybe_fetch(&mut self, gid: GroupId) {
        let Some(group) = self.groups.get_mut(&gid) else {
            return;
        };
        let Some(request) = group.start_fetch() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let commands = self.commands.clone();
        let pattern = group.pattern.clone();
        tokio::spawn(async move {
            let result = store
                .read_after(
                    request.after,
                    Some(&pattern),
                    request.limit,
                    FETCH_SCAN_LIMIT,
                )
                .await;
            let _ = commands.send(Command::Fetched { gid, result }).await;
        });
    }

    fn fetched(&mut self, gid: GroupId, result: Result<(Vec<Event>, u64), StoreError>) {
        let head = self.head;
        match result {
            Ok((events, last_examined)) => {
                let committed: Vec<Arc<Committed>> =
                    events.iter().map(Committed::from_event).collect();
                self.with_group(gid, |group, fx| {
                    group.on_fetched(&committed, last_examined, head, fx);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading events for a group failed; retrying");
                if let Some(group) = self.groups.get_mut(&gid) {
                    group.on_fetch_failed();
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

    fn maybe_flush(&mut self) {
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

    fn flushed(&mut self, results: Vec<(GroupId, GroupUpdate, Result<(), StoreError>)>) {
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
    /// they are loaded again from the store on the next SUBSCRIBE.
    fn evict_idle_groups(&mut self) {
        let idle: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(gid, g)| {
                !g.has_members() && !g.is_dirty() && !g.is_fetching() && !self.dirty.contains(gid)
            })
            .map(|(&gid, _)| gid)
            .collect();
        for gid in idle {
            if let Some(group) = self.groups.remove(&gid) {
                self.group_ids.remove(&group.key);
            }
        }
    }
}

/// Queues an answer frame for a connection.
fn reply(send_queue: &SendQueue, frame: HubFrame) {
    send_queue.push(frames::encode(&frame));
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
