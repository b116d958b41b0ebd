//! A tiny driver for `ClientCore` on virtual time: it feeds inputs, fires
//! timers in deadline order and collects what the machine sends and emits.
//! No sockets, no sleeps: every test is deterministic.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use promhub_core::client::{
    ClientConfig, ClientCore, ClientEvent, ConnectionState, ReconnectConfig, RequestError,
    RequestId, StateReason, SubscriptionId, Transmit,
};
use serde_json::{Value, json};

/// Most timer firings one `advance` may trigger; a machine that keeps
/// re-arming an already-due timer would otherwise hang the test.
const MAX_FIRINGS: usize = 100_000;

pub const HEARTBEAT_MS: u64 = 15_000;

/// Defaults with a fixed seed and a recognisable client name.
pub fn config() -> ClientConfig {
    ClientConfig {
        seed: 7,
        token: Some("token-1".to_owned()),
        ..ClientConfig::new("promhub-test/1.0")
    }
}

/// `config()` with reconnect bounds that are quick to read in assertions.
pub fn config_with_reconnect(reconnect: ReconnectConfig) -> ClientConfig {
    ClientConfig {
        reconnect,
        ..config()
    }
}

#[derive(Debug)]
pub struct Harness {
    pub core: ClientCore,
    pub now: u64,
}

impl Harness {
    pub fn new(config: ClientConfig) -> Self {
        Harness {
            core: ClientCore::new(config),
            now: 1_000,
        }
    }

    /// A harness already through the handshake, with outputs drained.
    pub fn connected(config: ClientConfig) -> Self {
        let mut h = Harness::new(config);
        h.core.connect(h.now);
        h.open_and_auth();
        h.welcome(HEARTBEAT_MS, None);
        h.transmits();
        h.events();
        h
    }

    /// Everything transmitted since the last call.
    pub fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.core.poll_transmit()).collect()
    }

    /// Everything transmitted since the last call, which must all be text
    /// frames, as JSON.
    pub fn sent(&mut self) -> Vec<Value> {
        self.transmits()
            .into_iter()
            .map(|transmit| match transmit {
                Transmit::Text(text) => serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("client sent invalid JSON {text:?}: {e}")),
                other => panic!("expected only text frames, got {other:?}"),
            })
            .collect()
    }

    /// Everything emitted since the last call.
    pub fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }

    /// A frame from the hub.
    pub fn hub(&mut self, frame: Value) {
        self.core.handle_text(self.now, &frame.to_string());
    }

    pub fn hub_text(&mut self, text: &str) {
        self.core.handle_text(self.now, text);
    }

    /// Executes the pending `Connect`, reports the socket open and returns
    /// the `AUTH` frame sent on it.
    pub fn open_and_auth(&mut self) -> Value {
        let transmits = self.transmits();
        assert_eq!(
            transmits.last(),
            Some(&Transmit::Connect),
            "expected a Connect, got {transmits:?}"
        );
        self.core.handle_socket_open(self.now);
        let sent = self.sent();
        assert_eq!(sent.len(), 1, "expected exactly AUTH, got {sent:?}");
        assert_eq!(sent[0]["op"], "AUTH");
        sent[0].clone()
    }

    pub fn welcome(&mut self, heartbeat_ms: u64, expires_at: Option<u64>) {
        let mut ok = json!({
            "op": "OK", "v": 1, "session": "s-1", "server": "promhub/test",
            "heartbeat_ms": heartbeat_ms,
        });
        if let Some(expires_at) = expires_at {
            ok["expires_at"] = json!(expires_at);
        }
        self.hub(ok);
    }

    /// Moves virtual time to `to`, firing every timer on the way at its own
    /// deadline, like a driver sleeping until `poll_timeout`.
    pub fn advance_to(&mut self, to: u64) {
        for _ in 0..MAX_FIRINGS {
            match self.core.poll_timeout() {
                Some(deadline) if deadline <= to => {
                    self.now = self.now.max(deadline);
                    self.core.handle_timeout(self.now);
                    assert!(
                        self.core.poll_timeout().is_none_or(|next| next > self.now),
                        "a timer is still due after handle_timeout({})",
                        self.now
                    );
                }
                _ => {
                    self.now = self.now.max(to);
                    return;
                }
            }
        }
        panic!("timers kept firing before {to}");
    }

    pub fn advance(&mut self, ms: u64) {
        self.advance_to(self.now + ms);
    }
}

/// The states of every `StateChanged` in `events`, in order.
pub fn states(events: &[ClientEvent]) -> Vec<ConnectionState> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::StateChanged { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

/// The last `StateChanged` reason in `events`.
pub fn last_reason(events: &[ClientEvent]) -> Option<StateReason> {
    events.iter().rev().find_map(|event| match event {
        ClientEvent::StateChanged { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

/// `(attempt, delay_ms)` of every `Reconnecting` in `events`.
pub fn reconnects(events: &[ClientEvent]) -> Vec<(u32, u64)> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::Reconnecting { attempt, delay_ms } => Some((*attempt, *delay_ms)),
            _ => None,
        })
        .collect()
}

pub fn publish_failures(events: &[ClientEvent]) -> Vec<(RequestId, RequestError)> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::PublishFailed { request, error } => Some((*request, error.clone())),
            _ => None,
        })
        .collect()
}

pub fn subscribed(events: &[ClientEvent]) -> Vec<SubscriptionId> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::Subscribed { sub, .. } => Some(*sub),
            _ => None,
        })
        .collect()
}

/// The rid of a frame the client sent.
pub fn rid(frame: &Value) -> String {
    frame["rid"]
        .as_str()
        .unwrap_or_else(|| panic!("frame has no string rid: {frame}"))
        .to_owned()
}

pub fn ops(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|frame| frame["op"].as_str().unwrap_or("<no op>"))
        .collect()
}
