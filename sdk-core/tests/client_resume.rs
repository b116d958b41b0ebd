//! Gapless resume of live subscriptions (semantics.md §4): after a
//! reconnect a live subscription asks the hub `from` the seq after the last
//! one it delivered, drops what it delivered already, and reports the
//! seqs the hub could not deliver any more (`SUBACK.from_seq` later than
//! asked).

mod client_support;

use client_support::*;
use promhub_core::client::{ClientEvent, Gap, SubscriptionId};
use promhub_core::frames::{StartFrom, SubscribeOpts};
use promhub_core::{Group, Pattern};
use serde_json::{Value, json};

const LIVE: &str = "feed.*";

fn live(h: &mut Harness, opts: SubscribeOpts) -> (SubscriptionId, Value) {
    let sub = h
        .core
        .subscribe(h.now, Pattern::parse(LIVE).unwrap(), None, opts)
        .unwrap();
    let sent = h.sent();
    assert_eq!(ops(&sent), vec!["SUBSCRIBE"]);
    (sub, sent[0].clone())
}

fn suback(h: &mut Harness, subscribe: &Value, from_seq: u64) -> Vec<ClientEvent> {
    h.hub(json!({
        "op": "SUBACK", "rid": rid(subscribe), "topic": subscribe["topic"], "from_seq": from_seq,
    }));
    h.events()
}

fn event(seq: u64, snapshot: bool) -> Value {
    let mut ctx = json!({"attempt": 1});
    if snapshot {
        ctx["snapshot"] = json!(true);
    }
    json!({
        "op": "EVENT", "topic": LIVE,
        "event": {"id": format!("f{seq}"), "seq": seq, "topic": "feed.a", "ts": 1, "payload": seq},
        "ctx": ctx,
    })
}

/// The hub sends these events; what reached the application: (seq, gap).
fn send_events(h: &mut Harness, seqs: &[u64]) -> Vec<(u64, Option<Gap>)> {
    for &seq in seqs {
        h.hub(event(seq, false));
    }
    delivered(&h.events())
}

fn delivered(events: &[ClientEvent]) -> Vec<(u64, Option<Gap>)> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::Delivery { delivery, gap, .. } => Some((delivery.event.seq, *gap)),
            _ => None,
        })
        .collect()
}

fn gaps(events: &[ClientEvent]) -> Vec<(SubscriptionId, Gap)> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::Gap { sub, gap } => Some((*sub, *gap)),
            _ => None,
        })
        .collect()
}

/// Drops the connection and reconnects; the frames sent after `OK`.
fn reconnect(h: &mut Harness) -> Vec<Value> {
    h.core.handle_socket_closed(h.now, None, "");
    let delay = reconnects(&h.events())[0].1;
    h.advance(delay);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    h.events();
    h.sent()
}

#[test]
fn a_live_subscription_resumes_after_the_last_seq_it_delivered() {
    let mut h = Harness::connected(config());
    let opts = SubscribeOpts {
        snapshot: Some(true),
        max_inflight: Some(50),
        ..SubscribeOpts::default()
    };
    let (sub, first) = live(&mut h, opts);
    assert_eq!(first["opts"], json!({"snapshot": true, "max_inflight": 50}));
    suback(&mut h, &first, 10);
    // Snapshot events (latest-by-key) are older seqs outside the live
    // sequence: delivered as they are.
    h.hub(event(3, true));
    h.hub(event(8, true));
    assert_eq!(delivered(&h.events()), vec![(3, None), (8, None)]);
    assert_eq!(send_events(&mut h, &[10, 11]), vec![(10, None), (11, None)]);

    let again = reconnect(&mut h);
    // From the seq after 11, and no second snapshot.
    assert_eq!(
        again,
        vec![json!({
            "op": "SUBSCRIBE", "topic": LIVE, "opts": {"from": 12, "max_inflight": 50},
            "rid": rid(&again[0]),
        })]
    );
    let events = suback(&mut h, &again[0], 12);
    assert!(gaps(&events).is_empty());
    assert!(matches!(&events[..], [ClientEvent::Subscribed { sub: s, .. }] if *s == sub));
    // Whatever the hub sends twice is dropped; the rest comes in order.
    assert_eq!(
        send_events(&mut h, &[11, 12, 12, 13]),
        vec![(12, None), (13, None)]
    );
}

#[test]
fn a_gap_the_hub_cannot_fill_is_reported_once_and_with_the_next_event() {
    let mut h = Harness::connected(config());
    let (sub, first) = live(&mut h, SubscribeOpts::default());
    suback(&mut h, &first, 10);
    send_events(&mut h, &[10, 11]);
    let again = reconnect(&mut h);
    assert_eq!(again[0]["opts"], json!({"from": 12}));
    // Retention removed 12..=14 while the client was away.
    let events = suback(&mut h, &again[0], 15);
    let gap = Gap { from: 12, to: 14 };
    assert_eq!(gaps(&events), vec![(sub, gap)]);
    assert!(matches!(
        &events[..],
        [ClientEvent::Subscribed { .. }, ClientEvent::Gap { .. }]
    ));
    assert_eq!(
        send_events(&mut h, &[15, 16]),
        vec![(15, Some(gap)), (16, None)]
    );
    // The next resume starts after 16: no gap reported again.
    let third = reconnect(&mut h);
    assert_eq!(third[0]["opts"], json!({"from": 17}));
    assert!(gaps(&suback(&mut h, &third[0], 17)).is_empty());
}

#[test]
fn a_subscription_with_no_event_yet_resumes_from_its_first_suback() {
    let mut h = Harness::connected(config());
    let (sub, first) = live(&mut h, SubscribeOpts::default());
    // Empty options are left out of the frame.
    assert_eq!(first.get("opts"), None);
    suback(&mut h, &first, 7);
    // Nothing delivered; events 7.. were published while disconnected.
    let again = reconnect(&mut h);
    assert_eq!(again[0]["opts"], json!({"from": 7}));
    assert!(gaps(&suback(&mut h, &again[0], 7)).is_empty());
    assert_eq!(send_events(&mut h, &[7, 8]), vec![(7, None), (8, None)]);
    let _ = sub;
}

#[test]
fn gaps_of_reconnects_without_an_event_in_between_are_merged() {
    let mut h = Harness::connected(config());
    let (sub, first) = live(&mut h, SubscribeOpts::default());
    suback(&mut h, &first, 10);
    send_events(&mut h, &[10, 11]);
    let again = reconnect(&mut h);
    assert_eq!(
        gaps(&suback(&mut h, &again[0], 15)),
        vec![(sub, Gap { from: 12, to: 14 })]
    );
    // Nothing delivered, then another reconnect: from the hub's 15.
    let third = reconnect(&mut h);
    assert_eq!(third[0]["opts"], json!({"from": 15}));
    assert_eq!(
        gaps(&suback(&mut h, &third[0], 20)),
        vec![(sub, Gap { from: 15, to: 19 })]
    );
    assert_eq!(
        send_events(&mut h, &[20]),
        vec![(20, Some(Gap { from: 12, to: 19 }))]
    );
}

#[test]
fn a_first_subscription_from_a_seq_older_than_retention_reports_the_gap() {
    let mut h = Harness::connected(config());
    let opts = SubscribeOpts {
        from: Some(StartFrom::Seq(1)),
        ..SubscribeOpts::default()
    };
    let (sub, first) = live(&mut h, opts);
    assert_eq!(first["opts"], json!({"from": 1}));
    assert_eq!(
        gaps(&suback(&mut h, &first, 4)),
        vec![(sub, Gap { from: 1, to: 3 })]
    );
    // `earliest` asks for the first retained event: nothing can be missing.
    let earliest = SubscribeOpts {
        from: Some(StartFrom::Earliest),
        ..SubscribeOpts::default()
    };
    let other = h
        .core
        .subscribe(h.now, Pattern::parse("other.*").unwrap(), None, earliest)
        .unwrap();
    let sent = h.sent();
    assert!(gaps(&suback(&mut h, &sent[0], 4)).is_empty());
    let _ = other;
}

#[test]
fn durable_groups_resubscribe_with_their_original_options() {
    let mut h = Harness::connected(config());
    let opts = SubscribeOpts {
        from: Some(StartFrom::Earliest),
        ..SubscribeOpts::default()
    };
    h.core
        .subscribe(
            h.now,
            Pattern::parse("jobs.*").unwrap(),
            Some(Group::parse("g").unwrap()),
            opts,
        )
        .unwrap();
    let first = h.sent();
    h.hub(json!({
        "op": "SUBACK", "rid": rid(&first[0]), "topic": "jobs.*", "group": "g", "from_seq": 1,
    }));
    h.hub(json!({
        "op": "EVENT", "topic": "jobs.*", "group": "g",
        "event": {"id": "j5", "seq": 5, "topic": "jobs.a", "ts": 1, "payload": 5},
        "ctx": {"attempt": 1},
    }));
    h.events();
    let again = reconnect(&mut h);
    assert_eq!(again[0]["opts"], json!({"from": "earliest"}));
    // The group's cursor is the hub's: no gap logic, and a redelivery of
    // an older seq is delivered.
    h.hub(json!({
        "op": "SUBACK", "rid": rid(&again[0]), "topic": "jobs.*", "group": "g", "from_seq": 9,
    }));
    h.hub(json!({
        "op": "EVENT", "topic": "jobs.*", "group": "g",
        "event": {"id": "j5", "seq": 5, "topic": "jobs.a", "ts": 1, "payload": 5},
        "ctx": {"attempt": 2},
    }));
    let events = h.events();
    assert!(gaps(&events).is_empty());
    assert_eq!(delivered(&events), vec![(5, None)]);
}
