//! Deliveries: routing each `EVENT` to its subscription, the gapless resume
//! of live subscriptions (duplicates of a resume dropped, gaps reported),
//! and the answers of durable groups (`ACK`, `NACK`, `WORKING`), which only
//! go out for a delivery the current connection holds.

use super::{ClientCore, Delivered};
use crate::client::codec::Codec;
use crate::client::events::{
    ClientError, ClientEvent, ConnectionState, DeliveryTag, SubscriptionId, Unmatched,
};
use crate::frames::{ClientFrame, DeliveryRef, Event, EventDelivery, Nack};

/// An answer to a delivery of a durable group, for
/// [`ClientCore::answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Processed (`ACK`).
    Ack,
    /// Not processed (`NACK`): redelivered after `delay_ms` (or the
    /// group's backoff), or dead-lettered now when `final_`.
    Nack {
        reason: Option<String>,
        delay_ms: Option<u64>,
        final_: bool,
    },
    /// Still working on it (`WORKING`): pushes the ack deadline back.
    Working,
}

impl<C: Codec> ClientCore<C> {
    /// Acknowledges an event of a durable group (`ACK`). Ephemeral
    /// subscriptions: nothing to send, `Ok`. Refused, and nothing sent,
    /// when not connected ([`ClientError::NotConnected`]) or when the
    /// current connection does not hold this delivery
    /// ([`ClientError::NotHeld`]: it came on a connection that has closed,
    /// was answered already, or was delivered again since) — the hub
    /// ignores such answers and delivers the event again if it must.
    ///
    /// The frame carries the event's seq (protocol.md), which is how the
    /// hub finds the delivery.
    pub fn ack(
        &mut self,
        now: u64,
        sub: SubscriptionId,
        delivered: Delivered<'_>,
    ) -> Result<(), ClientError> {
        self.answer(now, sub, delivered, Answer::Ack)
    }

    /// Refuses an event of a durable group (`NACK`): redelivered after
    /// `delay_ms` (or the group's backoff), or dead-lettered now when
    /// `final_`. Same rules as [`ack`](Self::ack) otherwise: a late `NACK`
    /// for a delivery the hub has made again since is refused here, so it
    /// can never act on the newer delivery.
    pub fn nack(
        &mut self,
        now: u64,
        sub: SubscriptionId,
        delivered: Delivered<'_>,
        reason: Option<String>,
        delay_ms: Option<u64>,
        final_: bool,
    ) -> Result<(), ClientError> {
        let nack = Answer::Nack {
            reason,
            delay_ms,
            final_,
        };
        self.answer(now, sub, delivered, nack)
    }

    /// Pushes an event's ack deadline back (`WORKING`); the delivery stays
    /// held. Same rules as [`ack`](Self::ack).
    pub fn working(
        &mut self,
        now: u64,
        sub: SubscriptionId,
        delivered: Delivered<'_>,
    ) -> Result<(), ClientError> {
        self.answer(now, sub, delivered, Answer::Working)
    }

    /// Every [`DeliveryTag`] below this one was handed out on a connection
    /// that has closed: its delivery is stale (the hub took it back and
    /// delivers the event again), and an answer for it is refused. A driver
    /// that buffers deliveries for the application may skip stale ones.
    pub fn live_tags_from(&self) -> DeliveryTag {
        DeliveryTag(self.live_tags_from)
    }

    /// Answers a delivery of a durable group, if the answer may go out:
    /// nothing for an ephemeral subscription (the hub ignores their
    /// acknowledgements); refused when not connected, or when the current
    /// connection does not hold the delivery (see [`ack`](Self::ack)).
    /// `ACK` and `NACK` settle it (it is no longer held), `WORKING` does
    /// not. [`ack`](Self::ack), [`nack`](Self::nack) and
    /// [`working`](Self::working) are shorthands.
    pub fn answer(
        &mut self,
        now: u64,
        sub: SubscriptionId,
        delivered: Delivered<'_>,
        answer: Answer,
    ) -> Result<(), ClientError> {
        let connected = self.state == ConnectionState::Connected;
        let entry = self
            .subs
            .get_mut(sub)
            .ok_or(ClientError::UnknownSubscription(sub))?;
        let Some(group) = entry.group.clone() else {
            return Ok(());
        };
        if !connected {
            return Err(ClientError::NotConnected);
        }
        let Delivered { id, seq, tag } = delivered;
        let held = match answer {
            Answer::Working => entry.held.holds(seq, id, tag),
            _ => entry.held.remove(seq, id, tag),
        };
        if !held {
            return Err(ClientError::NotHeld { sub, seq });
        }
        let target = DeliveryRef {
            topic: entry.pattern.clone(),
            group: Some(group),
            id: id.to_owned(),
            seq: Some(seq),
        };
        let frame = match answer {
            Answer::Ack => ClientFrame::Ack(target),
            Answer::Working => ClientFrame::Working(target),
            Answer::Nack {
                reason,
                delay_ms,
                final_,
            } => ClientFrame::Nack(Nack {
                topic: target.topic,
                group: target.group,
                id: target.id,
                seq: target.seq,
                reason,
                delay_ms,
                final_: final_.then_some(true),
            }),
        };
        self.send_frame(now, &frame);
        Ok(())
    }

    /// An `EVENT` to its subscription. A durable delivery is tagged and
    /// held; a live one moves the resume point on, or is dropped when it
    /// was delivered already (the overlap of a resume). Snapshot events
    /// (latest-by-key) are outside the live sequence and pass as they are.
    pub(super) fn route_event(&mut self, delivery: EventDelivery<Event<C::EventPayload>>) {
        let Some(sub) = self.subs.find(&delivery.topic, delivery.group.as_ref()) else {
            self.emit(ClientEvent::Unmatched(Unmatched::Event {
                topic: delivery.topic,
                group: delivery.group,
                event_id: delivery.event.id,
            }));
            return;
        };
        let next_tag = DeliveryTag(self.last_tag + 1);
        let Some(entry) = self.subs.get_mut(sub) else {
            return;
        };
        let seq = delivery.event.seq;
        let (tag, gap) = if entry.group.is_some() {
            let cap = entry.held_cap();
            entry.held.insert(cap, seq, &delivery.event.id, next_tag);
            self.last_tag = next_tag.0;
            (Some(next_tag), None)
        } else if delivery.ctx.snapshot == Some(true) {
            (None, None)
        } else {
            match entry.resume.deliver(seq) {
                Some(gap) => (None, gap),
                None => {
                    tracing::debug!(%sub, seq, "event delivered already (resume overlap); dropped");
                    return;
                }
            }
        };
        self.emit(ClientEvent::Delivery {
            sub,
            delivery: Box::new(delivery),
            tag,
            gap,
        });
    }
}
