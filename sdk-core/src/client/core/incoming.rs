//! Frames from the hub: the handshake's `OK`, and every frame of an
//! authenticated connection routed to what waits for it.

use super::calls::{is_ping, is_publish, is_subscribe, is_unsubscribe};
use super::{ClientCore, close_code};
use crate::client::codec::Codec;
use crate::client::events::{ClientEvent, ConnectionState, RequestId, StateReason, Unmatched};
use crate::client::requests::Pending;
use crate::frames::{ClientFrame, Event, HubFrame, PROTOCOL_VERSION, Welcome};

impl<C: Codec> ClientCore<C> {
    pub(super) fn handle_frame_before_ok(
        &mut self,
        now: u64,
        frame: HubFrame<Event<C::EventPayload>>,
    ) {
        match frame {
            HubFrame::Ok(welcome) => self.handle_first_ok(now, welcome),
            // No request carries a rid before `OK`: any ERR answers AUTH.
            // The hub closes the socket next; the close reports it.
            HubFrame::Err(err) => {
                if self.auth.refusal.is_none() {
                    self.auth.refusal = Some(err);
                }
            }
            HubFrame::Ping(ping) => self.send_frame(now, &ClientFrame::Pong(ping)),
            other => self.emit(ClientEvent::ProtocolError(format!(
                "{} before OK; ignored",
                other.op()
            ))),
        }
    }

    pub(super) fn handle_first_ok(&mut self, now: u64, welcome: Welcome) {
        if welcome.v != PROTOCOL_VERSION {
            self.reject_version(welcome.v);
            return;
        }
        self.auth.deadline = None;
        self.reconnect.attempt = 0;
        self.token_refusals = 0;
        self.heartbeat.interval_ms = self
            .config
            .heartbeat
            .interval_ms
            .unwrap_or(welcome.heartbeat_ms);
        self.heartbeat.last_sent = now;
        self.arm_token_timer(welcome.expires_at);
        self.set_state(ConnectionState::Connected, StateReason::Authenticated);
        self.emit(ClientEvent::Connected(welcome));
        for sub in self.subs.ids() {
            self.send_subscribe(now, sub);
        }
        self.flush_queue(now);
        if std::mem::take(&mut self.auth.refresh_after_ok) {
            self.send_token_refresh(now);
        }
    }

    pub(super) fn reject_version(&mut self, version: u32) {
        let msg = format!(
            "hub answered with protocol version {version}; this client speaks {PROTOCOL_VERSION}"
        );
        self.emit(ClientEvent::ProtocolError(msg.clone()));
        self.abandon_socket(
            close_code::PROTOCOL_VIOLATION,
            "unsupported protocol version",
        );
        self.enter_closed(StateReason::ProtocolViolation(msg));
    }

    pub(super) fn handle_connected_frame(
        &mut self,
        now: u64,
        frame: HubFrame<Event<C::EventPayload>>,
    ) {
        match frame {
            HubFrame::Ok(welcome) => {
                if self.auth.refreshes_in_flight == 0 {
                    self.emit(ClientEvent::ProtocolError(
                        "OK without a pending AUTH; ignored".to_owned(),
                    ));
                } else if welcome.v != PROTOCOL_VERSION {
                    self.reject_version(welcome.v);
                } else {
                    self.auth.refreshes_in_flight -= 1;
                    if self.auth.refreshes_in_flight == 0 {
                        self.auth.deadline = None;
                    }
                    if self.config.heartbeat.interval_ms.is_none() {
                        self.heartbeat.interval_ms = welcome.heartbeat_ms;
                    }
                    self.arm_token_timer(welcome.expires_at);
                    self.emit(ClientEvent::TokenRefreshed {
                        expires_at: welcome.expires_at,
                    });
                }
            }
            HubFrame::Err(err) => self.handle_err(now, err),
            HubFrame::Puback(ack) => {
                let rid = Self::own_rid(Some(&ack.rid));
                match rid.and_then(|rid| self.take_sent(rid, is_publish)) {
                    Some((rid, _)) => self.emit(ClientEvent::PublishAcked {
                        request: RequestId(rid),
                        ack,
                    }),
                    None => self.emit(ClientEvent::Unmatched(Unmatched::Answer {
                        op: "PUBACK",
                        rid: Some(ack.rid),
                    })),
                }
            }
            HubFrame::Suback(ack) => {
                let rid = Self::own_rid(ack.rid.as_deref());
                match rid.and_then(|rid| self.take_sent(rid, is_subscribe)) {
                    Some((_, Pending::Subscribe { sub })) => {
                        let mut gap = None;
                        if let Some(entry) = self.subs.get_mut(sub) {
                            entry.pending_rid = None;
                            if entry.group.is_none() {
                                gap = entry.resume.confirmed(ack.from_seq);
                            }
                        }
                        self.emit(ClientEvent::Subscribed { sub, ack });
                        if let Some(gap) = gap {
                            self.emit(ClientEvent::Gap { sub, gap });
                        }
                    }
                    Some(_) => {}
                    None => self.emit(ClientEvent::Unmatched(Unmatched::Answer {
                        op: "SUBACK",
                        rid: ack.rid,
                    })),
                }
            }
            HubFrame::Unsuback(ack) => {
                let rid = Self::own_rid(ack.rid.as_deref());
                match rid.and_then(|rid| self.take_sent(rid, is_unsubscribe)) {
                    Some((_, Pending::Unsubscribe { sub })) => {
                        self.emit(ClientEvent::Unsubscribed { sub });
                    }
                    _ => self.emit(ClientEvent::Unmatched(Unmatched::Answer {
                        op: "UNSUBACK",
                        rid: ack.rid,
                    })),
                }
            }
            HubFrame::Event(delivery) => self.route_event(delivery),
            HubFrame::Ping(ping) => self.send_frame(now, &ClientFrame::Pong(ping)),
            HubFrame::Pong(pong) => {
                let rid = Self::own_rid(pong.rid.as_deref());
                if rid.is_some() && rid == self.heartbeat.ping_rid {
                    self.heartbeat.ping_rid = None;
                    return;
                }
                match rid.and_then(|rid| self.take_sent(rid, is_ping)) {
                    Some((rid, _)) => self.emit(ClientEvent::Pong {
                        request: RequestId(rid),
                    }),
                    None => self.emit(ClientEvent::Unmatched(Unmatched::Answer {
                        op: "PONG",
                        rid: pong.rid,
                    })),
                }
            }
            HubFrame::Expiring(expiring) => {
                self.token_timer.refresh_at = None;
                self.need_token(Some(expiring.expires_at));
            }
        }
    }
}
