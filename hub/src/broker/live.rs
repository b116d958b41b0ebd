//! Ephemeral (live) subscriptions: an index from pattern to the connections
//! subscribed with it, and the fan-out of committed events.
//!
//! A subscription may first catch up from the store — a snapshot
//! (`opts.snapshot`) or the log from `opts.from` — page by page (see
//! `catch_up.rs`); meanwhile its live events are held (bounded like the send
//! queue) and follow the last page, so nothing is missed or repeated.
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
    /// Set while the subscription catches up from the store: live events
    /// after `upto` are held here and sent after the last page.
    catch_up: Option<CatchUpHold>,
    /// Live events below this seq are not delivered (a SUBSCRIBE `from` a
    /// seq the hub has not reached yet).
    from_seq: u64,
}

/// A catch-up being sent: the live events after `upto` wait here (bounded
/// like the send queue) until its last page is queued.
#[derive(Debug)]
struct CatchUpHold {
    /// Tells this catch-up from a later one of the same subscription (a
    /// SUBSCRIBE again starts over).
    id: u64,
    upto: u64,
    held: Vec<Utf8Bytes>,
    held_bytes: usize,
    /// Set once the catch-up is finished, replaced, cut or unsubscribed:
    /// its page reader stops reading.
    cancelled: Arc<AtomicBool>,
}

impl CatchUpHold {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

/// What the page reader of a new catch-up needs.
#[derive(Debug, Clone)]
pub(crate) struct CatchUpTicket {
    pub id: u64,
    pub cancelled: Arc<AtomicBool>,
}

/// One event of a catch-up page, encoded as its EVENT frame for the
/// subscription.
#[derive(Debug)]
pub(crate) struct CatchUpFrame {
    pub seq: u64,
    pub topic: Topic,
    pub frame: Utf8Bytes,
}

impl CatchUpFrame {
    /// The frame of `event` for a subscription to `pattern`; a snapshot's
    /// frames carry `ctx.snapshot`.
    pub fn encode(pattern: &Pattern, event: &Event, snapshot: bool) -> Option<CatchUpFrame> {
        let json = serde_json::value::to_raw_value(event).ok()?;
        let ctx = DeliveryCtx {
            attempt: 1,
            ack_deadline: None,
            snapshot: snapshot.then_some(true),
        };
        Some(CatchUpFrame {
            seq: event.seq,
            topic: event.topic.clone(),
            frame: encode_event_delivery(pattern, None, &json, &ctx).into(),
        })
    }
}

/// Whether a catch-up goes on after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchUpStep {
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

/// Limits on frames held for a subscription catching up (the same as the
/// send queue's live limits).
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
    next_catch_up: u64,
}

impl LiveIndex {
    pub fn new(hold_limits: HoldLimits) -> Self {
        LiveIndex {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            hold_limits,
            next_catch_up: 0,
        }
    }

    fn table(&mut self, pattern: &Pattern) -> &mut HashMap<String, PatternSubs> {
        if pattern.is_concrete() {
            &mut self.exact
        } else {
            &mut self.wildcard
        }
    }

    /// Adds (or refreshes) a subscription. With `catch_up_upto`, live events
    /// after that seq are held until the catch-up's last page
    /// ([`LiveIndex::catch_up_page`]); the ticket is for its page reader.
    /// Live events below `from_seq` are not delivered.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        pattern: &Pattern,
        send_queue: Arc<SendQueue>,
        policy: Arc<Policy>,
        catch_up_upto: Option<u64>,
        from_seq: u64,
    ) -> Option<CatchUpTicket> {
        let catch_up = catch_up_upto.map(|upto| {
            self.next_catch_up += 1;
            CatchUpHold {
                id: self.next_catch_up,
                upto,
                held: Vec::new(),
                held_bytes: 0,
                cancelled: Arc::default(),
            }
        });
        let ticket = catch_up.as_ref().map(|hold| CatchUpTicket {
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
                existing.from_seq = from_seq;
                if catch_up.is_some() {
                    // A new catch-up replaces one still being sent.
                    if let Some(old) = existing.catch_up.take() {
                        old.cancel();
                    }
                    existing.catch_up = catch_up;
                }
            }
            None => entry.subs.push(LiveSub {
                conn,
                send_queue,
                policy,
                catch_up,
                from_seq,
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
                    if let Some(hold) = &s.catch_up {
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

    /// The subscription `conn` holds on `pattern`, if it is still catching
    /// up with catch-up `id`.
    fn catch_up_sub(&mut self, conn: ConnId, pattern: &Pattern, id: u64) -> Option<&mut LiveSub> {
        self.table(pattern)
            .get_mut(pattern.as_str())?
            .subs
            .iter_mut()
            .find(|s| s.conn == conn && s.catch_up.as_ref().is_some_and(|h| h.id == id))
    }

    /// True while catch-up `id` of that subscription is wanted.
    pub fn catching_up(&mut self, conn: ConnId, pattern: &Pattern, id: u64) -> bool {
        self.catch_up_sub(conn, pattern, id).is_some()
    }

    /// A page of catch-up `id` was read: queue its events (those not newer
    /// than the subscription point, and allowed by the subscriber's
    /// current policy) under the same bound as live events — a reader that
    /// has fallen that far behind is closed with 4009 — and after the
    /// `last` page what was held meanwhile.
    pub fn catch_up_page(
        &mut self,
        conn: ConnId,
        pattern: &Pattern,
        id: u64,
        page: Vec<CatchUpFrame>,
        last: bool,
    ) -> CatchUpStep {
        let Some(sub) = self.catch_up_sub(conn, pattern, id) else {
            return CatchUpStep::Stop;
        };
        let Some(upto) = sub.catch_up.as_ref().map(|h| h.upto) else {
            return CatchUpStep::Stop;
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
                tracing::debug!(conn, "catching-up reader fell behind; closing with 4009");
                if let Some(hold) = sub.catch_up.take() {
                    hold.cancel();
                }
                return CatchUpStep::Stop;
            }
            LivePush::Closed => {
                if let Some(hold) = sub.catch_up.take() {
                    hold.cancel();
                }
                return CatchUpStep::Stop;
            }
        }
        if !last {
            return CatchUpStep::Continue;
        }
        release_held(sub);
        CatchUpStep::Stop
    }

    /// Whether any live subscription's pattern matches `topic`: one hash
    /// lookup, then the wildcard patterns until the first match.
    pub fn wants(&self, topic: &Topic) -> bool {
        self.exact.contains_key(topic.as_str())
            || self
                .wildcard
                .values()
                .any(|entry| entry.pattern.matches(topic))
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

/// Ends a subscription's catch-up: what was held meanwhile is queued (under
/// the live bound) and live events flow directly again.
fn release_held(sub: &mut LiveSub) {
    let Some(hold) = sub.catch_up.take() else {
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
    let mut cached: Option<(Arc<Policy>, Vec<usize>)> = None;
    for sub in &mut entry.subs {
        let allowed = match &cached {
            Some((policy, allowed)) if Arc::ptr_eq(policy, &sub.policy) => allowed,
            _ => {
                let allowed = (0..frames.len())
                    .filter(|&i| {
                        sub.policy
                            .allows(Action::Subscribe, &frames[i].0.topic, None)
                    })
                    .collect();
                &cached.insert((Arc::clone(&sub.policy), allowed)).1
            }
        };
        let from_seq = sub.from_seq;
        let mut allowed = allowed
            .iter()
            .filter(|&&i| frames[i].0.seq >= from_seq)
            .map(|&i| &frames[i].1)
            .peekable();
        if allowed.peek().is_none() {
            continue;
        }
        match &mut sub.catch_up {
            Some(hold) => {
                for frame in allowed {
                    queued += 1;
                    hold.held_bytes += frame.len();
                    hold.held.push(frame.clone());
                }
                if hold.held.len() > limits.frames || hold.held_bytes > limits.bytes {
                    hold.cancel();
                    sub.catch_up = None;
                    COUNTERS.slow_consumer_close();
                    refusals::count(Refusal::SnapshotCut);
                    sub.send_queue.close(CloseReason::new(
                        SLOW_CONSUMER,
                        "slow consumer: live buffer overflowed while catching up",
                    ));
                }
            }
            None => {
                let batch: Vec<Utf8Bytes> = allowed.cloned().collect();
                queued += batch.len() as u64;
                if sub.send_queue.push_live_batch(batch) == LivePush::Overflowed {
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
            0,
        );
        index.subscribe(
            2,
            &Pattern::parse("a.**").unwrap(),
            wild.clone(),
            policy,
            None,
            0,
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
            0,
        );
        let policy = Arc::new(Policy::from_scope_str("subscribe:x.*").unwrap());
        index.subscribe(2, &pattern, narrow.clone(), policy, None, 0);
        index.fan_out(&committed(&[event(1, "x.y"), event(2, "z")]));
        assert_eq!(received(&open).await.len(), 2);
        assert_eq!(received(&narrow).await, [("**".into(), "e1".into(), None)]);
    }

    #[test]
    fn a_topic_is_wanted_while_an_exact_or_wildcard_subscription_matches_it() {
        let mut index = LiveIndex::new(LIMITS);
        let topic = |t: &str| Topic::parse(t).unwrap();
        assert!(!index.wants(&topic("orders.eu")));
        let exact = Pattern::parse("orders.eu").unwrap();
        let wild = Pattern::parse("audit.*").unwrap();
        let policy = Arc::new(Policy::allow_all());
        index.subscribe(1, &exact, send_queue(10), policy.clone(), None, 0);
        index.subscribe(2, &wild, send_queue(10), policy, None, 0);
        assert!(index.wants(&topic("orders.eu")));
        assert!(index.wants(&topic("audit.login")));
        assert!(!index.wants(&topic("orders.us")));
        assert!(!index.wants(&topic("audit")));
        assert!(index.unsubscribe(1, "orders.eu"));
        assert!(!index.wants(&topic("orders.eu")));
        assert!(index.unsubscribe(2, "audit.*"));
        assert!(!index.wants(&topic("audit.login")));
    }

    #[tokio::test]
    async fn overflow_closes_the_slow_subscriber_only() {
        let mut index = LiveIndex::new(LIMITS);
        let slow = send_queue(2);
        let fast = send_queue(100);
        let pattern = Pattern::parse("t").unwrap();
        let policy = Arc::new(Policy::allow_all());
        index.subscribe(1, &pattern, slow.clone(), policy.clone(), None, 0);
        index.subscribe(2, &pattern, fast.clone(), policy, None, 0);
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
                0,
            )
            .unwrap();
        index.fan_out(&committed(&[event(6, "s.a")]));
        assert!(received(&out).await.is_empty(), "held until the snapshot");
        let page = |events: &[Event]| {
            events
                .iter()
                .filter_map(|e| CatchUpFrame::encode(&pattern, e, true))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            index.catch_up_page(1, &pattern, ticket.id, page(&[event(1, "s.a")]), false),
            CatchUpStep::Continue
        );
        // The store may already see event 6; it is not part of the snapshot.
        assert_eq!(
            index.catch_up_page(
                1,
                &pattern,
                ticket.id,
                page(&[event(2, "s.b"), event(6, "s.a")]),
                true
            ),
            CatchUpStep::Stop
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
            index.catch_up_page(1, &pattern, ticket.id, page(&[event(3, "s.c")]), true),
            CatchUpStep::Stop
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
            .subscribe(1, &pattern, out.clone(), policy.clone(), Some(10), 0)
            .unwrap();
        let second = index
            .subscribe(1, &pattern, out.clone(), policy, Some(10), 0)
            .unwrap();
        assert!(first.cancelled.load(Ordering::Acquire), "replaced");
        let frames: Vec<_> = (1..=4)
            .filter_map(|seq| CatchUpFrame::encode(&pattern, &event(seq, "s.a"), true))
            .collect();
        let cut_before = refusals::total(Refusal::SnapshotCut);
        assert_eq!(
            index.catch_up_page(1, &pattern, first.id, Vec::new(), true),
            CatchUpStep::Stop,
            "pages of the replaced snapshot are ignored"
        );
        assert_eq!(
            index.catch_up_page(1, &pattern, second.id, frames, false),
            CatchUpStep::Stop
        );
        assert!(second.cancelled.load(Ordering::Acquire));
        assert!(refusals::total(Refusal::SnapshotCut) > cut_before);
        assert_eq!(
            received(&out).await,
            [("close".into(), "4009".into(), None)]
        );
    }
}
