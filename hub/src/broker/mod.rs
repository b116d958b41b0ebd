//! The broker: one task that owns every subscription — the live index and
//! all consumer groups — fed by a channel of commands (connections) and the
//! store writer's committed batches.
//!
//! One owner means no locks on the delivery path and a single, obvious
//! order of events: committed batches arrive in `seq` order and are applied
//! to the live index and to every group before the next command. Store
//! reads (group state, pages for groups that are behind, catch-ups of live
//! subscriptions) and
//! group writes (cursor moves, dead letters, coalesced every
//! `progress_flush_ms`) run in spawned tasks whose results come back as
//! commands, so the broker never waits on IO.

mod budget;
mod catch_up;
mod claims;
mod committed;
mod group;
mod group_index;
mod groups;
mod live;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use promhub_core::frames::{
    self, Event, Group as GroupName, HubFrame, Rid, StartFrom, SubAck, UnsubAck,
};
use promhub_core::{Pattern, Policy};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::budget::GroupBudget;
use self::catch_up::{CatchUpPage, CatchUpReader, PageReads, PendingSuback, Source};
use self::committed::Committed;
use self::group::{ClaimWrites, GroupId, GroupState, Settle, TimerKey};
pub(crate) use self::group::{ConnId, GroupView, MemberOpts, MemberView, ReplayRefused};
use self::group_index::GroupIndex;
pub(crate) use self::live::HoldLimits;
use self::live::{CatchUpStep, LiveIndex};
use crate::config::GroupDefaults;
use crate::metrics::{GroupCounters, Metrics};
use crate::send_queue::SendQueue;
use crate::store::mongo::{ClaimOutcome, ClaimStatus, GroupClaims};
use crate::store::writer::{CommittedEvents, GroupUpdate, StoreWriter};
use crate::store::{GroupKey, GroupRecord, Store, StoreError};
use prometheus_client::metrics::counter::Counter;

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
    CatchUpPage {
        reader: CatchUpReader,
        result: Result<CatchUpPage, StoreError>,
    },
    Flushed {
        results: Vec<(GroupId, GroupUpdate, Result<(), StoreError>)>,
    },
    Claimed {
        gid: GroupId,
        result: Result<ClaimOutcome, StoreError>,
    },
    RetryClaims {
        gid: GroupId,
    },
    ClaimStatus {
        gid: GroupId,
        result: Result<Vec<(u64, ClaimStatus)>, StoreError>,
    },
    ClaimsWritten {
        gid: GroupId,
        failed: Option<ClaimWrites>,
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

    /// Sends a command if the queue has room now; gives it back when the
    /// queue is full (then [`send`](Self::send) it). A stopped broker drops
    /// it, as `send` does.
    pub fn try_send(&self, command: Command) -> Option<Command> {
        match self.commands.try_send(command) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(command)) => Some(command),
        }
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
    /// Delivery claims when the store is shared by several hubs (members
    /// of one group on different hubs), and how often to ask what became
    /// of the events other hubs hold.
    pub claims: Option<GroupClaims>,
    pub claim_check_every: Duration,
    /// Whether other hubs are alive (the registry's last listing): a hub
    /// alone need not mark its finished claims done.
    pub other_hubs: crate::cluster::OtherHubs,
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
        catch_up_reads: PageReads::new(
            Arc::clone(&setup.store),
            commands.clone(),
            setup.hold_limits.frames,
            setup.hold_limits.bytes,
        ),
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
        claims: setup.claims,
        claim_check_every: setup.claim_check_every,
        other_hubs: setup.other_hubs,
        claim_check_due: None,
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
    /// Reads the pages live subscriptions catch up with (see `catch_up.rs`).
    catch_up_reads: PageReads,
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
    claims: Option<GroupClaims>,
    claim_check_every: Duration,
    other_hubs: crate::cluster::OtherHubs,
    /// When the next status check of other hubs' deliveries is due.
    claim_check_due: Option<Instant>,
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
            self.maybe_check_claims();
            if self.shutdown.is_some()
                && !self.flush_in_flight
                && self.dirty.is_empty()
                && !self.groups.values().any(GroupState::claim_writes_pending)
            {
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
        earliest_wake(
            timer,
            self.flush_due,
            self.flush_in_flight,
            self.claim_check_due,
        )
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
            Command::CatchUpPage { reader, result } => self.catch_up_page(reader, result),
            Command::Flushed { results } => self.flushed(results),
            Command::Claimed { gid, result } => self.claimed(gid, result),
            Command::RetryClaims { gid } => {
                self.with_group(gid, |group, fx| group.retry_claims(fx));
            }
            Command::ClaimStatus { gid, result } => self.claim_status(gid, result),
            Command::ClaimsWritten { gid, failed } => self.claims_written(gid, failed),
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
        let Some(last) = events.last() else {
            return;
        };
        self.head = self.head.max(last.seq);
        // Only events someone follows are serialized: a topic with no live
        // subscription and no following group costs a lookup, not an
        // encoding (a hub that mostly stores pays nothing for the broker).
        let committed: Vec<Arc<Committed>> = events
            .iter()
            .filter(|e| self.live.wants(&e.topic) || self.group_index.wants(&e.topic))
            .map(Committed::from_event)
            .collect();
        if !committed.is_empty() {
            self.live_deliveries.inc_by(self.live.fan_out(&committed));
            let upto = self.head;
            for (gid, events) in self.group_index.matching(&committed) {
                self.with_group(gid, |group, fx| group.on_live(&events, upto, fx));
            }
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
        // `from` a seq the log holds: catch up from the store first (the
        // SUBACK then comes with the first page, once it is known where
        // complete delivery starts); a snapshot likewise; else live only.
        let from = match request.from {
            StartFrom::Latest => None,
            StartFrom::Earliest => Some(1),
            StartFrom::Seq(seq) => Some(seq.max(1)),
        };
        let (catch_up, from_seq) = match from {
            Some(from) if from <= head => (
                Some(Source::Log {
                    after: from - 1,
                    upto: head,
                }),
                0,
            ),
            Some(from) => (None, from),
            None if request.snapshot => (Some(Source::Snapshot(None)), 0),
            None => (None, 0),
        };
        let answered_now = !matches!(catch_up, Some(Source::Log { .. }));
        if answered_now {
            reply(
                &request.send_queue,
                HubFrame::Suback(SubAck {
                    rid: request.rid.clone(),
                    topic: request.pattern.clone(),
                    group: None,
                    from_seq: from_seq.max(head + 1),
                }),
            );
        }
        let ticket = self.live.subscribe(
            request.conn,
            &request.pattern,
            Arc::clone(&request.send_queue),
            Arc::clone(&request.policy),
            catch_up.as_ref().map(|_| head),
            from_seq,
        );
        if let (Some(ticket), Some(source)) = (ticket, catch_up) {
            let suback = (!answered_now).then(|| PendingSuback {
                rid: request.rid,
                from: from.unwrap_or(1),
            });
            let reader = CatchUpReader::new(
                request.conn,
                request.pattern,
                ticket,
                request.send_queue,
                source,
                suback,
            );
            self.catch_up_reads.spawn(reader, None);
        }
    }

    /// A catch-up page was read: answer the SUBSCRIBE if it waited for it,
    /// queue the page, then read the next one (once the connection has
    /// room) or end the catch-up.
    fn catch_up_page(
        &mut self,
        mut reader: CatchUpReader,
        result: Result<CatchUpPage, StoreError>,
    ) {
        if !self
            .live
            .catching_up(reader.conn, &reader.pattern, reader.id)
        {
            return;
        }
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                // Skipping the page would be a silent gap: read it again
                // (the live events held meanwhile stay within their bound).
                tracing::warn!(error = %e, pattern = %reader.pattern, "catch-up read failed; retrying");
                self.catch_up_reads.retry(reader);
                return;
            }
        };
        if let (Some(pending), Some(from_seq)) = (reader.suback.take(), page.from_seq) {
            reply(
                &reader.send_queue,
                HubFrame::Suback(SubAck {
                    rid: pending.rid,
                    topic: reader.pattern.clone(),
                    group: None,
                    from_seq,
                }),
            );
        }
        let step = self.live.catch_up_page(
            reader.conn,
            &reader.pattern,
            reader.id,
            page.frames,
            page.next.is_none(),
        );
        if let (CatchUpStep::Continue, Some(next)) = (step, page.next) {
            reader.source = next;
            self.catch_up_reads.spawn(reader, None);
        }
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

/// When the broker's loop must wake: the first group timer, the due
/// progress flush unless one is in flight (its answer wakes the loop, which
/// flushes then: a due time already past would otherwise wake it at once,
/// again and again, for as long as the write takes), the next claim check.
fn earliest_wake(
    timer: Option<Instant>,
    flush_due: Option<Instant>,
    flush_in_flight: bool,
    claim_check_due: Option<Instant>,
) -> Option<Instant> {
    let flush = flush_due.filter(|_| !flush_in_flight);
    [timer, flush, claim_check_due].into_iter().flatten().min()
}

#[cfg(test)]
mod wake_tests {
    use super::*;

    #[test]
    fn a_flush_in_flight_does_not_wake_the_loop_until_it_answers() {
        let now = Instant::now();
        let past = now - Duration::from_millis(5);
        let later = now + Duration::from_millis(50);
        // Due and not in flight: wake for it.
        assert_eq!(
            earliest_wake(None, Some(past), false, Some(later)),
            Some(past)
        );
        // In flight: the next wake is the claim check (or nothing), never
        // the past due time (the loop spun a core on a slow MongoDB).
        assert_eq!(
            earliest_wake(None, Some(past), true, Some(later)),
            Some(later)
        );
        assert_eq!(earliest_wake(None, Some(past), true, None), None);
        // Timers still wake it.
        assert_eq!(
            earliest_wake(Some(later), Some(past), true, None),
            Some(later)
        );
    }
}
