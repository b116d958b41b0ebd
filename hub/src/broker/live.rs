//! Ephemeral (live) subscriptions: an index from pattern to the connections
//! subscribed with it, and the fan-out of committed events.
//!
//! Fan-out cost is kept per *pattern*, not per subscriber: an EVENT frame's
//! `topic` is the subscription pattern and live deliveries carry no group or
//! attempt, so every subscriber of one pattern receives byte-identical
//! frames. Each event is encoded once per matching pattern and the same
//! buffer is queued for every subscriber (a reference-count increment),
//! with one queue lock and one writer wake-up per subscriber per commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::Utf8Bytes;
use promhub_core::frames::{DeliveryCtx, Event, encode_event_delivery};
use promhub_core::{Action, Pattern, Policy, Topic};

use super::committed::Committed;
use super::group::ConnId;
use crate::limits::COUNTERS;
use crate::refusals::{self, Refusal};
use crate::send_queue::{CloseReason, LivePush, SLOW_CONSUMER, SendQueue};

#[derive(Debug)]
struct LiveSub {
    conn: ConnId,
    send_queue: Arc<SendQueue>,
    policy: Arc<Policy>,
    /// Set while the `snapshot` is being read: live events after `upto` are
    /// held here (bounded like the send queue) and sent after the snapshot.
    snapshot: Option<SnapshotHold>,
}

/// A snapshot being sent: the live events after `upto` wait here (bounded
/// like the send queue) until its last page is queued.
#[derive(Debug)]
struct SnapshotHold {
    /// Tells this snapshot from a later one of the same subscription (a
    /// SUBSCRIBE again with `snapshot` starts over).
    id: u64,
    upto: u64,
    held: Vec<Utf8Bytes>,
    held_bytes: usize,
    /// Set once the snapshot is finished, replaced, cut or unsubscribed:
    /// its page reader stops reading.
    cancelled: Arc<AtomicBool>,
}

impl SnapshotHold {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

/// What the page reader of a new snapshot needs.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotTicket {
    pub id: u64,
    pub cancelled: Arc<AtomicBool>,
}

/// One latest-by-key event of a snapshot page, encoded as its EVENT frame
/// for the subscription.
#[derive(Debug)]
pub(crate) struct SnapshotFrame {
    pub seq: u64,
    pub topic: Topic,
    pub frame: Utf8Bytes,
}

impl SnapshotFrame {
    /// The frame of `event` for a snapshot of `pattern`.
    pub fn encode(pattern: &Pattern, event: &Event) -> Option<SnapshotFrame> {
        let json = serde_json::value::to_raw_value(event).ok()?;
        let ctx = DeliveryCtx {
            attempt: 1,
            ack_deadline: None,
            snapshot: Some(true),
        };
        Some(SnapshotFrame {
            seq: event.seq,
            topic: event.topic.clone(),
            frame: encode_event_delivery(pattern, None, &json, &ctx).into(),
        })
    }
}

/// Whether a snapshot goes on after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotStep {
    /// Read the next page.
    Continue,
    /// Finished, cut, or no longer wanted: read nothing more.
    Stop,
}

#[derive(Debug)]
struct PatternSubs {
    pattern: Pattern,
    subs: Vec<LiveSub>,
}

/// Limits on frames held for a subscription waiting for its snapshot (the
/// same as the send queue's live limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HoldLimits {
    pub frames: usize,
    pub bytes: usize,
}

#[derive(Debug)]
pub(crate) struct LiveIndex {
    /// Patterns without wildcards, by topic: one hash lookup per event.
    exact: HashMap<String, PatternSubs>,
    /// Patterns with wildcards: each is matched against every event.
    wildcard: HashMap<String, PatternSubs>,
    hold_limits: HoldLimits,
    next_snapshot: u64,
}

impl LiveIndex {
    pub fn new(hold_limits: HoldLimits) -> Self {
        LiveIndex {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            hold_limits,
            next_snapshot: 0,
        }
    }

    fn table(&mut self, pattern: &Pattern) -> &mut HashMap<String, PatternSubs> {
        if pattern.is_concrete() {
            &mut self.exact
        } else {
            &mut self.wildcard
        }
    }

    /// Adds (or refreshes) a subscription. With `snapshot_upto`, live events
    /// after that seq are held until the snapshot's last page
    /// ([`LiveIndex::snapshot_page`]); the ticket is for its page reader.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        pattern: &Pattern,
        send_queue: Arc<SendQueue>,
        policy: Arc<Policy>,
        snapshot_upto: Option<u64>,
    ) -> Option<SnapshotTicket> {
        let snapshot = snapshot_upto.map(|upto| {
            self.next_snapshot += 1;
            SnapshotHold {
                id: self.next_snapshot,
                upto,
                held: Vec::new(),
                held_bytes: 0,
                cancelled: Arc::default(),
            }
        });
        let ticket = snapshot.as_ref().map(|hold| SnapshotTicket {
            id: hold.id,
            cancelled: Arc::clone(&hold.cancelled),
        });
        let entry = self
            .table(pattern)
            .entry(pattern.as_str().to_owned())
            .or_insert_with(|| PatternSubs {
                pattern: pattern.clone(),
                subs: Vec::new(),
            });
        match entry.subs.iter_mut().find(|s| s.conn == conn) {
            Some(existing) => {
                existing.policy = policy;
                existing.send_queue = send_queue;
                if snapshot.is_some() {
                    // A new snapshot replaces one still being sent.
                    if let Some(old) = existing.snapshot.take() {
                        old.cancel();
                    }
                    existing.snapshot = snapshot;
                }
            }
            None => entry.subs.push(LiveSub {
                conn,
                send_queue,
                policy,
                snapshot,
            }),
        }
        ticket
    }

    /// Removes a subscription; true if it existed.
    pub fn unsubscribe(&mut self, conn: ConnId, pattern: &str) -> bool {
        for table in [&mut self.exact, &mut self.wildcard] {
            if let Some(entry) = table.get_mut(pattern) {
                let before = entry.subs.len();
                entry.subs.retain(|s| {
                    if s.conn != conn {
                        return true;
                    }
                    if let Some(hold) = &s.snapshot {
                        hold.cancel();
                    }
                    false
                });
                let removed = entry.subs.len() != before;
                if entry.subs.is_empty() {
                    table.remove(pattern);
                }
                if removed {
                    return true;
                }
            }
        }
        false
    }

    pub fn set_policy(&mut self, conn: ConnId, pattern: &str, policy: &Arc<Policy>) {
        for table in [&mut self.exact, &mut self.wildcard] {
            if let Some(entry) = table.get_mut(pattern) {
                for sub in entry.subs.iter_mut().filter(|s| s.conn == conn) {
                    sub.policy = Arc::clone(policy);
                }
            }
        }
    }

    /// The subscription `conn` holds on `pattern`, if it is still sending
    /// snapshot `id`.
    fn snapshot_sub(&mut self, conn: ConnId, pattern: &Pattern, id: u64) -> Option<&mut LiveSub> {
        self.table(pattern)
            .get_mut(pattern.as_str())?
            .subs
            .iter_mut()
            .find(|s| s.conn == conn && s.snapshot.as_ref().is_some_and(|h| h.id == id))
    }

    /// A page of snapshot `id` was read: queue its events (those not newer
    /// than the subscription point, and allowed by the subscriber's
    /// current policy) under the same bound as live events — a reader that
    /// has fallen that far behind is closed with 4009 — and after the
    /// `last` page what was held meanwhile.
    pub fn snapshot_page(
        &mut self,
        conn: ConnId,
        pattern: &Pattern,
        id: u64,
        page: Vec<SnapshotFrame>,
        last: bool,
    ) -> SnapshotStep {
        let Some(sub) = self.snapshot_sub(conn, pattern, id) else {
            return SnapshotStep::Stop;
        };
        let Some(upto) = sub.snapshot.as_ref().map(|h| h.upto) else {
            return SnapshotStep::Stop;
        };
        let policy = Arc::clone(&sub.policy);
        let frames = page
            .into_iter()
            .filter(|f| f.seq <= upto && policy.allows(Action::Subscribe, &f.topic, None))
            .map(|f| f.frame);
        match sub.send_queue.push_live_batch(frames) {
            LivePush::Queued => {}
            LivePush::Overflowed => {
                refusals::count(Refusal::SnapshotCut);
                COUNTERS.slow_consumer_close();
                tracing::debug!(conn, "snapshot reader fell behind; closing with 4009");
                if let Some(hold) = sub.snapshot.take() {
                    hold.cancel();
                }
                return SnapshotStep::Stop;
            }
            LivePush::Closed => {
                if let Some(hold) = sub.snapshot.take() {
                    hold.cancel();
                }
                return SnapshotStep::Stop;
            }
        }
        if !last {
            return SnapshotStep::Continue;
        }
        release_held(sub);
        SnapshotStep::Stop
    }

    /// Snapshot `id` could not be read: deliver what was held and carry on
    /// live (the SUBACK was already sent).
    pub fn abandon_snapshot(&mut self, conn: ConnId, pattern: &Pattern, id: u64) {
        if let Some(sub) = self.snapshot_sub(conn, pattern, id) {
            release_held(sub);
        }
    }

    /// Queues every committed event for every live subscription it matches.
    /// Returns how many EVENT frames were queued.
    pub fn fan_out(&mut self, events: &[Arc<Committed>]) -> u64 {
        if self.exact.is_empty() && self.wildcard.is_empty() {
            return 0;
        }
        let mut queued = 0;
        let limits = self.hold_limits;
        let mut frames: Vec<(&Committed, Utf8Bytes)> = Vec::new();
        if !self.exact.is_empty() {
            // Exact patterns: one hash lookup per distinct topic of the
            // batch, however many exact subscriptions there are.
            let mut topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
            topics.sort_unstable();
            topics.dedup();
            for topic in topics {
                let Some(entry) = self.exact.get_mut(topic) else {
                    continue;
                };
                frames.clear();
                for event in events.iter().filter(|e| e.topic.as_str() == topic) {
                    frames.push((event, encode(&entry.pattern, event)));
                }
                queued += deliver(entry, &frames, limits);
            }
        }
        for entry in self.wildcard.values_mut() {
            frames.clear();
            for event in events {
                if entry.pattern.matches(&event.topic) {
                    frames.push((event, encode(&entry.pattern, event)));
                }
            }
            queued += deliver(entry, &frames, limits);
        }
        queued
    }
}

fn encode(pattern: &Pattern, event: &Committed) -> Utf8Bytes {
    Utf8Bytes::from(encode_event_delivery(
        pattern,
        None,
        &event.json,
        &DeliveryCtx::first(),
    ))
}

/// Ends a subscription's snapshot: what was held meanwhile is queued (under
/// the live bound) and live events flow directly again.
fn release_held(sub: &mut LiveSub) {
    let Some(hold) = sub.snapshot.take() else {
        return;
    };
    hold.cancel();
    if !hold.held.is_empty() && sub.send_queue.push_live_batch(hold.held) == LivePush::Overflowed {
        COUNTERS.slow_consumer_close();
    }
}

/// Queues `frames` (all matching `entry.pattern`) for each subscriber the
/// ACL lets see them.
fn deliver(entry: &mut PatternSubs, frames: &[(&Committed, Utf8Bytes)], limits: HoldLimits) -> u64 {
    if frames.is_empty() {
        return 0;
    }
    let mut queued = 0;
    // Subscribers usually share a policy (one Arc per token / dev mode), so
    // the per-event ACL decision is computed once per distinct policy.
    let mut cached: Option<(Arc<Policy>, Vec<Utf8Bytes>)> = None;
    for sub in &mut entry.subs {
        let allowed = match &cached {
            Some((policy, allowed)) if Arc::ptr_eq(policy, &sub.policy) => allowed,
            _ => {
                let allowed = frames
                    .iter()
                    .filter(|(event, _)| sub.policy.allows(Action::Subscribe, &event.topic, None))
                    .map(|(_, frame)| frame.clone())
                    .collect();
                &cached.insert((Arc::clone(&sub.policy), allowed)).1
            }
        };
        if allowed.is_empty() {
            continue;
        }
        queued += allowed.len() as u64;
        match &mut sub.snapshot {
            Some(hold) => {
                for frame in allowed {
                    hold.held_bytes += frame.len();
                    hold.held.push(frame.clone());
                }
                if hold.held.len() > limits.frames || hold.held_bytes > limits.bytes {
                    hold.cancel();
                    sub.snapshot = None;
                    COUNTERS.slow_consumer_close();
                    refusals::count(Refusal::SnapshotCut);
                    sub.send_queue.close(CloseReason::new(
                        SLOW_CONSUMER,
                        "slow consumer: live buffer overflowed during snapshot",
                    ));
                }
            }
            None => {
                if sub.send_queue.push_live_batch(allowed.iter().cloned()) == LivePush::Overflowed {
                    COUNTERS.slow_consumer_close();
                    tracing::debug!(conn = sub.conn, "live buffer overflowed; closing with 4009");
                }
            }
        }
    }
    queued
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send_queue::{Drained, SendQueueLimits};
    use promhub_core::Topic;
    use promhub_core::frames::{HubFrame, to_payload};

    fn event(seq: u64, topic: &str) -> Event {
        Event {
            id: format!("e{seq}"),
            seq,
            topic: Topic::parse(topic).unwrap(),
            ts: 1,
            key: Some("k".into()),
            payload: to_payload(&seq).unwrap(),
            headers: None,
            tags: None,
            caused_by: None,
            sid: None,
        }
    }

    fn send_queue(frames: usize) -> Arc<SendQueue> {
        Arc::new(SendQueue::new(SendQueueLimits {
            live_frames: frames,
            live_bytes: 1 << 20,
        }))
    }

    const LIMITS: HoldLimits = HoldLimits {
        frames: 100,
        bytes: 1 << 20,
    };

    async fn received(out: &SendQueue) -> Vec<(String, String, Option<bool>)> {
        if !out.has_frames() && !out.is_closing() {
            return vec![];
        }
        let mut batch = Vec::new();
        match out.drain(&mut batch).await {
            Drained::Frames(_) => {}
            Drained::Close(reason) => return vec![("close".into(), reason.code.to_string(), None)],
        }
        batch
            .into_iter()
            .map(|m| match m {
                axum::extract::ws::Message::Text(t) => match HubFrame::decode(&t).unwrap() {
                    HubFrame::Event(e) => (e.topic.to_string(), e.event.id, e.ctx.snapshot),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn committed(list: &[Event]) -> Vec<Arc<Committed>> {
        list.iter().map(Committed::from_event).collect()
    }

    #[tokio::test]
    async fn exact_and_wildcard_patterns_receive_matching_events_with_their_own_topic() {
        let mut index = LiveIndex::new(LIMITS);
        let exact = send_queue(100);
        let wild = send_queue(100);
        let policy = Arc::new(Policy::allow_all());
        index.subscribe(
            1,
            &Pattern::parse("a.b").unwrap(),
            exact.clone(),
            policy.clone(),
            None,
        );
        index.subscribe(
            2,
            &Pattern::parse("a.**").unwrap(),
            wild.clone(),
            policy,
            None,
        );
        index.fan_out(&committed(&[
            event(1, "a.b"),
            event(2, "a.c"),
            event(3, "b"),
        ]));
        assert_eq!(received(&exact).await, [("a.b".into(), "e1".into(), None)]);
        assert_eq!(
            received(&wild).await,
            [
                ("a.**".into(), "e1".into(), None),
                ("a.**".into(), "e2".into(), None)
            ]
        );
        assert!(index.unsubscribe(1, "a.b"));
        assert!(!index.unsubscribe(1, "a.b"));
        index.fan_out(&committed(&[event(4, "a.b")]));
        assert!(received(&exact).await.is_empty());
    }

    #[tokio::test]
    async fn delivery_checks_each_subscribers_own_policy() {
        let mut index = LiveIndex::new(LIMITS);
        let open = send_queue(100);
        let narrow = send_queue(100);
        let pattern = Pattern::parse("**").unwrap();
        index.subscribe(
            1,
            &pattern,
            open.clone(),
            Arc::new(Policy::allow_all()),
            None,
        );
        let policy = Arc::new(Policy::from_scope_str("subscribe:x.*").unwrap());
        index.subscribe(2, &pattern, narrow.clone(), policy, None);
        index.fan_out(&committed(&[event(1, "x.y"), event(2, "z")]));
        assert_eq!(received(&open).await.len(), 2);
        assert_eq!(received(&narrow).await, [("**".into(), "e1".into(), None)]);
    }

    #[tokio::test]
    async fn overflow_closes_the_slow_subscriber_only() {
        let mut index = LiveIndex::new(LIMITS);
        let slow = send_queue(2);
        let fast = send_queue(100);
        let pattern = Pattern::parse("t").unwrap();
        let policy = Arc::new(Policy::allow_all());
        index.subscribe(1, &pattern, slow.clone(), policy.clone(), None);
        index.subscribe(2, &pattern, fast.clone(), policy, None);
        index.fan_out(&committed(&[event(1, "t"), event(2, "t"), event(3, "t")]));
        assert_eq!(
            received(&slow).await,
            [("close".into(), "4009".into(), None)]
        );
        assert_eq!(received(&fast).await.len(), 3);
    }

    #[tokio::test]
    async fn snapshot_comes_first_then_held_live_events() {
        let mut index = LiveIndex::new(LIMITS);
        let out = send_queue(100);
        let pattern = Pattern::parse("s.*").unwrap();
        let ticket = index
            .subscribe(
                1,
                &pattern,
                out.clone(),
                Arc::new(Policy::allow_all()),
                Some(5),
            )
            .unwrap();
        index.fan_out(&committed(&[event(6, "s.a")]));
        assert!(received(&out).await.is_empty(), "held until the snapshot");
        let page = |events: &[Event]| {
            events
                .iter()
                .filter_map(|e| SnapshotFrame::encode(&pattern, e))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            index.snapshot_page(1, &pattern, ticket.id, page(&[event(1, "s.a")]), false),
            SnapshotStep::Continue
        );
        // The store may already see event 6; it is not part of the snapshot.
        assert_eq!(
            index.snapshot_page(
                1,
                &pattern,
                ticket.id,
                page(&[event(2, "s.b"), event(6, "s.a")]),
                true
            ),
            SnapshotStep::Stop
        );
        assert!(ticket.cancelled.load(Ordering::Acquire), "the reader stops");
        assert_eq!(
            received(&out).await,
            [
                ("s.*".into(), "e1".into(), Some(true)),
                ("s.*".into(), "e2".into(), Some(true)),
                ("s.*".into(), "e6".into(), None)
            ]
        );
        // A late page of a finished snapshot is dropped.
        assert_eq!(
            index.snapshot_page(1, &pattern, ticket.id, page(&[event(3, "s.c")]), true),
            SnapshotStep::Stop
        );
        assert!(received(&out).await.is_empty());
    }

    #[tokio::test]
    async fn a_snapshot_page_past_the_live_bound_closes_with_4009_and_a_new_snapshot_replaces_the_old()
     {
        let mut index = LiveIndex::new(LIMITS);
        let out = send_queue(3);
        let pattern = Pattern::parse("s.*").unwrap();
        let policy = Arc::new(Policy::allow_all());
        let first = index
            .subscribe(1, &pattern, out.clone(), policy.clone(), Some(10))
            .unwrap();
        let second = index
            .subscribe(1, &pattern, out.clone(), policy, Some(10))
            .unwrap();
        assert!(first.cancelled.load(Ordering::Acquire), "replaced");
        let frames: Vec<_> = (1..=4)
            .filter_map(|seq| SnapshotFrame::encode(&pattern, &event(seq, "s.a")))
            .collect();
        let cut_before = refusals::total(Refusal::SnapshotCut);
        assert_eq!(
            index.snapshot_page(1, &pattern, first.id, Vec::new(), true),
            SnapshotStep::Stop,
            "pages of the replaced snapshot are ignored"
        );
        assert_eq!(
            index.snapshot_page(1, &pattern, second.id, frames, false),
            SnapshotStep::Stop
        );
        assert!(second.cancelled.load(Ordering::Acquire));
        assert!(refusals::total(Refusal::SnapshotCut) > cut_before);
        assert_eq!(
            received(&out).await,
            [("close".into(), "4009".into(), None)]
        );
    }
}
