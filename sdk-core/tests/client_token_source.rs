//! A driver with a token source (`ClientConfig::token_source`): the machine
//! asks it for tokens (`Transmit::FetchToken`) and decides when to ask again
//! after a failure (jittered backoff from its seeded RNG).

mod client_support;

use client_support::*;
use promhub_core::client::{
    ClientConfig, ClientCore, ClientEvent, ConnectionState, ReconnectConfig, StateReason, Transmit,
    close_code,
};
use serde_json::json;

fn with_source() -> ClientConfig {
    ClientConfig {
        token: None,
        token_source: true,
        reconnect: ReconnectConfig {
            min_delay_ms: 100,
            max_delay_ms: 10_000,
            ..ReconnectConfig::default()
        },
        ..config()
    }
}

fn fetch_failures(events: &[ClientEvent]) -> Vec<Option<u64>> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::TokenFetchFailed { retry_in_ms, .. } => Some(*retry_in_ms),
            _ => None,
        })
        .collect()
}

#[test]
fn every_connection_attempt_waits_for_a_token_from_the_source() {
    let mut h = Harness::new(with_source());
    h.core.connect(h.now);
    assert_eq!(h.transmits(), vec![Transmit::Connect, Transmit::FetchToken]);
    // The socket opens first: no AUTH until the token is there.
    h.core.handle_socket_open(h.now);
    assert!(h.transmits().is_empty());
    assert_eq!(h.core.state(), ConnectionState::Connecting);
    h.core.handle_token(h.now, Some("t-1".to_owned()));
    assert_eq!(
        h.sent(),
        vec![json!({"op": "AUTH", "token": "t-1", "v": 1, "client": "promhub-test/1.0"})]
    );
    h.welcome(HEARTBEAT_MS, None);
    h.events();

    // The next connection asks again (the token may have expired while
    // the client was away); this time the token comes before the socket.
    h.core.handle_socket_closed(h.now, Some(1001), "restart");
    let delay = reconnects(&h.events())[0].1;
    h.advance(delay);
    assert_eq!(h.transmits(), vec![Transmit::Connect, Transmit::FetchToken]);
    h.core.handle_token(h.now, Some("t-2".to_owned()));
    assert!(h.transmits().is_empty());
    h.core.handle_socket_open(h.now);
    assert_eq!(h.sent()[0]["token"], "t-2");
}

#[test]
fn a_slow_source_is_bounded_by_the_connect_timeout() {
    let mut h = Harness::new(with_source());
    h.core.connect(h.now);
    h.transmits();
    h.core.handle_socket_open(h.now);
    h.advance(10_000);
    assert_eq!(
        h.transmits(),
        vec![Transmit::Close {
            code: close_code::CLIENT_TIMEOUT,
            reason: "connect timeout".to_owned()
        }]
    );
    assert_eq!(last_reason(&h.events()), Some(StateReason::ConnectTimeout));
    // The answer that comes after all serves the next attempt.
    h.core.handle_token(h.now, Some("late".to_owned()));
    let delay = h.core.poll_timeout().unwrap();
    h.advance_to(delay);
    assert_eq!(h.transmits(), vec![Transmit::Connect]);
    h.core.handle_socket_open(h.now);
    assert_eq!(h.sent()[0]["token"], "late");
}

#[test]
fn a_source_that_never_answers_is_asked_again_by_the_next_attempt() {
    let mut h = Harness::new(with_source());
    h.core.connect(h.now);
    assert_eq!(h.transmits(), vec![Transmit::Connect, Transmit::FetchToken]);
    h.core.handle_socket_open(h.now);
    // No answer: the connect timeout gives the attempt up.
    h.advance(10_000);
    assert_eq!(last_reason(&h.events()), Some(StateReason::ConnectTimeout));
    h.transmits();
    let delay = h.core.poll_timeout().unwrap();
    h.advance_to(delay);
    assert_eq!(h.transmits(), vec![Transmit::Connect, Transmit::FetchToken]);
    h.core.handle_token(h.now, Some("second".to_owned()));
    h.core.handle_socket_open(h.now);
    assert_eq!(h.sent()[0]["token"], "second");
}

#[test]
fn a_source_that_fails_while_connecting_gives_the_attempt_up() {
    let mut h = Harness::new(with_source());
    h.core.connect(h.now);
    h.transmits();
    h.core.handle_token_error(h.now, "identity provider down");
    assert_eq!(
        h.transmits(),
        vec![Transmit::Close {
            code: close_code::NORMAL,
            reason: "no token".to_owned()
        }]
    );
    let events = h.events();
    // The reconnect is the retry: no separate token timer.
    assert_eq!(fetch_failures(&events), vec![None]);
    assert_eq!(
        last_reason(&events),
        Some(StateReason::TokenFetchFailed(
            "identity provider down".to_owned()
        ))
    );
    assert_eq!(
        StateReason::TokenFetchFailed("identity provider down".to_owned()).to_string(),
        "no token: identity provider down"
    );
    let (attempt, delay) = reconnects(&events)[0];
    assert_eq!(attempt, 1);
    h.advance(delay);
    assert_eq!(h.transmits(), vec![Transmit::Connect, Transmit::FetchToken]);
    h.core.handle_token(h.now, None);
    h.core.handle_socket_open(h.now);
    // `None`: anonymous.
    assert_eq!(
        h.sent(),
        vec![json!({"op": "AUTH", "v": 1, "client": "promhub-test/1.0"})]
    );
}

#[test]
fn a_failing_refresh_is_retried_with_jittered_exponential_backoff() {
    let mut h = Harness::new(ClientConfig {
        token: Some("t-0".to_owned()),
        ..with_source()
    });
    // A configured token serves the first connection: no fetch.
    h.core.connect(h.now);
    assert_eq!(h.transmits(), vec![Transmit::Connect]);
    h.core.handle_socket_open(h.now);
    assert_eq!(h.sent()[0]["token"], "t-0");
    h.welcome(HEARTBEAT_MS * 1000, None);
    h.events();
    h.hub(json!({"op": "EXPIRING", "expires_at": 99_999_999}));
    assert_eq!(h.transmits(), vec![Transmit::FetchToken]);
    let policy = with_source().reconnect;
    let mut delays = Vec::new();
    for failure in 1..=8u32 {
        h.core.handle_token_error(h.now, "down");
        let failures = fetch_failures(&h.events());
        let delay = failures[0].expect("retried");
        let (floor, cap) = policy.delay_bounds(failure);
        assert!(
            (floor..=cap).contains(&delay),
            "failure {failure}: {delay} outside [{floor}, {cap}]"
        );
        // Nothing until the delay is over, then one more request.
        h.advance(delay - 1);
        assert!(h.transmits().is_empty());
        h.advance(1);
        assert_eq!(
            h.transmits(),
            vec![Transmit::FetchToken],
            "failure {failure}"
        );
        delays.push(delay);
    }
    assert!(
        delays.windows(2).any(|pair| pair[0] != pair[1]),
        "no jitter: {delays:?}"
    );
    assert!(delays[7] > delays[0], "no backoff: {delays:?}");
    // The token comes: re-authenticated in band, on the same connection.
    h.core.handle_token(h.now, Some("t-1".to_owned()));
    assert_eq!(h.sent()[0]["token"], "t-1");
    assert_eq!(h.core.state(), ConnectionState::Connected);
}

#[test]
fn the_retry_delays_come_from_the_seed() {
    let delays = |seed: u64| -> Vec<u64> {
        let mut core = ClientCore::new(ClientConfig {
            seed,
            ..with_source()
        });
        let mut now = 0;
        core.connect(now);
        core.handle_token(now, Some("t".to_owned()));
        core.handle_socket_open(now);
        core.handle_text(
            now,
            r#"{"op":"OK","v":1,"session":"s","server":"h","heartbeat_ms":0}"#,
        );
        core.handle_text(now, r#"{"op":"EXPIRING","expires_at":99999999}"#);
        let mut delays = Vec::new();
        for _ in 0..6 {
            core.handle_token_error(now, "down");
            while let Some(event) = core.poll_event() {
                if let ClientEvent::TokenFetchFailed {
                    retry_in_ms: Some(delay),
                    ..
                } = event
                {
                    delays.push(delay);
                    now += delay;
                }
            }
            core.handle_timeout(now);
        }
        delays
    };
    assert_eq!(delays(1), delays(1));
    assert_ne!(delays(1), delays(2));
}

#[test]
fn after_a_refused_token_the_source_is_asked_and_its_token_reconnects() {
    let mut h = Harness::new(with_source());
    h.core.connect(h.now);
    h.transmits();
    h.core.handle_token(h.now, Some("bad".to_owned()));
    h.core.handle_socket_open(h.now);
    h.sent();
    h.hub(json!({"op": "ERR", "code": "jwt_invalid", "msg": "bad signature"}));
    h.core.handle_socket_closed(h.now, Some(4001), "");
    assert_eq!(h.transmits(), vec![Transmit::FetchToken]);
    assert!(h.core.waiting_for_token());
    let events = h.events();
    assert!(events.contains(&ClientEvent::TokenRefreshNeeded { expires_at: None }));
    // The source fails once: asked again after a backoff, still waiting.
    h.core.handle_token_error(h.now, "down");
    let delay = fetch_failures(&h.events())[0].expect("retried");
    h.advance(delay);
    assert_eq!(h.transmits(), vec![Transmit::FetchToken]);
    assert!(h.core.waiting_for_token());
    // The new token reconnects at once, and is not fetched again for it.
    h.core.handle_token(h.now, Some("good".to_owned()));
    assert!(!h.core.waiting_for_token());
    assert_eq!(h.transmits(), vec![Transmit::Connect]);
    h.core.handle_socket_open(h.now);
    assert_eq!(h.sent()[0]["token"], "good");
}

#[test]
fn close_stops_asking() {
    let mut h = Harness::connected(ClientConfig {
        token: Some("t-0".to_owned()),
        ..with_source()
    });
    h.hub(json!({"op": "EXPIRING", "expires_at": 99_999_999}));
    assert_eq!(h.transmits(), vec![Transmit::FetchToken]);
    h.core.handle_token_error(h.now, "down");
    assert!(fetch_failures(&h.events())[0].is_some());
    h.core.close(h.now);
    h.transmits();
    h.events();
    assert_eq!(h.core.poll_timeout(), None);
    assert!(!h.core.waiting_for_token());
    // A late failure after close schedules nothing.
    h.core.handle_token_error(h.now, "down");
    assert_eq!(fetch_failures(&h.events()), vec![None]);
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn without_a_source_nothing_is_fetched() {
    let mut h = Harness::connected(config());
    h.hub(json!({"op": "EXPIRING", "expires_at": 99_999_999}));
    assert!(h.transmits().is_empty());
    assert_eq!(
        h.events(),
        vec![ClientEvent::TokenRefreshNeeded {
            expires_at: Some(99_999_999)
        }]
    );
}
