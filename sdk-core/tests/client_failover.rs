//! Several hubs (`ClientConfig::endpoints`): which hub each connection
//! attempt goes to, with the ordinary reconnect backoff, and subscriptions
//! resumed on the hub the client fails over to. Deterministic: virtual
//! time, no sockets.

mod client_support;

use client_support::*;
use promhub_core::client::{ClientConfig, ConnectionState, Transmit};
use serde_json::json;

fn config_with(endpoints: usize, seed: u64) -> ClientConfig {
    ClientConfig {
        endpoints,
        seed,
        ..config()
    }
}

/// Lets the reconnect timer fire and returns the endpoint of the attempt.
fn next_attempt(h: &mut Harness) -> usize {
    let deadline = h.core.poll_timeout().expect("a reconnect timer");
    h.advance_to(deadline);
    assert_eq!(h.transmits(), vec![Transmit::Connect]);
    h.core.endpoint()
}

#[test]
fn a_lost_connection_fails_over_to_another_hub_and_resumes_its_subscriptions() {
    let mut h = Harness::new(config_with(3, 11));
    h.core.connect(h.now);
    let first = h.core.endpoint();
    assert!(first < 3);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    h.core
        .subscribe(h.now, "orders.*".parse().unwrap(), None, Default::default())
        .expect("subscribe");
    let subscribe = h.sent();
    assert_eq!(subscribe[0]["op"], "SUBSCRIBE");
    h.hub(json!({"op": "SUBACK", "rid": subscribe[0]["rid"], "topic": "orders.*", "from_seq": 1}));
    h.hub(json!({"op": "EVENT", "topic": "orders.*",
        "event": {"id": "e5", "seq": 5, "topic": "orders.created", "ts": 1, "payload": {}},
        "ctx": {"attempt": 1}}));
    h.events();

    // The hub goes away: the next attempt goes to another one.
    h.core.handle_socket_error(h.now, "connection reset");
    let deadline = h.core.poll_timeout().expect("a reconnect timer");
    h.advance_to(deadline);
    let second = h.core.endpoint();
    assert_ne!(second, first);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, None);
    let resubscribe = h.sent();
    assert_eq!(resubscribe.len(), 1, "{resubscribe:?}");
    assert_eq!(resubscribe[0]["op"], "SUBSCRIBE");
    assert_eq!(resubscribe[0]["topic"], "orders.*");
    // Live resume on the new hub: from the seq after the last delivered.
    assert_eq!(resubscribe[0]["opts"]["from"], 6, "{resubscribe:?}");
    assert_eq!(h.core.state(), ConnectionState::Connected);
}

#[test]
fn failed_attempts_go_round_every_hub_with_the_usual_backoff() {
    let mut h = Harness::new(config_with(3, 5));
    h.core.connect(h.now);
    h.transmits();
    let mut visits = vec![h.core.endpoint()];
    let mut delays = Vec::new();
    for _ in 0..8 {
        h.core.handle_socket_error(h.now, "refused");
        let (attempt, delay) = *reconnects(&h.events()).last().expect("a reconnect");
        let (floor, cap) = config().reconnect.delay_bounds(attempt);
        assert!((floor..=cap).contains(&delay), "attempt {attempt}: {delay}");
        delays.push(delay);
        visits.push(next_attempt(&mut h));
    }
    for round in visits.chunks(3) {
        let mut sorted = round.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "{visits:?}");
    }
    assert!(visits.windows(2).all(|w| w[0] != w[1]), "{visits:?}");
    // The backoff grows with the attempts, whichever hub they go to.
    assert!(delays.last() > delays.first(), "{delays:?}");
}

#[test]
fn one_hub_is_the_only_endpoint() {
    let mut h = Harness::new(config_with(1, 3));
    h.core.connect(h.now);
    h.transmits();
    for _ in 0..4 {
        assert_eq!(h.core.endpoint(), 0);
        h.core.handle_socket_error(h.now, "refused");
        h.events();
        next_attempt(&mut h);
    }
    assert_eq!(h.core.endpoint(), 0);
    // Zero is sanitized to one.
    let h = Harness::new(config_with(0, 3));
    assert_eq!(h.core.endpoint(), 0);
}
