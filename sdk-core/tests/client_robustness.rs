//! Bad input never panics the machine, and whatever the order of inputs,
//! its promises hold: every publish resolves exactly once, state changes
//! follow the state diagram, and no timer stays overdue.

mod client_support;

use std::collections::BTreeMap;

use client_support::*;
use promhub_core::client::{
    ClientEvent, ConnectionState, Delivered, DeliveryTag, RequestId, Transmit,
};
use promhub_core::frames::{PublishOpts, SubscribeOpts, to_payload};
use promhub_core::{Group, Pattern, Topic};
use proptest::prelude::*;
use serde_json::{Value, json};

#[test]
fn garbage_from_the_hub_is_a_protocol_error_not_a_panic() {
    let mut h = Harness::connected(config());
    let garbage = [
        "",
        "{",
        "null",
        "[]",
        "42",
        "\"OK\"",
        "{}",
        r#"{"op":null}"#,
        r#"{"op":"NOPE"}"#,
        r#"{"op":"ok","v":1}"#,
        r#"{"op":"PUBACK"}"#,
        r#"{"op":"PUBACK","rid":7,"id":"x","seq":1}"#,
        r#"{"op":"PUBACK","rid":"1","id":"x","seq":-1}"#,
        r#"{"op":"EVENT","topic":"a..b","event":{},"ctx":{"attempt":1}}"#,
        r#"{"op":"EVENT","topic":"a.b","group":"has space","event":{},"ctx":{}}"#,
        r#"{"op":"ERR","code":"forbidden"}"#,
        r#"{"op":"OK","v":"1","session":"s","server":"x","heartbeat_ms":1}"#,
        r#"{"op":"EXPIRING","expires_at":"soon"}"#,
        "\u{0}\u{1}\u{fffd}",
    ];
    for text in garbage {
        h.hub_text(text);
        let events = h.events();
        assert!(
            matches!(&events[..], [ClientEvent::ProtocolError(_)]),
            "{text:?} gave {events:?}"
        );
        assert_eq!(h.core.state(), ConnectionState::Connected, "{text:?}");
    }
    let huge = format!(r#"{{"op":"PONG","rid":"{}"}}"#, "9".repeat(100_000));
    h.hub_text(&huge);
    assert!(matches!(&h.events()[..], [ClientEvent::Unmatched(_)]));
    // Unknown fields are ignored (forward compatibility).
    h.hub(json!({"op": "PING", "rid": "p", "future": {"x": 1}}));
    assert_eq!(h.sent(), vec![json!({"op": "PONG", "rid": "p"})]);
}

#[test]
fn frames_before_ok_other_than_ok_err_ping_are_protocol_errors() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.events();
    h.hub(json!({"op": "PUBACK", "rid": "1", "id": "x", "seq": 1}));
    h.hub(json!({"op": "EXPIRING", "expires_at": 5}));
    h.hub(json!({"op": "EVENT", "topic": "a", "event": {"id": "e", "seq": 1, "topic": "a", "ts": 1, "payload": 1}, "ctx": {"attempt": 1}}));
    let events = h.events();
    assert_eq!(events.len(), 3);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, ClientEvent::ProtocolError(msg) if msg.contains("before OK")))
    );
    assert_eq!(h.core.state(), ConnectionState::Authenticating);
    h.welcome(HEARTBEAT_MS, None);
    assert_eq!(h.core.state(), ConnectionState::Connected);
}

#[test]
fn socket_reports_without_a_socket_are_ignored() {
    let mut h = Harness::new(config());
    h.core.handle_socket_open(h.now);
    h.core.handle_socket_closed(h.now, Some(1001), "");
    h.core.handle_socket_error(h.now, "boom");
    h.hub(json!({"op": "OK", "v": 1, "session": "s", "server": "x", "heartbeat_ms": 1}));
    h.core.handle_timeout(h.now);
    assert_eq!(h.core.state(), ConnectionState::Disconnected);
    assert!(h.events().is_empty());
    assert!(h.transmits().is_empty());
}

#[test]
fn a_clock_that_goes_backwards_does_not_panic() {
    let mut h = Harness::connected(config());
    h.core
        .publish(
            u64::MAX - 5,
            Topic::parse("a").unwrap(),
            to_payload(&1).unwrap(),
            PublishOpts::default(),
        )
        .unwrap();
    h.core.handle_timeout(u64::MAX);
    h.core.handle_timeout(0);
    h.core.set_unix_time(u64::MAX, 0);
    h.core.set_unix_time(0, u64::MAX);
    h.core
        .handle_socket_closed(3, Some(4029), &u64::MAX.to_string());
    h.core.handle_timeout(u64::MAX);
    assert_eq!(h.core.state(), ConnectionState::Connecting);
}

// ---------------------------------------------------------------------------
// Random input sequences

#[derive(Debug, Clone)]
enum Input {
    Connect,
    Close,
    SocketOpen,
    SocketClosed(Option<u16>, String),
    SocketError,
    Advance(u64),
    SetToken,
    Publish { with_id: bool },
    Subscribe { pattern: usize, group: usize },
    Unsubscribe(usize),
    Ack(usize),
    Nack(usize),
    Ping,
    Hub(HubInput),
}

#[derive(Debug, Clone)]
enum HubInput {
    Ok {
        v: u32,
        heartbeat_ms: u64,
        expires_in: Option<u64>,
    },
    /// An answer to the `index`-th rid the client sent (modulo).
    Answer {
        op: &'static str,
        index: usize,
    },
    Err {
        index: Option<usize>,
    },
    Event {
        pattern: usize,
        group: usize,
    },
    Ping,
    Expiring,
    Garbage(String),
}

const PATTERNS: [&str; 3] = ["a.**", "a.*", "b"];
const GROUPS: [Option<&str>; 3] = [None, Some("g1"), Some("g2")];

fn input() -> impl Strategy<Value = Input> {
    let close_code = prop::sample::select(vec![
        None,
        Some(1000u16),
        Some(1001),
        Some(1006),
        Some(4001),
        Some(4003),
        Some(4008),
        Some(4009),
        Some(4029),
    ]);
    let hub = prop_oneof![
        (
            1u32..=2,
            prop::sample::select(vec![0u64, 500, 15_000]),
            prop::option::of(0u64..100_000)
        )
            .prop_map(|(v, heartbeat_ms, expires_in)| HubInput::Ok {
                v,
                heartbeat_ms,
                expires_in
            }),
        (
            prop::sample::select(vec!["PUBACK", "SUBACK", "UNSUBACK", "PONG"]),
            0usize..64
        )
            .prop_map(|(op, index)| HubInput::Answer { op, index }),
        prop::option::of(0usize..64).prop_map(|index| HubInput::Err { index }),
        (0..PATTERNS.len(), 0..GROUPS.len())
            .prop_map(|(pattern, group)| HubInput::Event { pattern, group }),
        Just(HubInput::Ping),
        Just(HubInput::Expiring),
        ".{0,40}".prop_map(HubInput::Garbage),
    ];
    prop_oneof![
        2 => Just(Input::Connect),
        1 => Just(Input::Close),
        3 => Just(Input::SocketOpen),
        2 => (close_code, prop::sample::select(vec!["", "250", "x"]))
            .prop_map(|(code, reason)| Input::SocketClosed(code, reason.to_owned())),
        1 => Just(Input::SocketError),
        4 => prop::sample::select(vec![0u64, 1, 100, 1_000, 10_000, 40_000]).prop_map(Input::Advance),
        1 => Just(Input::SetToken),
        4 => any::<bool>().prop_map(|with_id| Input::Publish { with_id }),
        2 => (0..PATTERNS.len(), 0..GROUPS.len())
            .prop_map(|(pattern, group)| Input::Subscribe { pattern, group }),
        1 => (0usize..8).prop_map(Input::Unsubscribe),
        1 => (0usize..8).prop_map(Input::Ack),
        1 => (0usize..8).prop_map(Input::Nack),
        1 => Just(Input::Ping),
        8 => hub.prop_map(Input::Hub),
    ]
}

fn allowed(from: ConnectionState, to: ConnectionState) -> bool {
    use ConnectionState::*;
    matches!(
        (from, to),
        (Disconnected, Connecting | Closed)
            | (Connecting, Authenticating | Disconnected | Closed)
            | (Authenticating, Connected | Disconnected | Closed)
            | (Connected, Disconnected | Closed)
            | (Closed, Connecting)
            // A new token after repeated refusals waits a reconnect delay.
            | (Closed, Disconnected)
    )
}

/// Runs `inputs` and checks the invariants after every step.
fn run(inputs: Vec<Input>) -> Result<(), TestCaseError> {
    let mut h = Harness::new(promhub_core::ClientConfig {
        request_timeout_ms: 5_000,
        ..config()
    });
    let mut rids: Vec<String> = Vec::new();
    let mut subs = Vec::new();
    let mut publishes: BTreeMap<RequestId, u32> = BTreeMap::new();
    let mut state = ConnectionState::Disconnected;

    let mut check = |h: &mut Harness,
                     rids: &mut Vec<String>,
                     publishes: &mut BTreeMap<RequestId, u32>|
     -> Result<(), TestCaseError> {
        for transmit in h.transmits() {
            if let Transmit::Text(text) = transmit {
                let frame: Value = serde_json::from_str(&text)
                    .map_err(|e| TestCaseError::fail(format!("invalid JSON sent: {e}")))?;
                if let Some(rid) = frame["rid"].as_str() {
                    rids.push(rid.to_owned());
                }
            }
        }
        for event in h.events() {
            match event {
                ClientEvent::StateChanged { state: to, .. } => {
                    prop_assert!(allowed(state, to), "{state:?} -> {to:?}");
                    state = to;
                }
                ClientEvent::PublishAcked { request, .. }
                | ClientEvent::PublishFailed { request, .. } => {
                    let resolved = publishes.get_mut(&request).ok_or_else(|| {
                        TestCaseError::fail(format!("unknown publish {request} resolved"))
                    })?;
                    *resolved += 1;
                    prop_assert_eq!(*resolved, 1, "publish {} resolved twice", request);
                }
                _ => {}
            }
        }
        prop_assert_eq!(state, h.core.state());
        Ok(())
    };

    for input in inputs {
        let now = h.now;
        match input {
            Input::Connect => h.core.connect(now),
            Input::Close => h.core.close(now),
            Input::SocketOpen => h.core.handle_socket_open(now),
            Input::SocketClosed(code, reason) => h.core.handle_socket_closed(now, code, &reason),
            Input::SocketError => h.core.handle_socket_error(now, "reset"),
            Input::Advance(ms) => h.advance(ms),
            Input::SetToken => h.core.set_token(now, Some(format!("t-{now}"))),
            Input::Publish { with_id } => {
                let opts = PublishOpts {
                    id: with_id.then(|| format!("e-{now}")),
                    ..PublishOpts::default()
                };
                let topic = Topic::parse("a.b").unwrap();
                if let Ok(id) = h.core.publish(now, topic, to_payload(&now).unwrap(), opts) {
                    publishes.insert(id, 0);
                }
            }
            Input::Subscribe { pattern, group } => {
                let result = h.core.subscribe(
                    now,
                    Pattern::parse(PATTERNS[pattern]).unwrap(),
                    GROUPS[group].map(|g| Group::parse(g).unwrap()),
                    SubscribeOpts::default(),
                );
                if let Ok(sub) = result {
                    subs.push(sub);
                }
            }
            Input::Unsubscribe(i) => {
                if !subs.is_empty() {
                    let _ = h.core.unsubscribe(now, subs[i % subs.len()]);
                }
            }
            Input::Ack(i) => {
                if !subs.is_empty() {
                    let delivered = Delivered {
                        id: "e",
                        seq: 1,
                        tag: DeliveryTag::from_u64(i as u64 % 4),
                    };
                    let _ = h.core.ack(now, subs[i % subs.len()], delivered);
                }
            }
            Input::Nack(i) => {
                if !subs.is_empty() {
                    let _ = h.core.nack(
                        now,
                        subs[i % subs.len()],
                        Delivered {
                            id: "e",
                            seq: 1,
                            tag: DeliveryTag::from_u64(i as u64 % 4),
                        },
                        None,
                        Some(1),
                        false,
                    );
                }
            }
            Input::Ping => {
                let _ = h.core.ping(now);
            }
            Input::Hub(hub) => {
                let pick = |index: usize| -> Value {
                    if rids.is_empty() {
                        json!("0")
                    } else {
                        json!(rids[index % rids.len()])
                    }
                };
                let frame = match hub {
                    HubInput::Ok {
                        v,
                        heartbeat_ms,
                        expires_in,
                    } => json!({
                        "op": "OK", "v": v, "session": "s", "server": "x",
                        "heartbeat_ms": heartbeat_ms, "expires_at": expires_in.map(|e| now + e),
                    }),
                    HubInput::Answer { op, index } => json!({
                        "op": op, "rid": pick(index), "id": "x", "seq": 1,
                        "topic": "a.**", "from_seq": 1,
                    }),
                    HubInput::Err { index } => json!({
                        "op": "ERR", "code": "forbidden", "msg": "no", "rid": index.map(pick),
                    }),
                    HubInput::Event { pattern, group } => json!({
                        "op": "EVENT", "topic": PATTERNS[pattern], "group": GROUPS[group],
                        "event": {"id": "e", "seq": 1, "topic": "a.b", "ts": 1, "payload": null},
                        "ctx": {"attempt": 1},
                    }),
                    HubInput::Ping => json!({"op": "PING", "rid": "h"}),
                    HubInput::Expiring => json!({"op": "EXPIRING", "expires_at": now + 1}),
                    HubInput::Garbage(text) => {
                        h.hub_text(&text);
                        check(&mut h, &mut rids, &mut publishes)?;
                        continue;
                    }
                };
                h.hub(frame);
            }
        }
        check(&mut h, &mut rids, &mut publishes)?;
    }

    // Closing settles everything: each publish resolved exactly once.
    h.core.close(h.now);
    check(&mut h, &mut rids, &mut publishes)?;
    for (request, resolved) in &publishes {
        prop_assert_eq!(
            *resolved,
            1,
            "publish {} resolved {} times",
            request,
            resolved
        );
    }
    prop_assert_eq!(h.core.pending_requests(), 0);
    prop_assert_eq!(h.core.poll_timeout(), None);
    prop_assert_eq!(h.core.state(), ConnectionState::Closed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_input_sequence_keeps_the_promises(inputs in prop::collection::vec(input(), 1..80)) {
        run(inputs)?;
    }
}
