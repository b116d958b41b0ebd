//! The subscription registry: SUBSCRIBE/SUBACK, routing of EVENTs by
//! `topic::group`, resubscribe after reconnect, unsubscribe and
//! ACK/NACK/WORKING.

mod client_support;

use client_support::*;
use promhub_core::client::{
    ClientError, ClientEvent, Delivered, DeliveryTag, RequestError, SubscriptionId, Unmatched,
};
use promhub_core::frames::{ErrorCode, StartFrom, SubscribeOpts};
use promhub_core::{Group, Pattern};
use serde_json::{Value, json};

/// A delivery for answers whose content does not matter.
const E1: Delivered<'static> = Delivered {
    id: "e",
    seq: 1,
    tag: DeliveryTag::from_u64(0),
};

fn subscribe(h: &mut Harness, pattern: &str, group: Option<&str>) -> SubscriptionId {
    h.core
        .subscribe(
            h.now,
            Pattern::parse(pattern).unwrap(),
            group.map(|g| Group::parse(g).unwrap()),
            SubscribeOpts::default(),
        )
        .unwrap()
}

fn event(topic: &str, group: Option<&str>, id: &str) -> Value {
    let mut frame = json!({
        "op": "EVENT", "topic": topic,
        "event": {"id": id, "seq": 5, "topic": "process.state", "ts": 1, "payload": {"x": 1}},
        "ctx": {"attempt": 1},
    });
    if let Some(group) = group {
        frame["group"] = json!(group);
    }
    frame
}

fn suback(frame: &Value) -> Value {
    let mut ack =
        json!({"op": "SUBACK", "rid": rid(frame), "topic": frame["topic"], "from_seq": 5});
    if let Some(group) = frame.get("group") {
        ack["group"] = group.clone();
    }
    ack
}

fn deliveries(events: &[ClientEvent]) -> Vec<(SubscriptionId, String)> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::Delivery { sub, delivery, .. } => Some((*sub, delivery.event.id.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn subscribe_sends_the_exact_frame_and_reports_suback() {
    let mut h = Harness::connected(config());
    let opts = SubscribeOpts {
        from: Some(StartFrom::Earliest),
        max_inflight: Some(10),
        ..SubscribeOpts::default()
    };
    let sub = h
        .core
        .subscribe(
            h.now,
            Pattern::parse("process.**").unwrap(),
            Some(Group::parse("ops").unwrap()),
            opts,
        )
        .unwrap();
    let sent = h.sent();
    assert_eq!(
        sent,
        vec![json!({
            "op": "SUBSCRIBE", "topic": "process.**", "group": "ops",
            "opts": {"from": "earliest", "max_inflight": 10}, "rid": "1",
        })]
    );
    h.hub(suback(&sent[0]));
    let events = h.events();
    assert!(matches!(
        &events[..],
        [ClientEvent::Subscribed { sub: s, ack }] if *s == sub && ack.from_seq == 5
    ));
    let (pattern, group) = h.core.subscription(sub).unwrap();
    assert_eq!(
        (pattern.as_str(), group.map(Group::as_str)),
        ("process.**", Some("ops"))
    );
}

#[test]
fn the_same_topic_and_group_twice_is_refused() {
    let mut h = Harness::connected(config());
    let ops_group = subscribe(&mut h, "process.**", Some("ops"));
    let again = h.core.subscribe(
        h.now,
        Pattern::parse("process.**").unwrap(),
        Some(Group::parse("ops").unwrap()),
        SubscribeOpts::default(),
    );
    assert_eq!(again, Err(ClientError::AlreadySubscribed(ops_group)));
    // Another group, or none, is another subscription.
    let audit = subscribe(&mut h, "process.**", Some("audit"));
    let live = subscribe(&mut h, "process.**", None);
    assert_ne!(ops_group, audit);
    assert_ne!(audit, live);
    assert_eq!(h.core.subscription_count(), 3);
    assert_eq!(ops(&h.sent()), vec!["SUBSCRIBE"; 3]);
}

#[test]
fn events_are_routed_by_topic_and_group() {
    let mut h = Harness::connected(config());
    let ops_group = subscribe(&mut h, "process.**", Some("ops"));
    let audit = subscribe(&mut h, "process.**", Some("audit"));
    let live = subscribe(&mut h, "process.**", None);
    let other = subscribe(&mut h, "process.*", Some("ops"));
    for frame in h.sent() {
        h.hub(suback(&frame));
    }
    h.events();

    h.hub(event("process.**", Some("audit"), "e1"));
    h.hub(event("process.**", None, "e2"));
    h.hub(event("process.*", Some("ops"), "e3"));
    h.hub(event("process.**", Some("ops"), "e4"));
    h.hub(event("nothing.**", Some("ops"), "e5"));
    h.hub(event("process.**", Some("nobody"), "e6"));
    let events = h.events();
    assert_eq!(
        deliveries(&events),
        vec![
            (audit, "e1".to_owned()),
            (live, "e2".to_owned()),
            (other, "e3".to_owned()),
            (ops_group, "e4".to_owned()),
        ]
    );
    let unmatched: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Unmatched(Unmatched::Event { event_id, .. }) => Some(event_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(unmatched, vec!["e5", "e6"]);
}

#[test]
fn every_subscription_is_resent_after_a_reconnect() {
    let mut h = Harness::connected(config());
    let subs = vec![
        subscribe(&mut h, "a.**", Some("g1")),
        subscribe(&mut h, "b.*", None),
        subscribe(&mut h, "c", Some("g2")),
    ];
    let first = h.sent();
    for frame in &first {
        h.hub(suback(frame));
    }
    assert_eq!(subscribed(&h.events()), subs);
    // One registered while disconnected is sent with the others.
    h.core
        .handle_socket_closed(h.now, Some(4009), "slow consumer");
    assert_eq!(reconnects(&h.events()).len(), 1);
    let late = subscribe(&mut h, "d.**", None);

    for round in 0..2 {
        // Wait out the reconnect delay (the only timer while disconnected).
        let reconnect_at = h.core.poll_timeout().unwrap();
        h.advance_to(reconnect_at);
        h.open_and_auth();
        h.welcome(HEARTBEAT_MS, None);
        let again = h.sent();
        assert_eq!(ops(&again), vec!["SUBSCRIBE"; 4], "round {round}");
        let topics: Vec<&str> = again.iter().map(|f| f["topic"].as_str().unwrap()).collect();
        assert_eq!(topics, vec!["a.**", "b.*", "c", "d.**"]);
        for (old, new) in first.iter().zip(&again) {
            assert_eq!(old["group"], new["group"]);
            assert_ne!(rid(old), rid(new), "fresh rid");
        }
        h.events();
        for frame in &again {
            h.hub(suback(frame));
        }
        let mut expected = subs.clone();
        expected.push(late);
        assert_eq!(subscribed(&h.events()), expected, "round {round}");
        h.core.handle_socket_closed(h.now, Some(1001), "");
        h.events();
    }
}

#[test]
fn a_refused_resubscribe_is_reported_and_removed() {
    let mut h = Harness::connected(config());
    let kept = subscribe(&mut h, "a.**", None);
    let refused = subscribe(&mut h, "b.**", None);
    for frame in h.sent() {
        h.hub(suback(&frame));
    }
    h.core.handle_socket_closed(h.now, Some(1001), "");
    let delay = reconnects(&h.events())[0].1;
    h.advance(delay);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    h.events();
    let again = h.sent();
    h.hub(suback(&again[0]));
    h.hub(json!({"op": "ERR", "code": "forbidden", "msg": "no", "rid": rid(&again[1])}));
    let events = h.events();
    assert_eq!(subscribed(&events), vec![kept]);
    assert!(matches!(
        &events[1],
        ClientEvent::SubscribeFailed { sub, error: RequestError::Refused(err) }
            if *sub == refused && err.code == ErrorCode::Forbidden
    ));
    assert_eq!(h.core.subscription_count(), 1);
    assert!(h.core.subscription(refused).is_none());
}

#[test]
fn an_unanswered_subscribe_fails_and_is_withdrawn() {
    let mut h = Harness::connected(config());
    let sub = subscribe(&mut h, "a.**", Some("g"));
    h.sent();
    h.advance(10_000);
    let events = h.events();
    assert_eq!(
        events,
        vec![ClientEvent::SubscribeFailed {
            sub,
            error: RequestError::TimedOut
        }]
    );
    // The hub may have subscribed after all: withdraw it, without a rid.
    assert_eq!(
        h.sent(),
        vec![json!({"op": "UNSUBSCRIBE", "topic": "a.**", "group": "g"})]
    );
    assert_eq!(h.core.subscription_count(), 0);
}

#[test]
fn unsubscribe_while_connected() {
    let mut h = Harness::connected(config());
    let sub = subscribe(&mut h, "a.**", Some("g"));
    let sent = h.sent();
    h.hub(suback(&sent[0]));
    h.events();

    let request = h.core.unsubscribe(h.now, sub).unwrap().unwrap();
    assert_eq!(
        h.sent(),
        vec![
            json!({"op": "UNSUBSCRIBE", "topic": "a.**", "group": "g", "rid": request.to_string()})
        ]
    );
    // Events stop at once, before UNSUBACK.
    h.hub(event("a.**", Some("g"), "late"));
    assert!(matches!(
        &h.events()[..],
        [ClientEvent::Unmatched(Unmatched::Event { .. })]
    ));
    h.hub(json!({"op": "UNSUBACK", "rid": request.to_string(), "topic": "a.**", "group": "g"}));
    assert_eq!(h.events(), vec![ClientEvent::Unsubscribed { sub }]);
    assert_eq!(
        h.core.unsubscribe(h.now, sub),
        Err(ClientError::UnknownSubscription(sub))
    );
    // Not resubscribed after a reconnect.
    h.core.handle_socket_closed(h.now, Some(1001), "");
    let delay = reconnects(&h.events())[0].1;
    h.advance(delay);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    assert!(h.transmits().is_empty());
}

#[test]
fn unsubscribe_while_disconnected_needs_no_hub() {
    let mut h = Harness::new(config());
    let sub = subscribe(&mut h, "a.**", None);
    assert_eq!(h.core.unsubscribe(h.now, sub), Ok(None));
    assert_eq!(h.events(), vec![ClientEvent::Unsubscribed { sub }]);
    h.core.connect(h.now);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    assert!(h.transmits().is_empty());
}

#[test]
fn unsubscribe_before_suback_swallows_the_suback() {
    let mut h = Harness::connected(config());
    let sub = subscribe(&mut h, "a.**", None);
    let subscribe_frame = h.sent().remove(0);
    let request = h.core.unsubscribe(h.now, sub).unwrap().unwrap();
    h.sent();
    h.hub(suback(&subscribe_frame));
    h.hub(json!({"op": "UNSUBACK", "rid": request.to_string(), "topic": "a.**"}));
    assert_eq!(h.events(), vec![ClientEvent::Unsubscribed { sub }]);
    // And its timeout is silent too.
    h.advance(20_000);
    assert!(
        h.events()
            .iter()
            .all(|e| !matches!(e, ClientEvent::SubscribeFailed { .. }))
    );
}

#[test]
fn a_pending_unsubscribe_completes_when_the_socket_drops() {
    let mut h = Harness::connected(config());
    let sub = subscribe(&mut h, "a.**", None);
    h.sent();
    h.core.unsubscribe(h.now, sub).unwrap();
    h.core.handle_socket_closed(h.now, Some(1001), "");
    assert!(h.events().contains(&ClientEvent::Unsubscribed { sub }));
}

/// Hands the client an EVENT for a durable subscription; the tag of the
/// delivery.
fn deliver(h: &mut Harness, pattern: &str, group: &str, id: &str, seq: u64) -> DeliveryTag {
    let mut frame = event(pattern, Some(group), id);
    frame["event"]["seq"] = json!(seq);
    h.hub(frame);
    match &h.events()[..] {
        [ClientEvent::Delivery { tag: Some(tag), .. }] => *tag,
        other => panic!("expected one durable delivery, got {other:?}"),
    }
}

#[test]
fn ack_nack_and_working_send_the_exact_frames() {
    let mut h = Harness::connected(config());
    let sub = subscribe(&mut h, "process.**", Some("ops"));
    let sent = h.sent();
    h.hub(suback(&sent[0]));
    h.events();
    let tags: Vec<DeliveryTag> = (1..=4)
        .map(|n| deliver(&mut h, "process.**", "ops", &format!("e-{n}"), n))
        .collect();
    h.core
        .ack(
            h.now,
            sub,
            Delivered {
                id: "e-1",
                seq: 1,
                tag: tags[0],
            },
        )
        .unwrap();
    h.core
        .nack(
            h.now,
            sub,
            Delivered {
                id: "e-2",
                seq: 2,
                tag: tags[1],
            },
            Some("db down".to_owned()),
            Some(5_000),
            false,
        )
        .unwrap();
    h.core
        .nack(
            h.now,
            sub,
            Delivered {
                id: "e-3",
                seq: 3,
                tag: tags[2],
            },
            None,
            None,
            true,
        )
        .unwrap();
    h.core
        .working(
            h.now,
            sub,
            Delivered {
                id: "e-4",
                seq: 4,
                tag: tags[3],
            },
        )
        .unwrap();
    assert_eq!(
        h.sent(),
        vec![
            json!({"op": "ACK", "topic": "process.**", "group": "ops", "id": "e-1", "seq": 1}),
            json!({"op": "NACK", "topic": "process.**", "group": "ops", "id": "e-2", "seq": 2, "reason": "db down", "delay_ms": 5000}),
            json!({"op": "NACK", "topic": "process.**", "group": "ops", "id": "e-3", "seq": 3, "final": true}),
            json!({"op": "WORKING", "topic": "process.**", "group": "ops", "id": "e-4", "seq": 4}),
        ]
    );
}

#[test]
fn acks_of_ephemeral_subscriptions_send_nothing() {
    let mut h = Harness::connected(config());
    let live = subscribe(&mut h, "a.**", None);
    h.sent();
    assert_eq!(h.core.ack(h.now, live, E1), Ok(()));
    assert_eq!(h.core.nack(h.now, live, E1, None, None, true), Ok(()));
    assert_eq!(h.core.working(h.now, live, E1), Ok(()));
    assert!(h.transmits().is_empty());
}

#[test]
fn acks_while_disconnected_are_refused_and_dropped() {
    let mut h = Harness::connected(config());
    let sub = subscribe(&mut h, "a.**", Some("g"));
    h.sent();
    h.core.handle_socket_closed(h.now, Some(1001), "");
    assert_eq!(h.core.ack(h.now, sub, E1), Err(ClientError::NotConnected));
    assert_eq!(
        h.core.working(h.now, sub, E1),
        Err(ClientError::NotConnected)
    );
    let delay = reconnects(&h.events())[0].1;
    h.advance(delay);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    // Only the resubscribe: the dropped ACK is not replayed.
    assert_eq!(ops(&h.sent()), vec!["SUBSCRIBE"]);
    let unknown = sub;
    h.core.unsubscribe(h.now, unknown).unwrap();
    assert_eq!(
        h.core.ack(h.now, unknown, E1),
        Err(ClientError::UnknownSubscription(unknown))
    );
}
