//! The stale-delivery guard: ACK/NACK/WORKING go out only for a delivery
//! of a durable group that the current connection holds, named by the tag
//! of the `Delivery` that handed it out.

mod client_support;

use client_support::*;
use promhub_core::client::{
    ClientConfig, ClientError, ClientEvent, Delivered, DeliveryTag, SubscriptionId,
};
use promhub_core::frames::SubscribeOpts;
use promhub_core::{Group, Pattern};
use serde_json::{Value, json};

const PATTERN: &str = "jobs.*";
const GROUP: &str = "workers";

/// A connected harness with one confirmed durable subscription.
fn durable(config: ClientConfig, opts: SubscribeOpts) -> (Harness, SubscriptionId) {
    let mut h = Harness::connected(config);
    let sub = h
        .core
        .subscribe(
            h.now,
            Pattern::parse(PATTERN).unwrap(),
            Some(Group::parse(GROUP).unwrap()),
            opts,
        )
        .unwrap();
    confirm(&mut h);
    (h, sub)
}

/// Answers the one SUBSCRIBE the client just sent.
fn confirm(h: &mut Harness) {
    let sent = h.sent();
    assert_eq!(ops(&sent), vec!["SUBSCRIBE"]);
    h.hub(json!({
        "op": "SUBACK", "rid": rid(&sent[0]), "topic": PATTERN, "group": GROUP, "from_seq": 1,
    }));
    h.events();
}

/// The hub delivers event `e{seq}` (attempt `attempt`); the tag the client
/// handed out with it.
fn deliver(h: &mut Harness, seq: u64, attempt: u32) -> DeliveryTag {
    h.hub(json!({
        "op": "EVENT", "topic": PATTERN, "group": GROUP,
        "event": {"id": format!("e{seq}"), "seq": seq, "topic": "jobs.a", "ts": 1, "payload": seq},
        "ctx": {"attempt": attempt},
    }));
    match &h.events()[..] {
        [
            ClientEvent::Delivery {
                tag: Some(tag),
                gap: None,
                ..
            },
        ] => *tag,
        other => panic!("expected one tagged delivery, got {other:?}"),
    }
}

fn named(id: &str, seq: u64, tag: DeliveryTag) -> Delivered<'_> {
    Delivered { id, seq, tag }
}

fn reconnect(h: &mut Harness) {
    h.core.handle_socket_closed(h.now, Some(1001), "restart");
    let delay = reconnects(&h.events())[0].1;
    h.advance(delay);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    h.events();
}

fn ack_frame(seq: u64) -> Value {
    json!({"op": "ACK", "topic": PATTERN, "group": GROUP, "id": format!("e{seq}"), "seq": seq})
}

#[test]
fn a_delivery_from_a_closed_connection_is_never_answered() {
    let (mut h, sub) = durable(config(), SubscribeOpts::default());
    let old = deliver(&mut h, 3, 1);
    assert!(old >= h.core.live_tags_from());

    h.core.handle_socket_closed(h.now, Some(1001), "restart");
    // Disconnected: nothing can be answered.
    assert_eq!(
        h.core
            .nack(h.now, sub, named("e3", 3, old), None, None, false),
        Err(ClientError::NotConnected)
    );
    let delay = reconnects(&h.events())[0].1;
    h.advance(delay);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    h.events();
    confirm(&mut h);
    // The old tag belongs to the closed connection.
    assert!(old < h.core.live_tags_from());

    // The hub delivers event 3 again on the new connection.
    let new = deliver(&mut h, 3, 2);
    assert!(new >= h.core.live_tags_from());
    assert_ne!(old, new);
    // A late NACK, WORKING or ACK for the old delivery names the same
    // (id, seq) as the new one, but not the same delivery: refused,
    // nothing sent.
    let not_held = Err(ClientError::NotHeld { sub, seq: 3 });
    assert_eq!(
        h.core
            .nack(h.now, sub, named("e3", 3, old), None, None, false),
        not_held
    );
    assert_eq!(h.core.working(h.now, sub, named("e3", 3, old)), not_held);
    assert_eq!(h.core.ack(h.now, sub, named("e3", 3, old)), not_held);
    assert!(h.transmits().is_empty());
    // The new delivery is untouched.
    h.core.ack(h.now, sub, named("e3", 3, new)).unwrap();
    assert_eq!(h.sent(), vec![ack_frame(3)]);
}

#[test]
fn a_redelivery_on_the_same_connection_replaces_the_earlier_one() {
    let (mut h, sub) = durable(config(), SubscribeOpts::default());
    let first = deliver(&mut h, 7, 1);
    // The ack deadline passed: the hub delivers it again, same seq.
    let second = deliver(&mut h, 7, 2);
    let not_held = Err(ClientError::NotHeld { sub, seq: 7 });
    assert_eq!(
        h.core
            .nack(h.now, sub, named("e7", 7, first), None, Some(10), false),
        not_held
    );
    assert_eq!(h.core.working(h.now, sub, named("e7", 7, first)), not_held);
    assert!(h.transmits().is_empty());
    // WORKING keeps the delivery held; the ACK settles it; a second
    // answer has nothing left to settle.
    h.core.working(h.now, sub, named("e7", 7, second)).unwrap();
    h.core.ack(h.now, sub, named("e7", 7, second)).unwrap();
    assert_eq!(h.core.ack(h.now, sub, named("e7", 7, second)), not_held);
    assert_eq!(
        h.sent(),
        vec![
            json!({"op": "WORKING", "topic": PATTERN, "group": GROUP, "id": "e7", "seq": 7}),
            ack_frame(7),
        ]
    );
}

#[test]
fn an_answer_must_name_the_id_seq_and_tag_delivered() {
    let (mut h, sub) = durable(config(), SubscribeOpts::default());
    let tag = deliver(&mut h, 4, 1);
    for wrong in [
        named("e5", 4, tag),
        named("e4", 5, tag),
        named("e4", 4, DeliveryTag::from_u64(tag.as_u64() + 1)),
    ] {
        assert_eq!(
            h.core.ack(h.now, sub, wrong),
            Err(ClientError::NotHeld {
                sub,
                seq: wrong.seq
            })
        );
    }
    assert!(h.transmits().is_empty());
    h.core.ack(h.now, sub, named("e4", 4, tag)).unwrap();
    assert_eq!(h.sent(), vec![ack_frame(4)]);
}

#[test]
fn held_deliveries_are_capped_at_the_subscriptions_max_inflight() {
    let opts = SubscribeOpts {
        max_inflight: Some(2),
        ..SubscribeOpts::default()
    };
    let (mut h, sub) = durable(config(), opts);
    // A hub that ignored max_inflight: the oldest delivery is forgotten.
    let tags: Vec<DeliveryTag> = (1..=3).map(|seq| deliver(&mut h, seq, 1)).collect();
    assert_eq!(
        h.core.ack(h.now, sub, named("e1", 1, tags[0])),
        Err(ClientError::NotHeld { sub, seq: 1 })
    );
    h.core.ack(h.now, sub, named("e2", 2, tags[1])).unwrap();
    h.core.ack(h.now, sub, named("e3", 3, tags[2])).unwrap();
    assert_eq!(h.sent(), vec![ack_frame(2), ack_frame(3)]);
}

#[test]
fn live_deliveries_carry_no_tag_and_their_answers_send_nothing() {
    let mut h = Harness::connected(config());
    let sub = h
        .core
        .subscribe(
            h.now,
            Pattern::parse("feed.*").unwrap(),
            None,
            SubscribeOpts::default(),
        )
        .unwrap();
    let sent = h.sent();
    h.hub(json!({"op": "SUBACK", "rid": rid(&sent[0]), "topic": "feed.*", "from_seq": 1}));
    h.hub(json!({
        "op": "EVENT", "topic": "feed.*",
        "event": {"id": "f1", "seq": 1, "topic": "feed.a", "ts": 1, "payload": 1},
        "ctx": {"attempt": 1},
    }));
    let events = h.events();
    assert!(matches!(
        &events[..],
        [
            ClientEvent::Subscribed { .. },
            ClientEvent::Delivery { tag: None, .. }
        ]
    ));
    let any = named("f1", 1, DeliveryTag::from_u64(0));
    assert_eq!(h.core.ack(h.now, sub, any), Ok(()));
    assert_eq!(h.core.nack(h.now, sub, any, None, None, false), Ok(()));
    assert!(h.transmits().is_empty());
}

#[test]
fn tags_grow_across_subscriptions_and_connections() {
    let (mut h, _) = durable(config(), SubscribeOpts::default());
    let mut last = deliver(&mut h, 1, 1);
    for round in 0..3 {
        reconnect(&mut h);
        confirm(&mut h);
        let tag = deliver(&mut h, 1, round + 2);
        assert!(tag > last, "round {round}");
        assert_eq!(h.core.live_tags_from(), tag);
        last = tag;
    }
}
