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

mod budget;
mod committed;
mod group;
mod group_index;
mod live;

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

use self::budget::GroupBudget;
use self::committed::Committed;
pub(crate) use self::group::{ConnId, GroupView, MemberOpts, MemberView, ReplayRefused};
use self::group::{Effects, FETCH_SCAN_LIMIT, GroupId, GroupState, Member, Settle, TimerKey};
use self::group_index::GroupIndex;
pub(crate) use self::live::HoldLimits;
use self::live::LiveIndex;
use crate::config::GroupDefaults;
use crate::metrics::{GroupCounters, Metrics};
use crate::send_queue::SendQueue;
use crate::store::writer::{CommittedEvents, GroupUpdate, StoreWriter};
use crate::store::{GroupKey, GroupProgress, GroupRecord, Store, StoreError};
use prometheus_client::metrics::counter::Counter;

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
    /// Fired once the broker has taken the subscription into account (for
    /// a group: once the group is open, or the SUBSCRIBE was refused): the
    /// connection waits for it before reading its next frame, so an event
    /// published after this SUBSCRIBE (causally) is never missed, and a
    /// refused subscription is not counted as one.
    pub registered: Option<oneshot::Sender<Registration>>,
}

/// The broker's answer to [`Command::Inspect`].
#[derive(Debug, Default)]
pub(crate) struct Inspection {
    pub groups: Vec<GroupView>,
    pub buffer: BufferView,
}

/// The group buffer and the groups in memory, for the ops API.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct BufferView {
    /// Bytes counted in the group buffer (bodies read ahead once each,
    /// deliveries not yet settled, reservations for reads in flight).
    pub bytes: usize,
    /// `limits.group_buffer_bytes`.
    pub limit: usize,
    /// Event bodies held for their next delivery.
    pub bodies: usize,
    /// Groups waiting for room.
    pub waiting: usize,
    /// Groups loaded in memory, and those with members (they follow
    /// live commits).
    pub loaded_groups: usize,
    pub following: usize,
}

/// What became of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registration {
    Subscribed,
    /// Answered with an `ERR` (group cap, store failure).
    Refused,
}

impl SubscribeRequest {
    fn registered(&mut self, outcome: Registration) {
        if let Some(registered) = self.registered.take() {
            let _ = registered.send(outcome);
        }
    }
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
    /// The live state of the loaded groups among `keys`, or of every
    /// loaded group (ops API).
    Inspect {
        keys: Option<Vec<GroupKey>>,
        reply: oneshot::Sender<Inspection>,
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
        result: Result<(Vec<Arc<Committed>>, u64), StoreError>,
    },
    RetryFetch {
        gid: GroupId,
    },
    BodiesRead {
        gid: GroupId,
        result: Result<Vec<Arc<Committed>>, StoreError>,
    },
    RetryBodies {
        gid: GroupId,
    },
    SnapshotRead {
        conn: ConnId,
        pattern: Pattern,
        result: Result<Vec<Event>, StoreError>,
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

    /// The live state of the groups loaded in memory (groups with members,
    /// or with changes not yet durable) among `keys`, or of all of them.
    /// Empty when the broker stopped.
    pub async fn inspect(&self, keys: Option<Vec<GroupKey>>) -> Inspection {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Inspect { keys, reply }).await {
            answer.await.unwrap_or_default()
        } else {
            Inspection::default()
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
    /// `limits.group_buffer_bytes`.
    pub group_buffer_bytes: usize,
    /// `limits.max_groups`, and the groups stored at start.
    pub max_groups: usize,
    pub stored_groups: u64,
}

/// Starts the broker task.
pub(crate) fn spawn(setup: BrokerSetup) -> (BrokerHandle, tokio::task::JoinHandle<()>) {
    let (commands, receiver) = mpsc::channel(16 * 1024);
    let broker = Broker {
        store: setup.store,
        writer: setup.writer,
        commands: commands.clone(),
        defaults: setup.defaults,
        head: setup.head,
        live: LiveIndex::new(setup.hold_limits),
        groups: HashMap::new(),
        group_ids: HashMap::new(),
        group_index: GroupIndex::default(),
        budget: GroupBudget::new(setup.group_buffer_bytes),
        max_groups: setup.max_groups,
        stored_groups: setup.stored_groups,
        creating_groups: 0,
        idle: HashSet::new(),
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
    groups: HashMap<GroupId, GroupState>,
    group_ids: HashMap<GroupKey, GroupId>,
    /// Groups with members, by pattern: the ones a commit goes to.
    group_index: GroupIndex,
    /// The group buffer shared by every group.
    budget: GroupBudget,
    max_groups: usize,
    /// Groups in the store, and creations in flight (the group cap).
    stored_groups: u64,
    creating_groups: u64,
    /// Loaded groups without members: evicted once their state is durable.
    idle: HashSet<GroupId>,
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
            self.wake_budget_waiters();
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
            Command::Inspect { keys, reply } => {
                let groups = match keys {
                    Some(keys) => keys
                        .iter()
                        .filter_map(|key| self.group_ids.get(key))
                        .filter_map(|gid| self.groups.get(gid))
                        .map(GroupState::view)
                        .collect(),
                    None => self.groups.values().map(GroupState::view).collect(),
                };
                let buffer = BufferView {
                    bytes: self.budget.used(),
                    limit: self.budget.limit(),
                    bodies: self.budget.body_count(),
                    waiting: self.budget.waiting(),
                    loaded_groups: self.groups.len(),
                    following: self.group_index.len(),
                };
                let _ = reply.send(Inspection { groups, buffer });
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
            Command::BodiesRead { gid, result } => self.bodies_read(gid, result),
            Command::RetryBodies { gid } => {
                self.with_group(gid, |group, fx| group.pump(fx));
            }
            Command::SnapshotRead {
                conn,
                pattern,
                result,
            } => match result {
                Ok(events) => self.live.finish_snapshot(conn, &pattern, &events),
                Err(e) => {
                    tracing::warn!(error = %e, pattern = %pattern, "snapshot read failed");
                    self.live.abandon_snapshot(conn, &pattern);
                }
            },
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
        let upto = self.head;
        for (gid, events) in self.group_index.matching(&committed) {
            self.with_group(gid, |group, fx| group.on_live(&events, upto, fx));
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
        Some(result)
    }

    /// Groups that waited for the group buffer get their turn, in order,
    /// while there is room.
    fn wake_budget_waiters(&mut self) {
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

    fn subscribe(&mut self, request: SubscribeRequest) {
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

    fn subscribe_live(&mut self, mut request: SubscribeRequest) {
        request.registered(Registration::Subscribed);
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
        self.live.subscribe(
            request.conn,
            &request.pattern,
            Arc::clone(&request.send_queue),
            Arc::clone(&request.policy),
            request.snapshot.then_some(head),
        );
        if request.snapshot {
            let store = Arc::clone(&self.store);
            let commands = self.commands.clone();
            let (conn, pattern) = (request.conn, request.pattern);
            tokio::spawn(async move {
                let result = store.latest_by_key(&pattern).await;
                let _ = commands
                    .send(Command::SnapshotRead {
                        conn,
                        pattern,
                        result,
                    })
                    .await;
            });
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
                    crate::refusals::count(crate::refusals::Refusal::GroupCap);
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

    fn group_created(&mut self, key: GroupKey, cursor: u64, result: Result<(), StoreError>) {
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

    fn fail_pending(&mut self, key: &GroupKey, error: &StoreError) {
        tracing::error!(error = %error, pattern = %key.pattern, group = %key.group, "cannot open group");
        self.refuse_pending(
            key,
            ErrorCode::Internal,
            "the group's state could not be loaded; try again",
        );
    }

    /// Answers every SUBSCRIBE waiting for a group with an `ERR`.
    fn refuse_pending(&mut self, key: &GroupKey, code: ErrorCode, msg: &str) {
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

    fn join(&mut self, gid: GroupId, mut request: SubscribeRequest) {
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
    fn maybe_read_bodies(&mut self, gid: GroupId) {
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

    fn bodies_read(&mut self, gid: GroupId, result: Result<Vec<Arc<Committed>>, StoreError>) {
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

    fn fetched(&mut self, gid: GroupId, result: Result<(Vec<Arc<Committed>>, u64), StoreError>) {
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
    /// they are loaded again from the store on the next SUBSCRIBE. Only the
    /// groups that lost their members are looked at, not every group.
    fn evict_idle_groups(&mut self) {
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
