//! Publishes, pings and the outbound queue.

mod client_support;

use client_support::*;
use promhub_core::client::{
    ClientConfig, ClientError, ClientEvent, ConnectionState, QueueConfig, QueuePolicy,
    RequestError, RequestId, Unmatched,
};
use promhub_core::frames::{ErrorCode, ErrorFrame, PubAck, PublishOpts, SubscribeOpts, to_payload};
use promhub_core::{Pattern, Topic};
use serde_json::json;

fn topic(s: &str) -> Topic {
    Topic::parse(s).unwrap()
}

fn publish(h: &mut Harness, t: &str, n: u64) -> Result<RequestId, ClientError> {
    let payload = to_payload(&json!({ "n": n })).unwrap();
    h.core
        .publish(h.now, topic(t), payload, PublishOpts::default())
}

fn publish_with_id(h: &mut Harness, t: &str, event_id: &str) -> RequestId {
    let payload = to_payload(&json!({ "id": event_id })).unwrap();
    let opts = PublishOpts {
        id: Some(event_id.to_owned()),
        ..PublishOpts::default()
    };
    h.core.publish(h.now, topic(t), payload, opts).unwrap()
}

fn queue_config(capacity: usize, policy: QueuePolicy) -> ClientConfig {
    ClientConfig {
        outbound_queue: QueueConfig { capacity, policy },
        ..config()
    }
}

#[test]
fn publish_is_sent_with_a_rid_and_acked() {
    let mut h = Harness::connected(config());
    let opts = PublishOpts {
        key: Some("host:sh:42".to_owned()),
        ..PublishOpts::default()
    };
    let payload = to_payload(&json!({"pid": 42, "status": "alive"})).unwrap();
    let request = h
        .core
        .publish(h.now, topic("process.state"), payload, opts)
        .unwrap();
    assert_eq!(request.to_string(), "1");
    assert_eq!(
        h.sent(),
        vec![json!({
            "op": "PUBLISH", "topic": "process.state",
            "payload": {"pid": 42, "status": "alive"},
            "opts": {"key": "host:sh:42"}, "rid": "1",
        })]
    );

    h.hub(json!({"op": "PUBACK", "rid": "1", "id": "0193-a", "seq": 7}));
    assert_eq!(
        h.events(),
        vec![ClientEvent::PublishAcked {
            request,
            ack: PubAck {
                rid: "1".to_owned(),
                id: "0193-a".to_owned(),
                seq: 7,
                duplicate: false
            }
        }]
    );
    assert_eq!(h.core.pending_requests(), 0);

    // A second PUBACK for the same rid matches nothing.
    h.hub(json!({"op": "PUBACK", "rid": "1", "id": "0193-a", "seq": 7}));
    assert_eq!(
        h.events(),
        vec![ClientEvent::Unmatched(Unmatched::Answer {
            op: "PUBACK",
            rid: Some("1".to_owned())
        })]
    );
}

#[test]
fn each_timeout_fails_exactly_its_request() {
    let mut h = Harness::connected(config());
    let first = publish(&mut h, "a.b", 1).unwrap();
    h.advance(500);
    let second = publish(&mut h, "a.b", 2).unwrap();
    h.sent();

    h.advance(9_499);
    assert!(h.events().is_empty());
    h.advance(1);
    assert_eq!(
        publish_failures(&h.events()),
        vec![(first, RequestError::TimedOut)]
    );
    h.advance(499);
    assert!(h.events().is_empty());
    h.advance(1);
    assert_eq!(
        publish_failures(&h.events()),
        vec![(second, RequestError::TimedOut)]
    );

    // The late answer is reported, not matched to anything.
    h.hub(json!({"op": "PUBACK", "rid": first.to_string(), "id": "x", "seq": 1}));
    assert!(matches!(
        &h.events()[..],
        [ClientEvent::Unmatched(Unmatched::Answer {
            op: "PUBACK",
            ..
        })]
    ));
}

#[test]
fn refused_publishes_carry_the_hub_error() {
    let mut h = Harness::connected(config());
    let forbidden = publish(&mut h, "secret.x", 1).unwrap();
    let limited = publish(&mut h, "a.b", 2).unwrap();
    h.sent();
    h.hub(json!({"op": "ERR", "code": "forbidden", "msg": "no publish on secret.x", "rid": forbidden.to_string()}));
    // A wait past the request timeout is not waited out: reported.
    h.hub(json!({"op": "ERR", "code": "rate_limited", "msg": "slow down", "rid": limited.to_string(), "retry_after_ms": 600_000}));
    let failures = publish_failures(&h.events());
    assert_eq!(
        failures,
        vec![
            (
                forbidden,
                RequestError::Refused(ErrorFrame::new(
                    ErrorCode::Forbidden,
                    "no publish on secret.x",
                    Some(forbidden.to_string())
                ))
            ),
            (
                limited,
                RequestError::Refused(ErrorFrame {
                    retry_after_ms: Some(600_000),
                    ..ErrorFrame::new(
                        ErrorCode::RateLimited,
                        "slow down",
                        Some(limited.to_string())
                    )
                })
            ),
        ]
    );
    assert_eq!(failures[0].1.code(), Some(ErrorCode::Forbidden));
    assert_eq!(h.core.pending_requests(), 0);
}

#[test]
fn a_rate_limited_publish_is_sent_again_after_retry_after_ms() {
    let mut h = Harness::connected(config());
    let limited = publish(&mut h, "a.b", 1).unwrap();
    let first = h.sent();
    h.hub(json!({"op": "ERR", "code": "rate_limited", "msg": "slow down", "rid": limited.to_string(), "retry_after_ms": 250}));
    // Nothing is reported and nothing sent while waiting.
    assert!(h.events().is_empty());
    assert_eq!(h.core.poll_timeout(), Some(h.now + 250));
    h.advance(249);
    assert!(h.sent().is_empty());
    // A stale answer for the refused attempt matches nothing.
    h.hub(json!({"op": "PUBACK", "rid": limited.to_string(), "id": "x", "seq": 1}));
    assert!(matches!(
        &h.events()[..],
        [ClientEvent::Unmatched(Unmatched::Answer {
            op: "PUBACK",
            ..
        })]
    ));
    h.advance(1);
    assert_eq!(h.sent(), first, "the same frame, same rid");
    h.hub(json!({"op": "PUBACK", "rid": limited.to_string(), "id": "e1", "seq": 9}));
    assert!(matches!(
        &h.events()[..],
        [ClientEvent::PublishAcked { request, ack }] if *request == limited && ack.seq == 9
    ));
    assert_eq!(h.core.pending_requests(), 0);
}

#[test]
fn publishes_refused_together_are_sent_again_spaced_by_the_wait() {
    let mut h = Harness::connected(config());
    let first = publish(&mut h, "a.b", 1).unwrap();
    let second = publish(&mut h, "a.b", 2).unwrap();
    h.sent();
    for request in [first, second] {
        h.hub(json!({"op": "ERR", "code": "rate_limited", "msg": "slow down", "rid": request.to_string(), "retry_after_ms": 100}));
    }
    h.advance(100);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(rid(&sent[0]), first.to_string());
    h.advance(99);
    assert!(h.sent().is_empty());
    h.advance(1);
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(rid(&sent[0]), second.to_string());
}

#[test]
fn a_rate_limited_publish_waits_for_a_connection_when_the_socket_drops() {
    let mut h = Harness::connected(config());
    let limited = publish(&mut h, "a.b", 1).unwrap();
    h.sent();
    h.hub(json!({"op": "ERR", "code": "rate_limited", "msg": "slow down", "rid": limited.to_string(), "retry_after_ms": 100}));
    // The connection drops during the wait: the publish is not on the
    // wire, so it does not fail; it goes out after the next OK.
    h.core.handle_socket_closed(h.now, Some(1001), "bye");
    h.advance(100);
    assert!(publish_failures(&h.events()).is_empty());
    assert_eq!(h.core.queued_publishes(), 1);
    // Reconnect (the first delay is well inside the request timeout).
    for _ in 0..50 {
        if h.core.state() == ConnectionState::Connecting {
            break;
        }
        h.advance(100);
    }
    assert_eq!(h.core.state(), ConnectionState::Connecting);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    let sent = h.sent();
    assert_eq!(ops(&sent), ["PUBLISH"]);
    assert_eq!(rid(&sent[0]), limited.to_string());
    // Refused again with a wait past the request timeout: reported.
    h.hub(json!({"op": "ERR", "code": "rate_limited", "msg": "slow down", "rid": limited.to_string(), "retry_after_ms": 600_000}));
    assert!(matches!(
        &publish_failures(&h.events())[..],
        [(request, RequestError::Refused(_))] if *request == limited
    ));
}

#[test]
fn errors_that_answer_nothing_are_server_errors() {
    let mut h = Harness::connected(config());
    h.hub(json!({"op": "ERR", "code": "bad_request", "msg": "unknown op", "rid": "999"}));
    h.hub(json!({"op": "ERR", "code": "internal", "msg": "oops"}));
    let events = h.events();
    assert!(matches!(
        &events[..],
        [
            ClientEvent::ServerError(ErrorFrame {
                code: ErrorCode::BadRequest,
                ..
            }),
            ClientEvent::ServerError(ErrorFrame {
                code: ErrorCode::Internal,
                ..
            }),
        ]
    ));
}

#[test]
fn wait_policy_flushes_the_queue_in_order_after_resubscribes() {
    let mut h = Harness::new(config());
    // Before connecting at all.
    let a = publish(&mut h, "q.a", 1).unwrap();
    h.core
        .subscribe(
            h.now,
            Pattern::parse("q.**").unwrap(),
            None,
            SubscribeOpts::default(),
        )
        .unwrap();
    h.core.connect(h.now);
    // While connecting and authenticating too.
    let b = publish(&mut h, "q.b", 2).unwrap();
    h.open_and_auth();
    let c = publish(&mut h, "q.c", 3).unwrap();
    assert_eq!(h.core.queued_publishes(), 3);
    assert!(h.transmits().is_empty(), "nothing but AUTH before OK");

    h.welcome(HEARTBEAT_MS, None);
    let sent = h.sent();
    assert_eq!(
        ops(&sent),
        vec!["SUBSCRIBE", "PUBLISH", "PUBLISH", "PUBLISH"]
    );
    let published: Vec<(&str, String)> = sent[1..]
        .iter()
        .map(|f| (f["topic"].as_str().unwrap(), rid(f)))
        .collect();
    assert_eq!(
        published,
        vec![
            ("q.a", a.to_string()),
            ("q.b", b.to_string()),
            ("q.c", c.to_string())
        ]
    );
    assert_eq!(h.core.queued_publishes(), 0);
    for request in [a, b, c] {
        h.hub(json!({"op": "PUBACK", "rid": request.to_string(), "id": "e", "seq": 1}));
    }
    let acked: Vec<RequestId> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::PublishAcked { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(acked, vec![a, b, c]);
}

#[test]
fn fail_fast_policy_refuses_while_not_connected() {
    let mut h = Harness::new(queue_config(1024, QueuePolicy::FailFast));
    assert_eq!(publish(&mut h, "a.b", 1), Err(ClientError::NotConnected));
    h.core.connect(h.now);
    assert_eq!(publish(&mut h, "a.b", 1), Err(ClientError::NotConnected));
    h.open_and_auth();
    assert_eq!(publish(&mut h, "a.b", 1), Err(ClientError::NotConnected));
    h.welcome(HEARTBEAT_MS, None);
    assert!(h.transmits().is_empty(), "nothing was queued");
    assert!(publish(&mut h, "a.b", 1).is_ok());
    assert_eq!(ops(&h.sent()), vec!["PUBLISH"]);
}

#[test]
fn a_full_queue_refuses_more() {
    let mut h = Harness::new(queue_config(2, QueuePolicy::Wait));
    publish(&mut h, "a.b", 1).unwrap();
    publish(&mut h, "a.b", 2).unwrap();
    assert_eq!(
        publish(&mut h, "a.b", 3),
        Err(ClientError::QueueFull { capacity: 2 })
    );
    assert_eq!(h.core.queued_publishes(), 2);
    // A timed-out publish frees its place.
    h.advance(10_000);
    assert_eq!(publish_failures(&h.events()).len(), 2);
    assert_eq!(h.core.queued_publishes(), 0);
    assert!(publish(&mut h, "a.b", 4).is_ok());
}

#[test]
fn queued_publishes_time_out_from_the_call() {
    let mut h = Harness::new(config());
    let queued = publish(&mut h, "a.b", 1).unwrap();
    h.core.connect(h.now);
    h.advance(9_000);
    h.transmits();
    h.core.handle_socket_open(h.now);
    h.transmits();
    h.advance(1_000);
    // 10 s after publish(), although it never left the queue.
    assert_eq!(
        publish_failures(&h.events()),
        vec![(queued, RequestError::TimedOut)]
    );
    h.welcome(HEARTBEAT_MS, None);
    assert!(
        h.transmits().is_empty(),
        "the timed-out publish is not sent"
    );
}

#[test]
fn in_flight_publishes_with_an_id_are_resent_after_reconnect() {
    let mut h = Harness::connected(config());
    let with_id = publish_with_id(&mut h, "orders.created", "order-17");
    let without_id = publish(&mut h, "orders.viewed", 1).unwrap();
    let original = h.sent();
    assert_eq!(original.len(), 2);

    h.core.handle_socket_closed(h.now, Some(1001), "restart");
    let events = h.events();
    assert_eq!(
        publish_failures(&events),
        vec![(without_id, RequestError::Disconnected)]
    );
    assert_eq!(h.core.queued_publishes(), 1);
    let queued_later = publish(&mut h, "orders.viewed", 2).unwrap();

    h.advance(reconnects(&events)[0].1);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    let resent = h.sent();
    // Same frame, same rid, before what was queued while disconnected.
    assert_eq!(resent[0], original[0]);
    assert_eq!(resent[0]["opts"]["id"], "order-17");
    assert_eq!(rid(&resent[1]), queued_later.to_string());
    assert_eq!(resent.len(), 2);
    h.events();

    h.hub(json!({"op": "PUBACK", "rid": with_id.to_string(), "id": "order-17", "seq": 3, "duplicate": true}));
    assert!(matches!(
        &h.events()[..],
        [ClientEvent::PublishAcked { request, ack }] if *request == with_id && ack.duplicate
    ));
}

#[test]
fn resent_publishes_can_be_resent_again() {
    let mut h = Harness::connected(config());
    let request = publish_with_id(&mut h, "a.b", "e-1");
    let original = h.sent();
    for _ in 0..2 {
        h.core.handle_socket_error(h.now, "reset");
        let delay = reconnects(&h.events())[0].1;
        h.advance(delay);
        h.open_and_auth();
        h.welcome(HEARTBEAT_MS, None);
        assert_eq!(h.sent(), original);
    }
    // Still bounded by the request timeout from the call.
    h.advance(10_000);
    assert_eq!(
        publish_failures(&h.events()),
        vec![(request, RequestError::TimedOut)]
    );
}

#[test]
fn requeued_publishes_beyond_capacity_fail_queue_full() {
    let mut h = Harness::connected(queue_config(2, QueuePolicy::Wait));
    let ids: Vec<RequestId> = (0..3)
        .map(|n| publish_with_id(&mut h, "a.b", &format!("e-{n}")))
        .collect();
    h.sent();
    h.core.handle_socket_closed(h.now, None, "");
    assert_eq!(
        publish_failures(&h.events()),
        vec![(ids[2], RequestError::QueueFull)]
    );
    assert_eq!(h.core.queued_publishes(), 2);
}

#[test]
fn terminal_close_fails_in_flight_and_queued_publishes() {
    let mut h = Harness::connected(config());
    let in_flight = publish_with_id(&mut h, "a.b", "e-1");
    h.sent();
    h.core.handle_socket_closed(h.now, Some(4003), "forbidden");
    assert_eq!(
        publish_failures(&h.events()),
        vec![(in_flight, RequestError::Disconnected)]
    );
    assert_eq!(publish(&mut h, "a.b", 1), Err(ClientError::Closed));
}

#[test]
fn ping_gets_a_pong_or_fails() {
    let mut h = Harness::new(config());
    assert_eq!(h.core.ping(h.now), Err(ClientError::NotConnected));
    let mut h = Harness::connected(config());
    let ping = h.core.ping(h.now).unwrap();
    assert_eq!(
        h.sent(),
        vec![json!({"op": "PING", "rid": ping.to_string()})]
    );
    h.hub(json!({"op": "PONG", "rid": ping.to_string()}));
    assert_eq!(h.events(), vec![ClientEvent::Pong { request: ping }]);

    let lost = h.core.ping(h.now).unwrap();
    h.advance(10_000);
    let events = h.events();
    assert!(events.contains(&ClientEvent::PingFailed {
        request: lost,
        error: RequestError::TimedOut
    }));
    h.hub(json!({"op": "PONG", "rid": "nobody"}));
    assert_eq!(
        h.events(),
        vec![ClientEvent::Unmatched(Unmatched::Answer {
            op: "PONG",
            rid: Some("nobody".to_owned())
        })]
    );
}

#[test]
fn rids_are_unique_across_reconnects() {
    let mut h = Harness::connected(config());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        for n in 0..5 {
            let id = publish(&mut h, "a.b", n).unwrap();
            assert!(seen.insert(id), "rid {id} reused");
        }
        h.core.handle_socket_closed(h.now, Some(1001), "");
        let delay = reconnects(&h.events())[0].1;
        h.advance(delay);
        h.open_and_auth();
        h.welcome(HEARTBEAT_MS, None);
        h.transmits();
    }
    assert_eq!(seen.len(), 15);
}
