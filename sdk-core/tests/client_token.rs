//! Token expiry and in-band re-authentication.

mod client_support;

use client_support::*;
use promhub_core::client::{ClientEvent, ConnectionState, StateReason, Transmit, close_code};
use promhub_core::frames::ErrorCode;
use serde_json::json;

const UNIX_NOW: u64 = 1_764_300_000_000;

fn refresh_requests(events: &[ClientEvent]) -> Vec<Option<u64>> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::TokenRefreshNeeded { expires_at } => Some(*expires_at),
            _ => None,
        })
        .collect()
}

#[test]
fn refresh_is_requested_margin_before_expiry_on_the_driver_clock() {
    let mut h = Harness::new(config());
    // The driver's clock is not Unix time: tell the machine the offset.
    h.core.set_unix_time(h.now, UNIX_NOW);
    h.core.connect(h.now);
    h.open_and_auth();
    let expires_at = UNIX_NOW + 120_000;
    let start = h.now;
    h.welcome(HEARTBEAT_MS * 100, Some(expires_at));
    h.events();

    // Default margin 30 s: due 90 s from now on the driver clock.
    h.advance_to(start + 89_999);
    assert!(refresh_requests(&h.events()).is_empty());
    h.advance_to(start + 90_000);
    assert_eq!(refresh_requests(&h.events()), vec![Some(expires_at)]);
    // Once.
    h.advance_to(start + 200_000);
    assert!(refresh_requests(&h.events()).is_empty());
}

#[test]
fn without_a_unix_time_now_is_taken_as_unix_ms() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS * 100, Some(h.now + 40_000));
    h.events();
    let due = h.now + 10_000;
    h.advance_to(due - 1);
    assert!(refresh_requests(&h.events()).is_empty());
    h.advance_to(due);
    assert_eq!(refresh_requests(&h.events()).len(), 1);
}

#[test]
fn an_expiry_already_inside_the_margin_asks_at_once() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS, Some(h.now + 5_000));
    h.events();
    assert_eq!(h.core.poll_timeout(), Some(0));
    h.advance(0);
    assert_eq!(refresh_requests(&h.events()), vec![Some(h.now + 5_000)]);
}

#[test]
fn expiring_frame_asks_for_a_token_immediately() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    h.open_and_auth();
    h.welcome(HEARTBEAT_MS * 100, Some(h.now + 600_000));
    h.events();
    h.hub(json!({"op": "EXPIRING", "expires_at": h.now + 25_000}));
    assert_eq!(refresh_requests(&h.events()), vec![Some(h.now + 25_000)]);
    // The hub's warning replaces the local timer: no second request.
    h.advance(1_000_000);
    assert!(refresh_requests(&h.events()).is_empty());
}

#[test]
fn set_token_while_connected_re_authenticates_in_band() {
    let mut h = Harness::connected(config());
    h.core.set_token(h.now, Some("token-2".to_owned()));
    assert_eq!(
        h.sent(),
        vec![json!({"op": "AUTH", "token": "token-2", "v": 1, "client": "promhub-test/1.0"})]
    );
    assert_eq!(h.core.state(), ConnectionState::Connected);

    let expires_at = h.now + 3_600_000;
    // The refresh's OK also carries the heartbeat to use from now on.
    h.welcome(10_000_000, Some(expires_at));
    // A refresh is not a new connection: no state change, no Connected.
    assert_eq!(
        h.events(),
        vec![ClientEvent::TokenRefreshed {
            expires_at: Some(expires_at)
        }]
    );
    assert!(h.transmits().is_empty());
    // The new expiry is armed.
    h.advance_to(expires_at - 30_000);
    assert_eq!(refresh_requests(&h.events()), vec![Some(expires_at)]);
}

#[test]
fn refused_refresh_then_4001_close_is_terminal() {
    let mut h = Harness::connected(config());
    h.core.set_token(h.now, Some("revoked".to_owned()));
    h.sent();
    h.hub(json!({"op": "ERR", "code": "jwt_invalid", "msg": "revoked"}));
    // Not a stray server error: the refusal of the refresh.
    assert!(h.events().is_empty());
    h.core.handle_socket_closed(h.now, Some(4001), "");
    assert_eq!(h.core.state(), ConnectionState::Closed);
    let events = h.events();
    assert_eq!(
        last_reason(&events),
        Some(StateReason::AuthRefused {
            code: ErrorCode::JwtInvalid,
            msg: "revoked".to_owned(),
            close_code: Some(4001)
        })
    );
    assert_eq!(refresh_requests(&events), vec![None]);
    assert!(reconnects(&events).is_empty());
}

#[test]
fn unanswered_refresh_closes_and_reconnects_with_the_new_token() {
    let mut h = Harness::connected(config());
    h.core.set_token(h.now, Some("token-2".to_owned()));
    h.sent();
    h.advance(10_000);
    assert!(h.transmits().contains(&Transmit::Close {
        code: close_code::CLIENT_TIMEOUT,
        reason: "authentication timeout".to_owned()
    }));
    let events = h.events();
    assert_eq!(last_reason(&events), Some(StateReason::AuthTimeout));
    h.advance(reconnects(&events)[0].1);
    assert_eq!(h.open_and_auth()["token"], "token-2");
}

#[test]
fn set_token_during_the_handshake_refreshes_right_after_ok() {
    let mut h = Harness::new(config());
    h.core.connect(h.now);
    assert_eq!(h.open_and_auth()["token"], "token-1");
    h.core.set_token(h.now, Some("token-2".to_owned()));
    // Not before OK: AUTH must stay the first and only frame until then.
    assert!(h.transmits().is_empty());
    h.welcome(HEARTBEAT_MS, None);
    let sent = h.sent();
    assert_eq!(ops(&sent), vec!["AUTH"]);
    assert_eq!(sent[0]["token"], "token-2");
    h.events();
    h.welcome(HEARTBEAT_MS, None);
    assert_eq!(
        h.events(),
        vec![ClientEvent::TokenRefreshed { expires_at: None }]
    );
}

#[test]
fn set_token_while_disconnected_is_used_by_the_next_auth() {
    let mut h = Harness::new(config());
    h.core.set_token(h.now, Some("token-9".to_owned()));
    assert!(h.transmits().is_empty());
    h.core.connect(h.now);
    assert_eq!(h.open_and_auth()["token"], "token-9");
    h.welcome(HEARTBEAT_MS, None);
    h.core.set_token(h.now, None);
    // Back to anonymous on the open connection.
    assert_eq!(
        h.sent(),
        vec![json!({"op": "AUTH", "v": 1, "client": "promhub-test/1.0"})]
    );
}

#[test]
fn a_second_unix_time_moves_the_pending_refresh() {
    let mut h = Harness::new(config());
    h.core.set_unix_time(h.now, UNIX_NOW);
    h.core.connect(h.now);
    h.open_and_auth();
    let start = h.now;
    h.welcome(HEARTBEAT_MS * 100, Some(UNIX_NOW + 120_000));
    // The wall clock jumps 60 s ahead (NTP): expiry is 60 s closer.
    h.core.set_unix_time(h.now, UNIX_NOW + 60_000);
    h.events();
    h.advance_to(start + 29_999);
    assert!(refresh_requests(&h.events()).is_empty());
    h.advance_to(start + 30_000);
    assert_eq!(refresh_requests(&h.events()).len(), 1);
}

#[test]
fn ok_without_a_pending_auth_is_a_protocol_error() {
    let mut h = Harness::connected(config());
    h.welcome(HEARTBEAT_MS, None);
    let events = h.events();
    assert!(
        matches!(&events[..], [ClientEvent::ProtocolError(msg)] if msg.contains("OK")),
        "{events:?}"
    );
    assert_eq!(h.core.state(), ConnectionState::Connected);
}

/// Refuses the `AUTH` of the connection being opened: `ERR` then 4001.
fn refuse_auth(h: &mut Harness) {
    h.open_and_auth();
    h.hub(json!({"op": "ERR", "code": "jwt_invalid", "msg": "bad signature"}));
    h.core
        .handle_socket_closed(h.now, Some(4001), "authentication failed");
    assert_eq!(h.core.state(), ConnectionState::Closed);
}

#[test]
fn tokens_refused_in_a_row_reconnect_after_a_growing_delay() {
    let reconnect = promhub_core::client::ReconnectConfig {
        min_delay_ms: 1_000,
        max_delay_ms: 8_000,
        ..Default::default()
    };
    let mut h = Harness::new(config_with_reconnect(reconnect));
    h.core.connect(h.now);
    refuse_auth(&mut h);
    assert_eq!(refresh_requests(&h.events()), vec![None]);

    // First refusal: the new token is tried at once.
    h.core.set_token(h.now, Some("token-2".to_owned()));
    assert_eq!(h.core.state(), ConnectionState::Connecting);
    h.events();
    refuse_auth(&mut h);
    assert_eq!(refresh_requests(&h.events()), vec![None]);

    // Refused again: the next token waits a reconnect delay, so a token
    // source that keeps returning a bad token cannot hammer the hub.
    for (attempt, (floor, cap)) in [(1u32, (500u64, 1_000u64)), (2, (500, 2_000))] {
        h.core
            .set_token(h.now, Some(format!("token-bad-{attempt}")));
        assert!(
            h.transmits().is_empty(),
            "attempt {attempt}: no Connect yet"
        );
        let events = h.events();
        assert_eq!(
            last_reason(&events),
            Some(StateReason::TokenUpdated),
            "attempt {attempt}"
        );
        assert_eq!(h.core.state(), ConnectionState::Disconnected);
        let delays = reconnects(&events);
        assert_eq!(delays.len(), 1, "attempt {attempt}: {events:?}");
        let (reported_attempt, delay) = delays[0];
        assert_eq!(reported_attempt, attempt);
        assert!(
            (floor..=cap).contains(&delay),
            "attempt {attempt}: delay {delay} outside [{floor}, {cap}]"
        );
        h.advance(delay - 1);
        assert!(
            h.transmits().is_empty(),
            "attempt {attempt}: connected early"
        );
        h.advance(1);
        assert_eq!(h.core.state(), ConnectionState::Connecting);
        h.events();
        refuse_auth(&mut h);
        assert_eq!(refresh_requests(&h.events()), vec![None]);
    }

    // A token the hub accepts resets the count: the next refusal is again
    // followed by an immediate reconnect.
    h.core.set_token(h.now, Some("token-good".to_owned()));
    let delays = reconnects(&h.events());
    h.advance(delays[0].1);
    let auth = h.open_and_auth();
    assert_eq!(auth["token"], "token-good");
    h.welcome(HEARTBEAT_MS, None);
    assert_eq!(h.core.state(), ConnectionState::Connected);
    h.core
        .handle_socket_closed(h.now, Some(4001), "token expired");
    h.events();
    h.core.set_token(h.now, Some("token-next".to_owned()));
    assert_eq!(h.core.state(), ConnectionState::Connecting);
}
