//! The application's requests — publish, subscribe, unsubscribe, ping —
//! and how their answers, refusals, timeouts and connection losses come
//! back: the outbound queue, `rate_limited` retries, and what a reconnect
//! re-sends.

use super::ClientCore;
use crate::client::codec::Codec;
use crate::client::config::QueuePolicy;
use crate::client::events::{
    ClientError, ClientEvent, ConnectionState, RequestError, RequestId, SubscriptionId,
};
use crate::client::requests::Pending;
use crate::client::subscriptions::Subscription;
use crate::frames::{
    ClientFrame, ErrorCode, ErrorFrame, Group, Ping, Publish, PublishOpts, SubscribeOpts,
    Unsubscribe,
};
use crate::topic::{Pattern, Topic};

impl<C: Codec> ClientCore<C> {
    /// Publishes an event; the answer arrives as
    /// [`ClientEvent::PublishAcked`] or [`ClientEvent::PublishFailed`] with
    /// the returned id, within `request_timeout_ms` of this call.
    ///
    /// Not connected: queued with [`QueuePolicy::Wait`] and sent right after
    /// the next `OK`; refused with [`QueuePolicy::FailFast`]. If the
    /// connection drops before `PUBACK`, a publish with `opts.id` is sent
    /// again after the reconnect (the hub de-duplicates by id); one without
    /// fails with [`RequestError::Disconnected`]. Refused with
    /// `rate_limited` and a `retry_after_ms` that ends before the request
    /// timeout: sent again after that wait (no event in between); otherwise
    /// the refusal is reported.
    pub fn publish(
        &mut self,
        now: u64,
        topic: Topic,
        payload: C::Payload,
        opts: PublishOpts,
    ) -> Result<RequestId, ClientError> {
        let connected = match self.state {
            ConnectionState::Closed => return Err(ClientError::Closed),
            ConnectionState::Connected => true,
            _ => false,
        };
        if !connected {
            let queue = self.config.outbound_queue;
            if queue.policy == QueuePolicy::FailFast {
                return Err(ClientError::NotConnected);
            }
            if self.queue.len() >= queue.capacity {
                return Err(ClientError::QueueFull {
                    capacity: queue.capacity,
                });
            }
        }
        let rid = self.next_rid();
        let has_event_id = opts.id.is_some();
        let text = C::encode(&ClientFrame::Publish(Publish {
            topic,
            payload,
            opts: Some(opts),
            rid: Some(rid.to_string()),
        }));
        let deadline = now.saturating_add(self.config.request_timeout_ms);
        if connected {
            // Kept to be sent again after `rate_limited` (or a reconnect).
            let kept = text.clone();
            self.send(now, text);
            self.requests.insert(
                rid,
                deadline,
                Pending::Publish {
                    text: kept,
                    has_event_id,
                    sent: true,
                },
            );
        } else {
            self.requests.insert(
                rid,
                deadline,
                Pending::Publish {
                    text,
                    has_event_id,
                    sent: false,
                },
            );
            self.queue.push_back(rid);
        }
        Ok(RequestId(rid))
    }

    /// Registers a subscription to `pattern` (with `group`: a durable
    /// consumer group). Sent now if connected, else after the next `OK`;
    /// sent again after every reconnect. Works in every state, `Closed`
    /// included. The same `topic::group` twice is refused with
    /// [`ClientError::AlreadySubscribed`] carrying the existing id.
    pub fn subscribe(
        &mut self,
        now: u64,
        pattern: Pattern,
        group: Option<Group>,
        opts: SubscribeOpts,
    ) -> Result<SubscriptionId, ClientError> {
        if let Some(existing) = self.subs.find(&pattern, group.as_ref()) {
            return Err(ClientError::AlreadySubscribed(existing));
        }
        self.last_sub += 1;
        let sub = SubscriptionId(self.last_sub);
        self.subs
            .insert(sub, Subscription::new(pattern, group, opts));
        if self.state == ConnectionState::Connected {
            self.send_subscribe(now, sub);
        }
        Ok(sub)
    }

    /// Removes a subscription; its events stop at once. Connected: sends
    /// `UNSUBSCRIBE` and returns its request id ([`ClientEvent::Unsubscribed`]
    /// follows). Otherwise there is nothing to tell the hub: returns
    /// `Ok(None)` and emits `Unsubscribed` right away.
    pub fn unsubscribe(
        &mut self,
        now: u64,
        sub: SubscriptionId,
    ) -> Result<Option<RequestId>, ClientError> {
        let Some(entry) = self.subs.remove(sub) else {
            return Err(ClientError::UnknownSubscription(sub));
        };
        if let Some(rid) = entry.pending_rid
            && let Some(pending) = self.requests.get_mut(rid)
        {
            *pending = Pending::CancelledSubscribe;
        }
        if self.state != ConnectionState::Connected {
            self.emit(ClientEvent::Unsubscribed { sub });
            return Ok(None);
        }
        let rid = self.next_rid();
        self.send_frame(
            now,
            &ClientFrame::Unsubscribe(Unsubscribe {
                topic: entry.pattern,
                group: entry.group,
                rid: Some(rid.to_string()),
            }),
        );
        let deadline = now.saturating_add(self.config.request_timeout_ms);
        self.requests
            .insert(rid, deadline, Pending::Unsubscribe { sub });
        Ok(Some(RequestId(rid)))
    }

    /// Sends a `PING`; [`ClientEvent::Pong`] or [`ClientEvent::PingFailed`]
    /// follows.
    pub fn ping(&mut self, now: u64) -> Result<RequestId, ClientError> {
        if self.state != ConnectionState::Connected {
            return Err(ClientError::NotConnected);
        }
        let rid = self.next_rid();
        self.send_frame(
            now,
            &ClientFrame::Ping(Ping {
                rid: Some(rid.to_string()),
            }),
        );
        let deadline = now.saturating_add(self.config.request_timeout_ms);
        self.requests.insert(rid, deadline, Pending::Ping);
        Ok(RequestId(rid))
    }

    /// Removes a request from the table and, if it was queued, the queue.
    pub(super) fn take_request(&mut self, rid: u64) -> Option<Pending> {
        let pending = self.requests.remove(rid)?;
        if matches!(pending, Pending::Publish { sent: false, .. }) {
            self.queue.retain(|&queued| queued != rid);
        }
        Some(pending)
    }

    pub(super) fn flush_queue(&mut self, now: u64) {
        while let Some(rid) = self.queue.pop_front() {
            let Some(Pending::Publish { text, sent, .. }) = self.requests.get_mut(rid) else {
                continue;
            };
            *sent = true;
            let text = text.clone();
            self.send(now, text);
        }
    }

    /// Sends rate-limited publishes whose wait is over (queues them when
    /// not connected; ones that timed out or failed meanwhile are gone).
    pub(super) fn resend_rate_limited(&mut self, now: u64) {
        while let Some(&(due, rid)) = self.rate_limited.front() {
            if due > now {
                break;
            }
            self.rate_limited.pop_front();
            let connected = self.state == ConnectionState::Connected;
            let Some(Pending::Publish { text, sent, .. }) = self.requests.get_mut(rid) else {
                continue;
            };
            if *sent || self.queue.contains(&rid) {
                continue;
            }
            if connected {
                *sent = true;
                let text = text.clone();
                self.send(now, text);
            } else {
                self.queue.push_back(rid);
            }
        }
    }

    pub(super) fn request_timed_out(&mut self, now: u64, rid: u64, pending: Pending) {
        let request = RequestId(rid);
        let error = RequestError::TimedOut;
        match pending {
            Pending::Publish { sent, .. } => {
                if !sent {
                    self.queue.retain(|&queued| queued != rid);
                }
                self.emit(ClientEvent::PublishFailed { request, error });
            }
            Pending::Subscribe { sub } => {
                // The hub may still have subscribed: ask it to drop the
                // subscription so no events arrive for a handler that was
                // told it failed.
                if let Some(entry) = self.subs.remove(sub)
                    && self.state == ConnectionState::Connected
                {
                    self.send_frame(
                        now,
                        &ClientFrame::Unsubscribe(Unsubscribe {
                            topic: entry.pattern,
                            group: entry.group,
                            rid: None,
                        }),
                    );
                }
                self.emit(ClientEvent::SubscribeFailed { sub, error });
            }
            Pending::Unsubscribe { sub } => {
                self.emit(ClientEvent::UnsubscribeFailed { sub, error });
            }
            Pending::Ping => self.emit(ClientEvent::PingFailed { request, error }),
            Pending::CancelledSubscribe => {}
        }
    }

    /// After a drop with a reconnect ahead: publishes with an event id go
    /// back to the front of the queue (in their original order), everything
    /// else that was on the wire fails or is dropped.
    pub(super) fn settle_requests_for_reconnect(&mut self) {
        let on_wire = self
            .requests
            .rids(|pending| !matches!(pending, Pending::Publish { sent: false, .. }));
        let mut requeued = Vec::new();
        for rid in on_wire {
            if let Some(Pending::Publish {
                has_event_id: true,
                sent,
                ..
            }) = self.requests.get_mut(rid)
            {
                *sent = false;
                requeued.push(rid);
                continue;
            }
            match self.requests.remove(rid) {
                Some(Pending::Publish { .. }) => self.emit(ClientEvent::PublishFailed {
                    request: RequestId(rid),
                    error: RequestError::Disconnected,
                }),
                // Registered subscriptions are sent again after `OK`.
                Some(Pending::Subscribe { sub }) => {
                    if let Some(entry) = self.subs.get_mut(sub) {
                        entry.pending_rid = None;
                    }
                }
                // The hub dropped the socket's subscriptions with it.
                Some(Pending::Unsubscribe { sub }) => {
                    self.emit(ClientEvent::Unsubscribed { sub });
                }
                Some(Pending::Ping) => self.emit(ClientEvent::PingFailed {
                    request: RequestId(rid),
                    error: RequestError::Disconnected,
                }),
                Some(Pending::CancelledSubscribe) | None => {}
            }
        }
        for rid in requeued.into_iter().rev() {
            self.queue.push_front(rid);
        }
        // The capacity bounds memory even when re-queued publishes overflow
        // it: the newest give way.
        while self.queue.len() > self.config.outbound_queue.capacity {
            let Some(rid) = self.queue.pop_back() else {
                break;
            };
            if self.requests.remove(rid).is_some() {
                self.emit(ClientEvent::PublishFailed {
                    request: RequestId(rid),
                    error: RequestError::QueueFull,
                });
            }
        }
    }

    /// Takes a request on the wire, if it is of the kind `kind` accepts.
    pub(super) fn take_sent(
        &mut self,
        rid: u64,
        kind: fn(&Pending) -> bool,
    ) -> Option<(u64, Pending)> {
        let pending = self.requests.get_mut(rid)?;
        if !kind(pending) || matches!(pending, Pending::Publish { sent: false, .. }) {
            return None;
        }
        self.requests.remove(rid).map(|pending| (rid, pending))
    }

    pub(super) fn handle_err(&mut self, now: u64, err: ErrorFrame) {
        let rid = Self::own_rid(err.rid.as_deref());
        if let Some(rid) = rid
            && self.retry_rate_limited(now, rid, &err)
        {
            return;
        }
        let Some((rid, pending)) =
            rid.and_then(|rid| self.take_request(rid).map(|pending| (rid, pending)))
        else {
            if err.rid.is_none() && self.auth.refreshes_in_flight > 0 {
                // A refused token refresh; the hub closes next.
                self.auth.refusal = Some(err);
            } else {
                self.emit(ClientEvent::ServerError(err));
            }
            return;
        };
        let request = RequestId(rid);
        let error = RequestError::Refused(err);
        match pending {
            Pending::Publish { .. } => self.emit(ClientEvent::PublishFailed { request, error }),
            Pending::Subscribe { sub } => {
                self.subs.remove(sub);
                self.emit(ClientEvent::SubscribeFailed { sub, error });
            }
            Pending::Unsubscribe { sub } => {
                self.emit(ClientEvent::UnsubscribeFailed { sub, error });
            }
            Pending::Ping => self.emit(ClientEvent::PingFailed { request, error }),
            Pending::CancelledSubscribe => {}
        }
    }

    /// A publish refused with `rate_limited` and `retry_after_ms` is sent
    /// again after that wait, if its request timeout allows; true when it
    /// was scheduled (nothing is reported then).
    pub(super) fn retry_rate_limited(&mut self, now: u64, rid: u64, err: &ErrorFrame) -> bool {
        let (ErrorCode::RateLimited, Some(wait)) = (err.code, err.retry_after_ms) else {
            return false;
        };
        // Spaced after the retries already waiting: refused together, sent
        // again all at once they would mostly be refused again (and a
        // client that keeps that up is closed with 4029). The hub's wait is
        // about the time one token takes to come back.
        let after_waiting = self
            .rate_limited
            .back()
            .map_or(0, |&(due, _)| due.saturating_add(wait));
        let due = now.saturating_add(wait).max(after_waiting);
        if self
            .requests
            .deadline(rid)
            .is_none_or(|deadline| due >= deadline)
        {
            return false;
        }
        let Some(Pending::Publish { sent, .. }) = self.requests.get_mut(rid) else {
            return false;
        };
        if !*sent {
            return false;
        }
        // Not on the wire until the resend (a late answer cannot match).
        *sent = false;
        // `due` is after every waiting one's (see above): the order holds.
        self.rate_limited.push_back((due, rid));
        true
    }
}

pub(super) fn is_publish(pending: &Pending) -> bool {
    matches!(pending, Pending::Publish { .. })
}

pub(super) fn is_subscribe(pending: &Pending) -> bool {
    matches!(
        pending,
        Pending::Subscribe { .. } | Pending::CancelledSubscribe
    )
}

pub(super) fn is_unsubscribe(pending: &Pending) -> bool {
    matches!(pending, Pending::Unsubscribe { .. })
}

pub(super) fn is_ping(pending: &Pending) -> bool {
    matches!(pending, Pending::Ping)
}
