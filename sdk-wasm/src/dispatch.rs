//! What each [`ClientEvent`] becomes in JavaScript: a settled promise, a
//! handler call, or a state/error listener call.

use std::rc::Rc;

use promhub_core::client::{
    ClientEvent, ConnectionState, DeliveryTag, Gap, StateReason, Unmatched,
};
use promhub_core::frames::{Event, Unread, Welcome};
use promhub_core::quoted::Quoted;
use wasm_bindgen::JsValue;

use crate::bindings::{
    PENDING_PUBLISH, PENDING_SUBSCRIBE, PENDING_UNSUBSCRIBE, make_error, make_pub_ack,
    make_state_event, unix_ms,
};
use crate::driver::Shared;
use crate::errors::{error, request_error};

/// The object `onState` listeners receive.
#[derive(Debug, Default)]
struct StateEvent<'a> {
    state: &'a str,
    reason: String,
    code: Option<u16>,
    /// Reconnect attempt, its delay, and the Unix ms it starts at.
    reconnect: Option<(u32, u64, u64)>,
    session: Option<String>,
    server: Option<String>,
    expires_at: Option<u64>,
}

impl<'a> StateEvent<'a> {
    fn new(state: &'a str, reason: String) -> Self {
        StateEvent {
            state,
            reason,
            ..StateEvent::default()
        }
    }

    fn into_js(self) -> JsValue {
        let reconnect = self.reconnect;
        make_state_event(
            self.state,
            &self.reason,
            self.code,
            reconnect.map(|(attempt, _, _)| attempt),
            reconnect.map(|(_, delay, _)| delay as f64),
            reconnect.map(|(_, _, at)| at as f64),
            self.session,
            self.server,
            self.expires_at.map(|ms| ms as f64),
        )
    }
}

pub(crate) fn state_name(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::Disconnected => "disconnected",
        ConnectionState::Connecting => "connecting",
        ConnectionState::Authenticating => "authenticating",
        ConnectionState::Connected => "connected",
        ConnectionState::Closed => "closed",
    }
}

impl Shared {
    pub(crate) fn dispatch(self: &Rc<Self>, event: ClientEvent<Event<Unread>>) {
        match event {
            ClientEvent::Delivery {
                sub,
                delivery: _,
                tag,
                gap,
            } => self.deliver(sub.as_u64(), tag, gap),
            // Handed to the handler with the next event (`ctx.gap`).
            ClientEvent::Gap { .. } => {}
            ClientEvent::StateChanged { state, reason } => self.state_changed(state, &reason),
            ClientEvent::Connected(welcome) => self.connected(welcome),
            ClientEvent::Reconnecting { attempt, delay_ms } => {
                let reason = self.driver.borrow().last_close_reason.clone();
                let mut event = StateEvent::new("disconnected", reason);
                event.reconnect = Some((attempt, delay_ms, unix_ms().saturating_add(delay_ms)));
                self.runtime.emit_state(&event.into_js());
            }
            ClientEvent::PublishAcked { request, ack } => {
                let ack = make_pub_ack(&ack.rid, &ack.id, ack.seq as f64, ack.duplicate);
                self.runtime
                    .settle(PENDING_PUBLISH, request.as_u64() as f64, true, &ack);
            }
            ClientEvent::PublishFailed { request, error } => {
                let failure = request_error(&error);
                self.runtime
                    .settle(PENDING_PUBLISH, request.as_u64() as f64, false, &failure);
            }
            ClientEvent::Subscribed { sub, .. } => {
                self.driver.borrow_mut().unconfirmed.retain(|s| *s != sub);
                let id = sub.as_u64() as f64;
                let subscription = self.runtime.subscription(id);
                self.runtime
                    .settle(PENDING_SUBSCRIBE, id, true, &subscription);
            }
            ClientEvent::SubscribeFailed { sub, error } => {
                let id = sub.as_u64() as f64;
                self.driver.borrow_mut().unconfirmed.retain(|s| *s != sub);
                let failure = request_error(&error);
                if !self.runtime.settle(PENDING_SUBSCRIBE, id, false, &failure) {
                    // A resubscribe after a reconnect was refused: the
                    // application holds a subscription that is gone.
                    self.runtime.subscription_lost(id, &failure);
                }
                self.runtime.unregister(id);
            }
            ClientEvent::Unsubscribed { sub } => {
                let id = sub.as_u64() as f64;
                self.runtime.unregister(id);
                self.runtime
                    .settle(PENDING_UNSUBSCRIBE, id, true, &JsValue::UNDEFINED);
            }
            ClientEvent::UnsubscribeFailed { sub, error } => {
                let id = sub.as_u64() as f64;
                self.runtime.unregister(id);
                let failure = request_error(&error);
                if !self
                    .runtime
                    .settle(PENDING_UNSUBSCRIBE, id, false, &failure)
                {
                    self.runtime.emit_error(&failure, false);
                }
            }
            ClientEvent::TokenRefreshNeeded { .. } => self.token_needed(),
            ClientEvent::TokenFetchFailed { message, .. } => {
                let failure = error("token_failed", &format!("getToken failed: {message}"));
                self.runtime.emit_error(&failure, false);
            }
            ClientEvent::TokenRefreshed { expires_at } => {
                let mut event = StateEvent::new("connected", "token refreshed".to_owned());
                event.expires_at = expires_at;
                self.runtime.emit_state(&event.into_js());
            }
            // `PING` is not exposed; heartbeats stay inside the machine.
            ClientEvent::Pong { .. } | ClientEvent::PingFailed { .. } => {}
            ClientEvent::ServerError(frame) => {
                let failure = make_error(
                    frame.code.as_str(),
                    &format!("hub error: {}: {}", frame.code, frame.msg),
                    frame.retry_after_ms.map(|ms| ms as f64),
                );
                self.runtime.emit_error(&failure, false);
            }
            ClientEvent::ProtocolError(message) => {
                self.runtime
                    .emit_error(&error("protocol_error", &message), false);
            }
            ClientEvent::Unmatched(unmatched) => {
                // Usually a late answer after a timeout: reported, but not
                // worth a console line when nobody listens.
                let message = match unmatched {
                    Unmatched::Answer { op, rid } => match rid {
                        Some(rid) => {
                            format!("{op} for no pending request (rid {})", Quoted(&rid))
                        }
                        None => format!("{op} for no pending request (no rid)"),
                    },
                    Unmatched::Event {
                        topic, event_id, ..
                    } => format!("EVENT {event_id} for no subscription ({topic})"),
                };
                self.runtime.emit_error(&error("unmatched", &message), true);
            }
        }
    }

    /// The hot path: one `EVENT` to its handler. The handler gets the
    /// event as the engine's `JSON.parse` made it from the frame's text (the
    /// value the frame was decoded from: nothing parsed twice, nothing
    /// re-encoded in wasm): the payload is the publisher's JSON.
    fn deliver(&self, id: u64, tag: Option<DeliveryTag>, gap: Option<Gap>) {
        // Tags and seqs stay far below 2^53: exact as JS numbers.
        let tag = tag.map_or(0.0, |tag| tag.as_u64() as f64);
        let gap_from = gap.map(|gap| gap.from as f64);
        let gap_to = gap.map(|gap| gap.to as f64);
        // Cloned out (a reference, not the text): no borrow is held while
        // the handler runs.
        let frame = self.current_frame.borrow().clone();
        if let Some(frame) = frame {
            self.runtime
                .deliver_frame(id as f64, &frame, tag, gap_from, gap_to);
            return;
        }
        // Every delivery comes out of `handle_frame` for the frame being
        // handled (one EVENT frame, at most one delivery), so this cannot
        // happen; reported rather than re-encoding the event in wasm.
        let failure = error("internal", "a delivery outside its frame");
        self.runtime.emit_error(&failure, false);
    }

    fn state_changed(self: &Rc<Self>, state: ConnectionState, reason: &StateReason) {
        if state == ConnectionState::Connected {
            // Reported with the hub's welcome, which follows at once.
            return;
        }
        let text = reason.to_string();
        if matches!(
            state,
            ConnectionState::Closed | ConnectionState::Disconnected
        ) {
            self.driver.borrow_mut().last_close_reason = text.clone();
        }
        let mut event = StateEvent::new(state_name(state), text);
        event.code = reason.close_code();
        self.runtime.emit_state(&event.into_js());
    }

    fn connected(&self, welcome: Welcome) {
        let mut event = StateEvent::new("connected", "authenticated".to_owned());
        event.session = Some(welcome.session);
        event.server = Some(welcome.server);
        event.expires_at = welcome.expires_at;
        self.runtime.emit_state(&event.into_js());
        self.runtime.settle_connected(true, &JsValue::UNDEFINED);
    }

    fn token_needed(&self) {
        if self.driver.borrow().get_token.is_some() {
            // The machine asks `getToken` itself.
            return;
        }
        let failure = error(
            "token_refresh_needed",
            "the hub needs a new token: pass getToken to the client, or call setToken",
        );
        self.runtime.emit_error(&failure, false);
    }
}
