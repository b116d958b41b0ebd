//! The group state machine, driven by hand (no broker, no store).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::broker::committed::test_committed;
use crate::send_queue::{Drained, SendQueue, SendQueueLimits};
use crate::store::writer::GroupUpdate;
use promhub_core::frames::HubFrame;

fn defaults() -> Arc<GroupDefaults> {
    Arc::new(GroupDefaults::default())
}

fn event(seq: u64, topic: &str) -> Arc<Committed> {
    test_committed(seq, topic)
}

struct Harness {
    group: GroupState,
    timers: BTreeSet<TimerKey>,
    counters: GroupCounters,
    budget: GroupBudget,
    /// What the store would hold: every event the group was given.
    stored: HashMap<u64, Arc<Committed>>,
    now: u64,
}

fn send_queue() -> Arc<SendQueue> {
    Arc::new(SendQueue::new(SendQueueLimits {
        live_frames: 1000,
        live_bytes: 1 << 20,
    }))
}

fn opts(max_inflight: u32) -> MemberOpts {
    MemberOpts {
        max_inflight,
        ack_timeout_ms: 1000,
        max_deliver: 3,
        max_inflight_bytes: 1 << 20,
    }
}

impl Harness {
    fn new(cursor: u64) -> Self {
        let pattern = Pattern::parse("jobs.*").unwrap();
        let name = GroupName::parse("g").unwrap();
        let record = GroupRecord {
            key: GroupKey::new(&pattern, &name),
            cursor,
            done_above: vec![],
            attempts_above: Vec::new(),
        };
        let mut group = GroupState::new(0, pattern, name, record, defaults(), false);
        group.source = Source::Live;
        Harness {
            group,
            timers: BTreeSet::new(),
            counters: GroupCounters::default(),
            budget: GroupBudget::new(1 << 30),
            stored: HashMap::new(),
            now: 0,
        }
    }

    fn fx(&mut self) -> (&mut GroupState, Effects<'_>) {
        (
            &mut self.group,
            Effects {
                now_mono: self.now,
                now_wall: 1_000_000 + self.now,
                timers: &mut self.timers,
                counters: &self.counters,
                budget: &mut self.budget,
            },
        )
    }

    /// Answers the group's reads of bodies it gave out (redeliveries) the
    /// way the broker does, from what the group was given.
    fn load_bodies(&mut self) {
        loop {
            let stored = self.stored.clone();
            let (group, mut fx) = self.fx();
            let Some(seqs) = group.start_body_load(&mut fx) else {
                break;
            };
            let events: Vec<Arc<Committed>> =
                seqs.iter().filter_map(|s| stored.get(s).cloned()).collect();
            group.on_bodies(&events, &mut fx);
        }
    }

    fn join(&mut self, conn: ConnId, max_inflight: u32) -> Arc<SendQueue> {
        let out = send_queue();
        let member = Member::new(
            conn,
            Arc::clone(&out),
            Arc::new(Policy::allow_all()),
            opts(max_inflight),
        );
        let (group, mut fx) = self.fx();
        group.add_member(member, &mut fx);
        out
    }

    fn live(&mut self, events: &[Arc<Committed>]) {
        for event in events {
            self.stored.insert(event.seq, Arc::clone(event));
        }
        let upto = events.last().map_or(0, |e| e.seq);
        let (group, mut fx) = self.fx();
        group.on_live(events, upto, &mut fx);
    }

    fn fire_due(&mut self) {
        let due: Vec<TimerKey> = self
            .timers
            .iter()
            .copied()
            .filter(|&(d, _, _)| d <= self.now)
            .collect();
        for (d, _, seq) in due {
            self.timers.remove(&(d, 0, seq));
            let (group, mut fx) = self.fx();
            group.on_timer(seq, d, &mut fx);
            self.load_bodies();
        }
    }
}

/// (event id, attempt) of each EVENT queued in a send queue.
async fn deliveries(out: &SendQueue) -> Vec<(String, u32)> {
    let mut batch = Vec::new();
    if !out.has_frames() {
        return vec![];
    }
    assert!(matches!(out.drain(&mut batch).await, Drained::Frames(_)));
    batch
        .into_iter()
        .map(|m| match m {
            axum::extract::ws::Message::Text(t) => match HubFrame::decode(&t).unwrap() {
                HubFrame::Event(e) => (e.event.id, e.ctx.attempt),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

/// A settlement of `id` from the member that holds it (by id, as a
/// client that sends no seq).
fn holder<'a>(group: &GroupState, id: &'a str) -> Settle<'a> {
    let conn = group
        .inflight_ids
        .get(id)
        .and_then(|seq| group.window.get(seq).or_else(|| group.replays.get(seq)))
        .and_then(|e| match e.state {
            EntryState::Inflight { conn, .. } => Some(conn),
            _ => None,
        })
        .unwrap_or(0);
    Settle {
        conn,
        id,
        seq: None,
    }
}

fn ids(list: &[(String, u32)]) -> Vec<&str> {
    list.iter().map(|(id, _)| id.as_str()).collect()
}

#[tokio::test]
async fn members_share_events_in_order_and_cursor_moves_over_done_prefix() {
    let mut h = Harness::new(0);
    let a = h.join(1, 10);
    let b = h.join(2, 10);
    h.live(&[
        event(1, "jobs.x"),
        event(2, "other"),
        event(3, "jobs.y"),
        event(4, "jobs.z"),
    ]);
    let got_a = deliveries(&a).await;
    let got_b = deliveries(&b).await;
    assert_eq!(ids(&got_a), ["e1", "e4"]);
    assert_eq!(ids(&got_b), ["e3"]);
    // Ack out of order: the cursor waits for e1.
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e3"), &mut fx);
    assert_eq!(g.cursor(), 0);
    g.ack(holder(g, "e1"), &mut fx);
    assert_eq!(g.cursor(), 3);
    g.ack(holder(g, "e4"), &mut fx);
    assert_eq!(g.cursor(), 4);
    let update = g.take_update().unwrap();
    assert_eq!(update.progress.unwrap().cursor, 4);
}

#[tokio::test]
async fn max_inflight_holds_back_until_ack() {
    let mut h = Harness::new(0);
    let a = h.join(1, 2);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a"), event(3, "jobs.a")]);
    assert_eq!(ids(&deliveries(&a).await), ["e1", "e2"]);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e2"), &mut fx);
    assert_eq!(ids(&deliveries(&a).await), ["e3"]);
}

#[tokio::test]
async fn inflight_bytes_hold_a_member_back_and_the_group_lags_without_loss() {
    let mut h = Harness::new(0);
    let out = send_queue();
    let one_event = event(1, "jobs.a").json.get().len();
    // Room for two events' bytes, while max_inflight would allow ten.
    let member = Member::new(
        1,
        Arc::clone(&out),
        Arc::new(Policy::allow_all()),
        MemberOpts {
            max_inflight_bytes: 2 * one_event,
            ..opts(10)
        },
    );
    let (group, mut fx) = h.fx();
    group.add_member(member, &mut fx);
    let lagging_before = COUNTERS.snapshot().group_lagging;
    h.live(&[
        event(1, "jobs.a"),
        event(2, "jobs.a"),
        event(3, "jobs.a"),
        event(4, "jobs.a"),
    ]);
    assert_eq!(ids(&deliveries(&out).await), ["e1", "e2"]);
    assert!(COUNTERS.snapshot().group_lagging > lagging_before);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e1"), &mut fx);
    assert_eq!(ids(&deliveries(&out).await), ["e3"]);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e2"), &mut fx);
    g.ack(holder(g, "e3"), &mut fx);
    assert_eq!(ids(&deliveries(&out).await), ["e4"]);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e4"), &mut fx);
    assert_eq!(g.cursor(), 4);
}

#[tokio::test]
async fn a_connections_groups_share_its_byte_bound_and_get_bytes_back() {
    let mut h = Harness::new(0);
    let out = send_queue();
    let one = event(1, "jobs.a").json.get().len();
    // The connection's other groups already hold its whole allowance.
    let connection_bytes = Arc::new(AtomicUsize::new(10 * one));
    let member = Member::new(
        1,
        Arc::clone(&out),
        Arc::new(Policy::allow_all()),
        MemberOpts {
            max_inflight_bytes: 10 * one,
            ..opts(10)
        },
    )
    .sharing_bytes(Arc::clone(&connection_bytes));
    let (group, mut fx) = h.fx();
    group.add_member(member, &mut fx);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a"), event(3, "jobs.a")]);
    // Nothing of this member is in flight: one delivery goes anyway.
    assert_eq!(ids(&deliveries(&out).await), ["e1"]);
    assert_eq!(connection_bytes.load(Ordering::Relaxed), 11 * one);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e1"), &mut fx);
    assert_eq!(ids(&deliveries(&out).await), ["e2"]);
    // Leaving the group gives its bytes back to the connection.
    let (g, mut fx) = h.fx();
    g.remove_member(1, &mut fx);
    assert_eq!(connection_bytes.load(Ordering::Relaxed), 10 * one);
}

#[tokio::test]
async fn one_delivery_goes_however_large() {
    let mut h = Harness::new(0);
    let out = send_queue();
    let member = Member::new(
        1,
        Arc::clone(&out),
        Arc::new(Policy::allow_all()),
        MemberOpts {
            max_inflight_bytes: 1,
            ..opts(10)
        },
    );
    let (group, mut fx) = h.fx();
    group.add_member(member, &mut fx);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
    assert_eq!(ids(&deliveries(&out).await), ["e1"]);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e1"), &mut fx);
    assert_eq!(ids(&deliveries(&out).await), ["e2"]);
}

#[tokio::test]
async fn nack_redelivers_with_next_attempt_and_dead_letters_at_max_deliver() {
    let mut h = Harness::new(0);
    let a = h.join(1, 10);
    h.live(&[event(1, "jobs.a")]);
    assert_eq!(deliveries(&a).await, [("e1".to_owned(), 1)]);
    for attempt in 2..=3 {
        let (g, mut fx) = h.fx();
        g.nack(holder(g, "e1"), Some("boom"), Some(0), false, &mut fx);
        h.load_bodies();
        assert_eq!(deliveries(&a).await, [("e1".to_owned(), attempt)]);
    }
    let (g, mut fx) = h.fx();
    g.nack(holder(g, "e1"), Some("boom"), Some(0), false, &mut fx);
    assert!(deliveries(&a).await.is_empty());
    assert_eq!(g.cursor(), 1);
    let update = g.take_update().unwrap();
    assert_eq!(update.dead_letters.len(), 1);
    assert_eq!(update.dead_letters[0].attempts, 3);
    assert_eq!(update.dead_letters[0].reason, "boom");
}

#[tokio::test]
async fn only_the_holder_settles_a_delivery_and_a_given_seq_must_match() {
    let mut h = Harness::new(0);
    let a = h.join(1, 10);
    let b = h.join(2, 10);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
    assert_eq!(ids(&deliveries(&a).await), ["e1"]);
    assert_eq!(ids(&deliveries(&b).await), ["e2"]);
    let (g, mut fx) = h.fx();
    // Member 2 answers for e1, which member 1 holds: ignored, whether
    // by id or by seq, and whatever the answer.
    let foreign = |seq| Settle {
        conn: 2,
        id: "e1",
        seq,
    };
    g.nack(foreign(None), Some("x"), None, true, &mut fx);
    g.nack(foreign(Some(1)), Some("x"), None, true, &mut fx);
    g.ack(foreign(Some(1)), &mut fx);
    g.working(foreign(None), &mut fx);
    assert_eq!(g.cursor(), 0);
    assert!(g.dead_letters.is_empty());
    // The holder with a seq that names another event: ignored too.
    g.ack(
        Settle {
            conn: 1,
            id: "e1",
            seq: Some(2),
        },
        &mut fx,
    );
    assert_eq!(g.cursor(), 0);
    // By seq, from the holder: settled.
    g.ack(
        Settle {
            conn: 1,
            id: "e1",
            seq: Some(1),
        },
        &mut fx,
    );
    assert_eq!(g.cursor(), 1);
    g.ack(
        Settle {
            conn: 2,
            id: "e2",
            seq: Some(2),
        },
        &mut fx,
    );
    assert_eq!(g.cursor(), 2);
}

#[tokio::test]
async fn nack_delay_and_ack_deadline_use_timers() {
    let mut h = Harness::new(0);
    let a = h.join(1, 10);
    h.live(&[event(1, "jobs.a")]);
    deliveries(&a).await;
    let (g, mut fx) = h.fx();
    g.nack(holder(g, "e1"), None, Some(500), false, &mut fx);
    h.now = 499;
    h.fire_due();
    assert!(deliveries(&a).await.is_empty());
    h.now = 500;
    h.fire_due();
    assert_eq!(deliveries(&a).await, [("e1".to_owned(), 2)]);
    // Not acknowledged within 1000 ms: delivered again.
    h.now = 1500;
    h.fire_due();
    assert_eq!(deliveries(&a).await, [("e1".to_owned(), 3)]);
    // WORKING pushes the deadline back.
    h.now = 2000;
    let (g, mut fx) = h.fx();
    g.working(holder(g, "e1"), &mut fx);
    h.now = 2600;
    h.fire_due();
    assert!(deliveries(&a).await.is_empty());
    h.now = 3000;
    h.fire_due();
    // Third attempt timed out with max_deliver 3: dead.
    assert!(deliveries(&a).await.is_empty());
    assert_eq!(h.group.cursor(), 1);
}

#[tokio::test]
async fn disconnect_hands_inflight_events_to_other_members() {
    let mut h = Harness::new(0);
    let a = h.join(1, 10);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
    assert_eq!(ids(&deliveries(&a).await), ["e1", "e2"]);
    let b = h.join(2, 10);
    let (g, mut fx) = h.fx();
    g.remove_member(1, &mut fx);
    h.load_bodies();
    assert_eq!(
        deliveries(&b).await,
        [("e1".to_owned(), 2), ("e2".to_owned(), 2)]
    );
}

#[tokio::test]
async fn events_no_member_may_read_stay_pending_until_a_member_that_may_joins() {
    let mut h = Harness::new(0);
    let out = send_queue();
    let member = Member::new(
        1,
        Arc::clone(&out),
        Arc::new(Policy::from_scope_str("subscribe:jobs.a").unwrap()),
        opts(10),
    );
    let (g, mut fx) = h.fx();
    g.add_member(member, &mut fx);
    h.live(&[event(1, "jobs.b"), event(2, "jobs.a"), event(3, "jobs.b")]);
    assert_eq!(ids(&deliveries(&out).await), ["e2"]);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e2"), &mut fx);
    // e1 and e3 wait for a member that may read them: not done, and they
    // hold the cursor.
    let view = g.view();
    assert_eq!(
        (view.cursor, view.blocked, view.oldest_blocked),
        (0, 2, Some(1))
    );
    assert_eq!(view.oldest_pending, Some((1, 1)));
    assert_eq!(view.done_above, [2]);
    assert_eq!(g.held, 0, "a blocked event's body is not kept");
    // More of them: the restricted member still gets what it may read.
    h.live(&[event(4, "jobs.b"), event(5, "jobs.a")]);
    assert_eq!(ids(&deliveries(&out).await), ["e5"]);
    // A member that may read everything joins: it gets them all, in order.
    let b = h.join(2, 10);
    h.load_bodies();
    assert_eq!(ids(&deliveries(&b).await), ["e1", "e3", "e4"]);
    let (g, mut fx) = h.fx();
    for id in ["e1", "e3", "e4", "e5"] {
        g.ack(holder(g, id), &mut fx);
    }
    assert_eq!((g.cursor(), g.view().blocked), (5, 0));
}

#[tokio::test]
async fn a_full_group_buffer_makes_the_group_lag_and_it_resumes_in_order() {
    let mut h = Harness::new(0);
    let one = event(1, "jobs.a").json.get().len();
    // Room for two events.
    h.budget = GroupBudget::new(2 * one);
    let a = h.join(1, 10);
    h.live(&[
        event(1, "jobs.a"),
        event(2, "jobs.a"),
        event(3, "jobs.a"),
        event(4, "jobs.a"),
    ]);
    assert_eq!(ids(&deliveries(&a).await), ["e1", "e2"]);
    let (g, mut fx) = h.fx();
    // Behind at e3, and no room to read it: the group waits.
    assert_eq!(g.start_fetch(&mut fx), None);
    assert_eq!(fx.budget.waiting(), 1);
    g.ack(holder(g, "e1"), &mut fx);
    let request = g.start_fetch(&mut fx).expect("room again");
    assert_eq!(request.after, 2, "nothing was skipped");
    assert!(request.max_bytes <= one, "what is free: {request:?}");
    // The store stops after the event that reaches max_bytes.
    g.on_fetched(&[event(3, "jobs.a")], 3, 4, &mut fx);
    assert_eq!(ids(&deliveries(&a).await), ["e3"]);
    assert_eq!(g.start_fetch(&mut fx), None, "full again");
    g.ack(holder(g, "e2"), &mut fx);
    let request = g.start_fetch(&mut fx).expect("room again");
    assert_eq!(request.after, 3);
    g.on_fetched(&[event(4, "jobs.a")], 4, 4, &mut fx);
    assert_eq!(ids(&deliveries(&a).await), ["e4"]);
    g.ack(holder(g, "e3"), &mut fx);
    g.ack(holder(g, "e4"), &mut fx);
    assert_eq!((g.cursor(), g.held, fx.budget.used()), (4, 0, 0));
}

#[tokio::test]
async fn restored_done_marks_are_skipped_and_fetch_pages_fill_the_window() {
    let pattern = Pattern::parse("jobs.*").unwrap();
    let name = GroupName::parse("g").unwrap();
    let record = GroupRecord {
        key: GroupKey::new(&pattern, &name),
        cursor: 1,
        done_above: vec![3],
        attempts_above: Vec::new(),
    };
    let mut timers = BTreeSet::new();
    let mut group = GroupState::new(0, pattern, name, record, defaults(), false);
    let out = send_queue();
    let counters = GroupCounters::default();
    let mut budget = GroupBudget::new(1 << 30);
    let mut fx = Effects {
        now_mono: 0,
        now_wall: 0,
        timers: &mut timers,
        counters: &counters,
        budget: &mut budget,
    };
    group.add_member(
        Member::new(1, Arc::clone(&out), Arc::new(Policy::allow_all()), opts(10)),
        &mut fx,
    );
    let request = group.start_fetch(&mut fx).unwrap();
    assert_eq!(request.after, 1);
    assert!(group.start_fetch(&mut fx).is_none(), "one fetch at a time");
    group.on_fetched(
        &[event(2, "jobs.a"), event(3, "jobs.a"), event(4, "jobs.a")],
        10,
        12,
        &mut fx,
    );
    assert_eq!(ids(&deliveries(&out).await), ["e2", "e4"]);
    // Still behind (head 12 > 10): the next page starts after 10.
    assert_eq!(group.start_fetch(&mut fx).unwrap().after, 10);
    group.on_fetched(&[], 12, 12, &mut fx);
    group.ack(holder(&group, "e2"), &mut fx);
    group.ack(holder(&group, "e4"), &mut fx);
    assert_eq!(group.cursor(), 12);
    // Caught up: live events flow in.
    group.on_live(&[event(13, "jobs.q")], 13, &mut fx);
    assert_eq!(ids(&deliveries(&out).await), ["e13"]);
}

#[tokio::test]
async fn replayed_dead_letter_is_delivered_from_attempt_one_and_removed_on_ack() {
    let mut h = Harness::new(0);
    let a = h.join(1, 10);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
    assert_eq!(ids(&deliveries(&a).await), ["e1", "e2"]);
    let (g, mut fx) = h.fx();
    g.nack(holder(g, "e1"), Some("bad"), None, true, &mut fx);
    g.ack(holder(g, "e2"), &mut fx);
    assert_eq!(g.cursor(), 2);
    assert_eq!(g.take_update().unwrap().dead_letters.len(), 1);
    // Replayed below the cursor: delivered again, attempt 1.
    g.replay(event(1, "jobs.a"), &mut fx).unwrap();
    assert_eq!(
        g.replay(event(1, "jobs.a"), &mut fx),
        Err(ReplayRefused::AlreadyPending)
    );
    assert_eq!(g.view().replaying, 1);
    assert_eq!(deliveries(&a).await, [("e1".to_owned(), 1)]);
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e1"), &mut fx);
    assert_eq!(g.cursor(), 2, "a replay never moves the cursor back");
    let update = g.take_update().unwrap();
    assert!(update.dead_letters.is_empty());
    assert_eq!(update.removed_dead_letters.len(), 1);
    assert_eq!(update.removed_dead_letters[0].seq, 1);
    assert_eq!(g.view().replaying, 0);
    assert_eq!(h.counters.replays.get(), 1);
    assert_eq!(h.counters.dead_letters.get(), 1);
}

#[tokio::test]
async fn replay_that_dies_again_keeps_a_dead_letter_and_needs_a_member() {
    let mut h = Harness::new(0);
    let (g, mut fx) = h.fx();
    assert_eq!(
        g.replay(event(1, "jobs.a"), &mut fx),
        Err(ReplayRefused::NoMembers)
    );
    let a = h.join(1, 10);
    // Dead-lettered while e1 still holds the cursor: replayed in the window.
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
    deliveries(&a).await;
    let (g, mut fx) = h.fx();
    g.nack(holder(g, "e2"), None, None, true, &mut fx);
    assert_eq!(g.view().done_above, [2]);
    g.replay(event(2, "jobs.a"), &mut fx).unwrap();
    assert_eq!(deliveries(&a).await, [("e2".to_owned(), 1)]);
    let (g, mut fx) = h.fx();
    assert!(g.view().done_above.is_empty());
    g.nack(holder(g, "e2"), Some("still bad"), None, true, &mut fx);
    g.ack(holder(g, "e1"), &mut fx);
    assert_eq!(g.cursor(), 2);
    let update = g.take_update().unwrap();
    assert_eq!(update.dead_letters.len(), 2);
    assert_eq!(update.dead_letters[1].reason, "still bad");
    assert_eq!(update.dead_letters[1].attempts, 1);
    assert!(update.removed_dead_letters.is_empty());
}

/// The attempt changes a flush carries.
fn attempts_in(update: &GroupUpdate) -> Vec<(u64, u32)> {
    update
        .progress
        .as_ref()
        .map(|p| p.attempt_changes.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn failed_attempts_are_durable_and_a_reloaded_group_counts_on() {
    let mut h = Harness::new(0);
    let a = h.join(1, 10);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a"), event(3, "jobs.a")]);
    assert_eq!(ids(&deliveries(&a).await), ["e1", "e2", "e3"]);
    // A plain ACK records nothing.
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e1"), &mut fx);
    assert_eq!(attempts_in(&g.take_update().unwrap()), []);
    // The member leaves holding e2 and e3 (a page closed before its ACK).
    g.remove_member(1, &mut fx);
    let update = g.take_update().unwrap();
    assert_eq!(attempts_in(&update), [(2, 1), (3, 1)]);
    assert_eq!(update.progress.as_ref().unwrap().cursor, 1);
    // A failed flush keeps them for the next one.
    g.restore_update(update);
    assert_eq!(attempts_in(&g.take_update().unwrap()), [(2, 1), (3, 1)]);

    // The group is loaded again (evicted while idle, or a restart).
    let pattern = Pattern::parse("jobs.*").unwrap();
    let name = GroupName::parse("g").unwrap();
    let record = GroupRecord {
        key: GroupKey::new(&pattern, &name),
        cursor: 1,
        done_above: vec![],
        attempts_above: vec![(2, 1), (3, 1)],
    };
    let mut reloaded = Harness::new(0);
    reloaded.group = GroupState::new(0, pattern, name, record, defaults(), false);
    let b = reloaded.join(2, 10);
    let (g, mut fx) = reloaded.fx();
    let request = g.start_fetch(&mut fx).unwrap();
    assert_eq!(request.after, 1);
    g.on_fetched(&[event(2, "jobs.a")], 2, 3, &mut fx);
    // e2 fails again (2 attempts used; already out for its third).
    g.nack(holder(g, "e2"), None, Some(0), false, &mut fx);
    let update = g.take_update().unwrap();
    assert_eq!(attempts_in(&update), [(2, 2)]);
    reloaded.stored.insert(2, event(2, "jobs.a"));
    reloaded.load_bodies();
    let (g, mut fx) = reloaded.fx();
    g.start_fetch(&mut fx).unwrap();
    g.on_fetched(&[event(3, "jobs.a")], 3, 3, &mut fx);
    assert_eq!(
        deliveries(&b).await,
        [
            ("e2".to_owned(), 2),
            ("e2".to_owned(), 3),
            ("e3".to_owned(), 2)
        ]
    );
    // Done events are forgotten.
    g.ack(holder(g, "e2"), &mut fx);
    g.ack(holder(g, "e3"), &mut fx);
    let update = g.take_update().unwrap();
    assert_eq!(attempts_in(&update), [(2, 0), (3, 0)]);
    assert_eq!(update.progress.unwrap().cursor, 3);
}

#[tokio::test]
async fn failed_flush_keeps_marks_and_dead_letters() {
    let mut h = Harness::new(0);
    let a = h.join(1, 10);
    h.live(&[event(1, "jobs.a"), event(2, "jobs.a")]);
    deliveries(&a).await;
    let (g, mut fx) = h.fx();
    g.ack(holder(g, "e2"), &mut fx);
    g.nack(holder(g, "e1"), None, None, true, &mut fx);
    let update = g.take_update().unwrap();
    assert!(g.take_update().is_none());
    g.restore_update(update);
    let again = g.take_update().unwrap();
    assert_eq!(again.dead_letters.len(), 1);
    assert_eq!(again.progress.unwrap().cursor, 2);
}

mod claims;
