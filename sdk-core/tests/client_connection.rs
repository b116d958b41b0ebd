//! Connection life of `ClientCore`: handshake, refusal, terminal and
//! non-terminal closes, reconnect backoff, heartbeat, close().

mod client_support;

use client_support::*;
use promhub_core::client::{
    ClientEvent, ConnectionState, ReconnectConfig, RequestError, StateReason, Transmit, close_code,
};
use promhub_core::frames::{ErrorCode, PublishOpts, SubscribeOpts, Welcome, to_payload};
use promhub_core::{Pattern, Topic};
use serde_json::json;

use ConnectionState::*;

fn topic(s: &str) -> Topic {
    Topic::parse(s).unwrap()
}

fn payload() -> promhub_core::Payload {
    to_payload(&json!({"n": 1})).unwrap()
}

#[test]
fn handshake_sends_auth_then_connects_on_ok() {
    let mut h = Harness::new(config());
    assert_eq!(h.core.state(), Disconnected);
    h.core.connect(h.now);
    assert_eq!(h.core.state(), Connecting);

    let auth = h.open_and_auth();
    assert_eq!(
        auth,
        json!({"op": "AUTH", "token": "token-1", "v": 1, "client": "promhub-test/1.0"})
    );
    assert_eq!(h.core.state(), Authenticating);

    h.welcome(20_000, None);
    assert_eq!(h.core.state(), Connected);
    let events = h.events();
    assert_eq!(
        events,
        vec![
            ClientEvent::StateChanged {
                state: Connecting,
                reason: StateReason::UserRequested
            },
            ClientEvent::StateChanged {
                state: Authenticating,
                reason: StateReason::SocketOpened
            },
            ClientEvent::StateChanged {
                state: Connected,
                reason: StateReason::Authenticated
            },
            ClientEvent::Connected(Welcome {
                v: 1,
                session: "s-1".to_owned(),
                server: "promhub/test".to_owned(),
                heartbeat_ms: 20_000,
                expires_at: None,
            }),
        ]
    );
    // Nothing else was sent: no subscriptions, no queue.
    assert!(h.transmits().is_empty());
}

#[test]
fn anonymous_auth_omits_the_token() {
    let mut h = Harness::new(promhub_core::ClientConfig {
        token: None,
        ..config()
    });
    h.core.connect(h.now);
    let auth = h.open_and_auth();
    assert_eq!(
        auth,
        json!({"op": "AUTH", "v": 1, "client": "promhub-test/1.0"})
    );
}

#[test]
fn refused_auth_and_4001_close_is_terminal() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.events();

    h.hub(json!({"op": "ERR", "code": "jwt_invalid", "msg": "bad signature"}));
    // The refusal is reported with the close that follows.
    assert_eq!(h.core.state(), Authenticating);
    h.core
        .handle_socket_closed(h.now, Some(4001), "authentication failed");

    assert_eq!(h.core.state(), Closed);
    let events = h.events();
    assert_eq!(
        events,
        vec![
            ClientEvent::StateChanged {
                state: Closed,
                reason: StateReason::AuthRefused {
                    code: ErrorCode::JwtInvalid,
                    msg: "bad signature".to_owned(),
                    close_code: Some(4001),
                }
            },
            ClientEvent::TokenRefreshNeeded { expires_at: None },
        ]
    );
    // No reconnect, ever.
    assert_eq!(h.core.poll_timeout(), None);
    h.advance(3_600_000);
    assert!(h.transmits().is_empty());
    assert!(h.events().is_empty());
}

#[test]
fn a_new_token_after_refusal_reconnects_with_it() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.hub(json!({"op": "ERR", "code": "token_expired", "msg": "expired"}));
    h.core.handle_socket_closed(h.now, Some(4001), "");
    h.events();
    assert_eq!(h.core.state(), Closed);

    h.core.set_token(h.now, Some("token-2".to_owned()));
    assert_eq!(h.core.state(), Connecting);
    assert_eq!(last_reason(&h.events()), Some(StateReason::TokenUpdated));
    let auth = h.open_and_auth();
    assert_eq!(auth["token"], "token-2");
}

#[test]
fn a_new_token_after_a_user_close_does_not_reconnect() {
    let mut h = Harness::connected(config());
    h.core.close(h.now);
    h.transmits();
    h.core.set_token(h.now, Some("token-2".to_owned()));
    assert_eq!(h.core.state(), Closed);
    assert!(h.transmits().is_empty());
}

#[test]
fn terminal_close_codes_stop_reconnecting() {
    for code in [1000u16, 4001, 4003, 4008] {
        let mut h = Harness::connected(config());
        h.core.handle_socket_closed(h.now, Some(code), "bye");
        assert_eq!(h.core.state(), Closed, "code {code}");
        let events = h.events();
        assert_eq!(
            last_reason(&events),
            Some(StateReason::TerminalClose {
                code,
                reason: "bye".to_owned()
            }),
            "code {code}"
        );
        assert!(reconnects(&events).is_empty(), "code {code}");
        let wants_token = events
            .iter()
            .any(|e| matches!(e, ClientEvent::TokenRefreshNeeded { expires_at: None }));
        assert_eq!(wants_token, code == 4001 || code == 4003, "code {code}");
        assert_eq!(h.core.poll_timeout(), None, "code {code}");
        h.advance(3_600_000);
        assert!(h.transmits().is_empty(), "code {code}");
    }
}

#[test]
fn non_terminal_closes_reconnect() {
    let cases: [(Option<u16>, bool); 5] = [
        (Some(1001), false),
        (Some(4009), false),
        (Some(1006), false),
        (None, false),
        (None, true), // a socket error
    ];
    for (code, as_error) in cases {
        let mut h = Harness::connected(config());
        if as_error {
            h.core.handle_socket_error(h.now, "connection reset");
        } else {
            h.core.handle_socket_closed(h.now, code, "going away");
        }
        assert_eq!(h.core.state(), Disconnected, "{code:?}");
        let events = h.events();
        let expected_reason = if as_error {
            StateReason::SocketError("connection reset".to_owned())
        } else {
            StateReason::SocketClosed {
                code,
                reason: "going away".to_owned(),
            }
        };
        assert_eq!(last_reason(&events), Some(expected_reason));
        let [(1, delay)] = reconnects(&events)[..] else {
            panic!("expected one Reconnecting, got {events:?}");
        };
        let (floor, cap) = config().reconnect.delay_bounds(1);
        assert!(
            (floor..=cap).contains(&delay),
            "{delay} not in {floor}..={cap}"
        );

        h.advance(delay - 1);
        assert!(h.transmits().is_empty(), "reconnected early");
        h.advance(1);
        assert_eq!(h.transmits(), vec![Transmit::Connect]);
        assert_eq!(h.core.state(), Connecting);
        assert_eq!(
            last_reason(&h.events()),
            Some(StateReason::Reconnect { attempt: 1 })
        );
    }
}

#[test]
fn default_backoff_bounds() {
    let reconnect = ReconnectConfig::default();
    let bounds: Vec<(u64, u64)> = (1..=10).map(|a| reconnect.delay_bounds(a)).collect();
    assert_eq!(
        bounds,
        vec![
            (125, 250),
            (125, 500),
            (125, 1_000),
            (125, 2_000),
            (125, 4_000),
            (125, 8_000),
            (125, 16_000),
            (125, 30_000),
            (125, 30_000),
            (125, 30_000),
        ]
    );
    // Absurd attempt numbers and settings neither overflow nor panic.
    assert_eq!(reconnect.delay_bounds(u32::MAX), (125, 30_000));
    assert_eq!(reconnect.delay_bounds(0), (125, 250));
    let odd = ReconnectConfig {
        min_delay_ms: 0,
        max_delay_ms: 0,
        multiplier: f64::NAN,
        ..reconnect
    };
    assert_eq!(odd.delay_bounds(5), (1, 1));
}

/// Fails every connection attempt of a fresh client and returns the delay
/// of each reconnect.
fn failing_reconnect_delays(seed: u64, attempts: u32) -> Vec<(u32, u64)> {
    let mut h = Harness::new(promhub_core::ClientConfig {
        seed,
        reconnect: ReconnectConfig {
            min_delay_ms: 100,
            max_delay_ms: 3_200,
            ..ReconnectConfig::default()
        },
        ..config()
    });
    h.core.connect(h.now);
    let mut delays = Vec::new();
    for _ in 0..attempts {
        assert_eq!(h.transmits(), vec![Transmit::Connect]);
        h.core.handle_socket_error(h.now, "connection refused");
        let found = reconnects(&h.events());
        assert_eq!(found.len(), 1);
        delays.push(found[0]);
        h.advance(found[0].1);
    }
    delays
}

#[test]
fn reconnect_delays_grow_with_full_jitter_up_to_the_cap() {
    let caps = [100, 200, 400, 800, 1_600, 3_200, 3_200, 3_200, 3_200, 3_200];
    let mut by_attempt: Vec<Vec<u64>> = vec![Vec::new(); caps.len()];
    for seed in 0..32 {
        let delays = failing_reconnect_delays(seed, caps.len() as u32);
        for (index, &(attempt, delay)) in delays.iter().enumerate() {
            assert_eq!(attempt as usize, index + 1, "attempts count up");
            assert!(
                (50..=caps[index]).contains(&delay),
                "seed {seed} attempt {attempt}: {delay} outside 50..={}",
                caps[index]
            );
            by_attempt[index].push(delay);
        }
    }
    // The cap really grows: each attempt up to the max draws delays beyond
    // the previous attempt's cap.
    for index in 1..6 {
        let longest = by_attempt[index].iter().max().unwrap();
        assert!(
            *longest > caps[index - 1],
            "attempt {}: longest delay {longest} never exceeded the previous cap",
            index + 1
        );
    }
    // Jittered: the delays at the cap differ between clients.
    let mut at_cap = by_attempt[9].clone();
    at_cap.sort_unstable();
    at_cap.dedup();
    assert!(at_cap.len() > 16, "too little jitter: {at_cap:?}");
}

#[test]
fn the_same_seed_gives_the_same_delays() {
    assert_eq!(
        failing_reconnect_delays(42, 8),
        failing_reconnect_delays(42, 8)
    );
    assert_ne!(
        failing_reconnect_delays(42, 8),
        failing_reconnect_delays(43, 8)
    );
}

#[test]
fn the_attempt_counter_resets_after_ok() {
    let mut h = Harness::connected(config());
    h.core.handle_socket_closed(h.now, Some(1001), "");
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let found = reconnects(&h.events());
        attempts.push(found[0].0);
        h.advance(found[0].1);
        assert_eq!(h.transmits(), vec![Transmit::Connect]);
        h.core.handle_socket_error(h.now, "refused");
    }
    attempts.push(reconnects(&h.events())[0].0);
    assert_eq!(attempts, vec![1, 2, 3, 4, 5]);

    let delay = h.core.poll_timeout().unwrap() - h.now;
    h.advance(delay);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    h.events();
    h.core.handle_socket_closed(h.now, Some(1001), "");
    let after_ok = reconnects(&h.events());
    assert_eq!(after_ok.len(), 1);
    assert_eq!(after_ok[0].0, 1, "attempts count from 1 again after OK");
    assert!(
        after_ok[0].1 <= 250,
        "and the delay is back to the first cap"
    );
}

#[test]
fn reconnecting_gives_up_after_max_attempts() {
    let mut h = Harness::connected(config_with_reconnect(ReconnectConfig {
        max_attempts: Some(3),
        ..ReconnectConfig::default()
    }));
    h.core.handle_socket_closed(h.now, Some(1001), "");
    for attempt in 1..=3 {
        let events = h.events();
        assert_eq!(reconnects(&events).len(), 1);
        assert_eq!(reconnects(&events)[0].0, attempt);
        h.advance(reconnects(&events)[0].1);
        assert_eq!(h.transmits(), vec![Transmit::Connect]);
        h.core.handle_socket_error(h.now, "refused");
    }
    assert_eq!(h.core.state(), Closed);
    assert_eq!(
        last_reason(&h.events()),
        Some(StateReason::ReconnectExhausted { attempts: 3 })
    );
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn reconnect_disabled_closes_on_any_drop() {
    let mut h = Harness::connected(config_with_reconnect(ReconnectConfig {
        enabled: false,
        ..ReconnectConfig::default()
    }));
    h.core.handle_socket_closed(h.now, Some(1001), "restart");
    assert_eq!(h.core.state(), Closed);
    assert_eq!(
        last_reason(&h.events()),
        Some(StateReason::SocketClosed {
            code: Some(1001),
            reason: "restart".to_owned()
        })
    );
}

#[test]
fn rate_limited_close_waits_retry_after() {
    for reason in ["1500", r#"{"retry_after_ms":1500}"#] {
        let mut h = Harness::connected(config());
        h.core.handle_socket_closed(h.now, Some(4029), reason);
        assert_eq!(reconnects(&h.events()), vec![(1, 1_500)], "{reason}");
        h.advance(1_499);
        assert!(h.transmits().is_empty());
        h.advance(1);
        assert_eq!(h.transmits(), vec![Transmit::Connect]);
    }
    // Without a usable delay: ordinary backoff.
    let mut h = Harness::connected(config());
    h.core.handle_socket_closed(h.now, Some(4029), "slow down");
    let [(1, delay)] = reconnects(&h.events())[..] else {
        panic!("expected one reconnect");
    };
    assert!((125..=250).contains(&delay));
}

#[test]
fn connect_timeout_aborts_and_reconnects() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    assert_eq!(h.transmits(), vec![Transmit::Connect]);
    h.advance(10_000);
    assert_eq!(
        h.transmits(),
        vec![Transmit::Close {
            code: close_code::CLIENT_TIMEOUT,
            reason: "connect timeout".to_owned()
        }]
    );
    let events = h.events();
    assert_eq!(last_reason(&events), Some(StateReason::ConnectTimeout));
    assert_eq!(reconnects(&events).len(), 1);
}

#[test]
fn auth_timeout_closes_and_reconnects() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.advance(9_999);
    assert!(h.transmits().is_empty());
    h.advance(1);
    assert_eq!(
        h.transmits(),
        vec![Transmit::Close {
            code: close_code::CLIENT_TIMEOUT,
            reason: "authentication timeout".to_owned()
        }]
    );
    assert_eq!(h.core.state(), Disconnected);
    assert_eq!(last_reason(&h.events()), Some(StateReason::AuthTimeout));
}

#[test]
fn refusal_without_a_close_ends_in_closed() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.hub(json!({"op": "ERR", "code": "no_token", "msg": "token required"}));
    h.advance(10_000);
    assert_eq!(
        h.transmits(),
        vec![Transmit::Close {
            code: 1000,
            reason: "authentication refused".to_owned()
        }]
    );
    assert_eq!(h.core.state(), Closed);
    let events = h.events();
    assert_eq!(
        last_reason(&events),
        Some(StateReason::AuthRefused {
            code: ErrorCode::NoToken,
            msg: "token required".to_owned(),
            close_code: None
        })
    );
    assert!(events.contains(&ClientEvent::TokenRefreshNeeded { expires_at: None }));
}

#[test]
fn ok_with_another_protocol_version_is_a_terminal_protocol_error() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.events();
    h.hub(json!({"op": "OK", "v": 2, "session": "s", "server": "future", "heartbeat_ms": 1000}));
    assert_eq!(h.core.state(), Closed);
    assert_eq!(
        h.transmits(),
        vec![Transmit::Close {
            code: 4008,
            reason: "unsupported protocol version".to_owned()
        }]
    );
    let events = h.events();
    assert!(matches!(&events[..], [
        ClientEvent::ProtocolError(msg),
        ClientEvent::StateChanged { state: Closed, reason: StateReason::ProtocolViolation(_) },
    ] if msg.contains("version 2")));
}

#[test]
fn heartbeat_pings_when_idle_and_pong_keeps_the_connection() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.welcome(1_000, None);
    let start = h.now;
    h.events();

    h.advance_to(start + 999);
    assert!(h.transmits().is_empty());
    h.advance_to(start + 1_000);
    let ping = h.sent();
    assert_eq!(ops(&ping), vec!["PING"]);
    h.hub(json!({"op": "PONG", "rid": rid(&ping[0])}));
    // The heartbeat's PONG is internal.
    assert!(h.events().is_empty());

    // Sending anything postpones the next ping.
    h.advance_to(start + 1_500);
    h.core
        .publish(h.now, topic("a.b"), payload(), PublishOpts::default())
        .unwrap();
    h.sent();
    h.advance_to(start + 2_499);
    assert!(h.transmits().is_empty());
    h.advance_to(start + 2_500);
    assert_eq!(ops(&h.sent()), vec!["PING"]);
    assert_eq!(h.core.state(), Connected);
}

#[test]
fn heartbeat_timeout_closes_and_reconnects() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.welcome(1_000, None);
    let start = h.now;
    h.events();

    h.advance_to(start + 1_000);
    assert_eq!(ops(&h.sent()), vec!["PING"]);
    // Any frame, not only the PONG, proves the connection alive.
    h.advance_to(start + 5_000);
    h.hub(json!({"op": "PING", "rid": "hub-1"}));
    assert_eq!(h.sent(), vec![json!({"op": "PONG", "rid": "hub-1"})]);
    assert_eq!(h.core.state(), Connected);

    // Next ping at 6000 (1000 after the PONG was sent); then silence.
    h.advance_to(start + 6_000);
    assert_eq!(ops(&h.sent()), vec!["PING"]);
    h.advance_to(start + 15_999);
    assert!(h.transmits().is_empty());
    h.advance_to(start + 16_000);
    assert_eq!(
        h.transmits(),
        vec![Transmit::Close {
            code: close_code::CLIENT_TIMEOUT,
            reason: "heartbeat timeout".to_owned()
        }]
    );
    assert_eq!(h.core.state(), Disconnected);
    let events = h.events();
    assert_eq!(last_reason(&events), Some(StateReason::HeartbeatTimeout));
    let [(1, delay)] = reconnects(&events)[..] else {
        panic!("expected a reconnect: {events:?}");
    };
    h.advance(delay);
    assert_eq!(h.transmits(), vec![Transmit::Connect]);
}

#[test]
fn configured_heartbeat_overrides_the_hub_and_zero_disables_it() {
    let mut h = Harness::new(promhub_core::ClientConfig {
        heartbeat: promhub_core::client::HeartbeatConfig {
            interval_ms: Some(0),
            pong_timeout_ms: 10_000,
        },
        ..config()
    });
    h.core.connect(h.now);
    h.open_and_auth();
    h.welcome(1_000, None);
    assert_eq!(h.core.poll_timeout(), None);
    h.advance(3_600_000);
    assert!(h.transmits().is_empty());
    assert_eq!(h.core.state(), Connected);
}

#[test]
fn hub_ping_is_answered_with_the_same_rid_even_before_ok() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.hub(json!({"op": "PING", "rid": "x-9"}));
    assert_eq!(h.sent(), vec![json!({"op": "PONG", "rid": "x-9"})]);
    h.hub(json!({"op": "PING"}));
    assert_eq!(h.sent(), vec![json!({"op": "PONG"})]);
}

#[test]
fn close_is_terminal_and_fails_what_is_pending() {
    let mut h = Harness::connected(config());
    let sent = h
        .core
        .publish(h.now, topic("a.b"), payload(), PublishOpts::default())
        .unwrap();
    let ping = h.core.ping(h.now).unwrap();
    h.sent();

    h.core.close(h.now);
    assert_eq!(
        h.transmits(),
        vec![Transmit::Close {
            code: 1000,
            reason: "client closed".to_owned()
        }]
    );
    assert_eq!(h.core.state(), Closed);
    let events = h.events();
    assert_eq!(
        events,
        vec![
            ClientEvent::StateChanged {
                state: Closed,
                reason: StateReason::UserRequested
            },
            ClientEvent::PublishFailed {
                request: sent,
                error: RequestError::Disconnected
            },
            ClientEvent::PingFailed {
                request: ping,
                error: RequestError::Disconnected
            },
        ]
    );
    assert_eq!(h.core.pending_requests(), 0);
    assert_eq!(h.core.poll_timeout(), None);
    assert_eq!(
        h.core
            .publish(h.now, topic("a.b"), payload(), PublishOpts::default()),
        Err(promhub_core::client::ClientError::Closed)
    );
    // A late close report from the driver changes nothing.
    h.core.handle_socket_closed(h.now, Some(1000), "");
    h.core.close(h.now);
    assert!(h.events().is_empty());
    h.advance(3_600_000);
    assert!(h.transmits().is_empty());
}

#[test]
fn close_before_connect_fails_queued_publishes_with_closed() {
    let mut h = Harness::new(config());
    let queued = h
        .core
        .publish(h.now, topic("a.b"), payload(), PublishOpts::default())
        .unwrap();
    h.core.close(h.now);
    // No socket: nothing to close.
    assert!(h.transmits().is_empty());
    assert_eq!(
        publish_failures(&h.events()),
        vec![(queued, RequestError::Closed)]
    );
}

#[test]
fn connect_after_close_starts_over_and_resubscribes() {
    let mut h = Harness::connected(config());
    let sub = h
        .core
        .subscribe(
            h.now,
            Pattern::parse("a.**").unwrap(),
            None,
            SubscribeOpts::default(),
        )
        .unwrap();
    h.sent();
    h.core.close(h.now);
    h.transmits();
    h.events();

    h.core.connect(h.now);
    assert_eq!(last_reason(&h.events()), Some(StateReason::UserRequested));
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    let sent = h.sent();
    assert_eq!(ops(&sent), vec!["SUBSCRIBE"]);
    assert_eq!(sent[0]["topic"], "a.**");
    h.hub(json!({"op": "SUBACK", "rid": rid(&sent[0]), "topic": "a.**", "from_seq": 1}));
    assert_eq!(subscribed(&h.events()), vec![sub]);
}

#[test]
fn connect_while_waiting_to_reconnect_connects_now() {
    let mut h = Harness::connected(config());
    h.core.handle_socket_closed(h.now, Some(1001), "");
    h.events();
    h.core.connect(h.now);
    assert_eq!(h.transmits(), vec![Transmit::Connect]);
    // The reconnect timer is gone: only the connect timeout remains.
    assert_eq!(h.core.poll_timeout(), Some(h.now + 10_000));
    // Connecting twice does nothing.
    h.core.connect(h.now);
    assert!(h.transmits().is_empty());
}

#[test]
fn every_reason_has_one_text_and_its_close_code() {
    use promhub_core::frames::ErrorCode;
    let cases = [
        (
            StateReason::UserRequested,
            "requested by the application",
            None,
        ),
        (
            StateReason::Reconnect { attempt: 3 },
            "reconnect attempt 3",
            None,
        ),
        (StateReason::TokenUpdated, "new token", None),
        (
            StateReason::SocketOpened,
            "socket open, authenticating",
            None,
        ),
        (StateReason::Authenticated, "authenticated", None),
        (
            StateReason::SocketClosed {
                code: Some(1001),
                reason: "hub shutting down".to_owned(),
            },
            "socket closed (1001: hub shutting down)",
            Some(1001),
        ),
        (
            StateReason::SocketClosed {
                code: Some(4009),
                reason: String::new(),
            },
            "socket closed (4009)",
            Some(4009),
        ),
        (
            StateReason::SocketClosed {
                code: None,
                reason: String::new(),
            },
            "socket closed",
            None,
        ),
        (
            StateReason::SocketError("connection reset".to_owned()),
            "connection reset",
            None,
        ),
        (
            StateReason::TerminalClose {
                code: 4003,
                reason: "banned".to_owned(),
            },
            "closed by the hub (4003: banned)",
            Some(4003),
        ),
        (
            StateReason::TerminalClose {
                code: 1000,
                reason: String::new(),
            },
            "closed by the hub (1000)",
            Some(1000),
        ),
        (
            StateReason::AuthRefused {
                code: ErrorCode::JwtInvalid,
                msg: "bad signature".to_owned(),
                close_code: Some(4001),
            },
            "authentication refused: jwt_invalid: bad signature",
            Some(4001),
        ),
        (StateReason::ConnectTimeout, "connect timeout", None),
        (StateReason::AuthTimeout, "no answer to AUTH in time", None),
        (StateReason::HeartbeatTimeout, "heartbeat timeout", None),
        (
            StateReason::ProtocolViolation("v2".to_owned()),
            "protocol violation: v2",
            None,
        ),
        (
            StateReason::ReconnectExhausted { attempts: 5 },
            "gave up after 5 reconnect attempts",
            None,
        ),
        (
            StateReason::TokenFetchFailed("down".to_owned()),
            "no token: down",
            None,
        ),
    ];
    for (reason, text, code) in cases {
        assert_eq!(reason.to_string(), text, "{reason:?}");
        assert_eq!(reason.close_code(), code, "{reason:?}");
    }
}
