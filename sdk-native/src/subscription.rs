//! [`Subscription`]: a typed stream of [`Delivery`]s, each answered with
//! ack, nack, working or term.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use promhub_core::client::{Answer, DeliveryTag, Gap, SubscriptionId};
use promhub_core::frames::{DeliveryCtx, Event, Group, Millis};
use promhub_core::topic::{Pattern, Topic};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::error::DeserializeError;
use crate::link::{Command, Link, RawDelivery, Reply, Subscribed, answer};

/// The events of one subscription, as a [`Stream`] of [`Delivery`]s with
/// payloads deserialized into `T`.
///
/// The subscription survives reconnects: the client subscribes again after
/// every reconnect. A durable group continues from the hub's cursor; a live
/// subscription resumes from the seq after the last one it delivered, so
/// nothing published meanwhile is missed and nothing comes twice — unless
/// the hub's retention removed some of it, which the next delivery reports
/// ([`Delivery::gap`]). Dropping it unsubscribes. The stream ends when the hub drops the
/// subscription for good ([`end_reason`](Self::end_reason) says why) or the
/// client closes.
pub struct Subscription<T> {
    sub: SubscriptionId,
    pattern: Pattern,
    group: Option<Group>,
    from_seq: u64,
    receiver: mpsc::Receiver<RawDelivery>,
    link: Link,
    ended: Arc<Mutex<Option<Error>>>,
    /// False once unsubscribed: nothing to do on drop.
    active: bool,
    _payload: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("sub", &self.sub)
            .field("pattern", &self.pattern)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<T> Subscription<T> {
    pub(crate) fn new(
        subscribed: Subscribed,
        pattern: Pattern,
        group: Option<Group>,
        link: Link,
    ) -> Self {
        Subscription {
            sub: subscribed.sub,
            pattern,
            group,
            from_seq: subscribed.from_seq,
            receiver: subscribed.receiver,
            link,
            ended: subscribed.ended,
            active: true,
            _payload: PhantomData,
        }
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The consumer group; `None` for an ephemeral subscription.
    pub fn group(&self) -> Option<&Group> {
        self.group.as_ref()
    }

    /// The `seq` delivery started from, as the first `SUBACK` said.
    pub fn from_seq(&self) -> u64 {
        self.from_seq
    }

    /// Why the stream ended, when the hub dropped the subscription (for
    /// example, a resubscribe after a reconnect was forbidden).
    pub fn end_reason(&self) -> Option<Error> {
        self.ended.lock().ok().and_then(|ended| ended.clone())
    }

    /// Unsubscribes and waits for the hub's `UNSUBACK` (dropping the
    /// subscription unsubscribes without waiting).
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.active = false;
        let (reply, answered) = oneshot::channel();
        self.link.send(Command::Unsubscribe {
            sub: self.sub,
            reply: Some(reply),
        })?;
        answer(answered).await
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        if self.active {
            // A closed driver has nothing left to unsubscribe.
            let _ = self.link.send(Command::Unsubscribe {
                sub: self.sub,
                reply: None,
            });
        }
    }
}

impl<T: DeserializeOwned> Stream for Subscription<T> {
    type Item = Delivery<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let Some(raw) = ready!(self.receiver.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            // A durable delivery from a connection that has since dropped
            // was taken back by the hub, which delivers it again on the new
            // connection (the core would refuse its answer): handing out
            // both would only make a duplicate.
            if raw.tag.is_some_and(|tag| self.link.is_stale(tag)) {
                tracing::trace!(event = %raw.delivery.event.id, "stale delivery skipped");
                continue;
            }
            return Poll::Ready(Some(Delivery::new(raw, self.sub, &self.link)));
        }
    }
}

/// One delivered event. Answer a delivery of a durable group with
/// [`ack`](Self::ack) once it is processed, [`nack`](Self::nack) to get it
/// again later, or [`term`](Self::term) to dead-letter it; dropping it
/// unanswered NACKs it. For an ephemeral subscription the answers do
/// nothing (the hub does not track them).
///
/// The answers are handed to the client when they are called (they have no
/// reply on the wire); the returned future says whether the answer went
/// out: [`Error::NotConnected`], or [`Error::Disconnected`] for a delivery
/// made on a connection that has since dropped (or delivered again since),
/// mean it did not, and the hub delivers the event again.
pub struct Delivery<T> {
    payload: Result<T, DeserializeError>,
    event: Event,
    ctx: DeliveryCtx,
    gap: Option<Gap>,
    acker: Acker,
}

impl<T: fmt::Debug> fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("payload", &self.payload)
            .field("event", &self.event)
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Delivery<T> {
    fn new(raw: RawDelivery, sub: SubscriptionId, link: &Link) -> Self {
        let RawDelivery { delivery, tag, gap } = raw;
        let delivery = *delivery;
        let event = delivery.event;
        let payload =
            serde_json::from_str::<T>(event.payload.get()).map_err(|source| DeserializeError {
                event_id: event.id.clone(),
                source: Arc::new(source),
            });
        let target = tag.map(|tag| AckTarget {
            link: link.clone(),
            sub,
            tag,
        });
        Delivery {
            payload,
            gap,
            acker: Acker {
                target,
                event_id: event.id.clone(),
                seq: event.seq,
            },
            event,
            ctx: delivery.ctx,
        }
    }
}

impl<T> Delivery<T> {
    /// The payload as a `T`, or why it is not one.
    pub fn payload(&self) -> Result<&T, &DeserializeError> {
        self.payload.as_ref()
    }

    /// The payload's JSON text as published.
    pub fn raw_payload(&self) -> &RawValue {
        &self.event.payload
    }

    /// The stored event: id, seq, concrete topic, timestamp, key, headers…
    pub fn event(&self) -> &Event {
        &self.event
    }

    pub fn id(&self) -> &str {
        &self.event.id
    }

    pub fn seq(&self) -> u64 {
        self.event.seq
    }

    /// The concrete topic the event was published to.
    pub fn topic(&self) -> &Topic {
        &self.event.topic
    }

    pub fn key(&self) -> Option<&str> {
        self.event.key.as_deref()
    }

    pub fn headers(&self) -> Option<&BTreeMap<String, String>> {
        self.event.headers.as_ref()
    }

    /// Event time, Unix ms.
    pub fn ts(&self) -> Millis {
        self.event.ts
    }

    /// 1 on the first delivery, then counting redeliveries.
    pub fn attempt(&self) -> u32 {
        self.ctx.attempt
    }

    /// When the hub delivers the event again unless it is answered (Unix
    /// ms), for durable groups.
    pub fn ack_deadline(&self) -> Option<Millis> {
        self.ctx.ack_deadline
    }

    /// True while the hub replays the latest event of every key.
    pub fn is_snapshot(&self) -> bool {
        self.ctx.snapshot.unwrap_or(false)
    }

    /// Live subscriptions: events this subscription may have missed just
    /// before this one. After a reconnect the client resumes from the seq
    /// after the last one it delivered; when the hub's retention had
    /// removed some of the events since, it cannot deliver them, and the
    /// first delivery after that says which seqs are missing (the same gap
    /// is also reported at once as
    /// [`ConnectionEvent::Gap`](crate::ConnectionEvent::Gap)). `None`
    /// otherwise, and always for durable groups (whose cursor lives in the
    /// hub).
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// Splits the delivery into its payload, its event and the [`Acker`]
    /// that answers it (which NACKs when dropped unanswered).
    pub fn into_parts(self) -> (Result<T, DeserializeError>, Event, Acker) {
        (self.payload, self.event, self.acker)
    }

    /// Processed: the hub moves the group past it. Not sent for a delivery
    /// of a connection that has dropped ([`Error::Disconnected`]): the hub
    /// ignores it and delivers the event again anyway.
    pub fn ack(self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.acker.ack()
    }

    /// Not processed: the hub delivers it again after `delay` (or the
    /// group's backoff), or dead-letters it once it ran out of attempts.
    pub fn nack(
        self,
        reason: impl Into<String>,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.acker.nack(reason, delay)
    }

    /// Never processable (for example a payload that does not deserialize):
    /// dead-letter it now (`NACK` final), no more attempts.
    pub fn term(
        self,
        reason: impl Into<String>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.acker.term(reason)
    }

    /// Still working on it: pushes the ack deadline back by the group's ack
    /// timeout.
    pub fn working(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static + use<T> {
        self.acker.working()
    }
}

/// Answers one delivery (see [`Delivery::into_parts`]). Dropped unanswered,
/// it NACKs the delivery so the hub delivers it again without waiting for
/// the ack timeout.
pub struct Acker {
    /// `None` for an ephemeral subscription and once answered.
    target: Option<AckTarget>,
    event_id: String,
    /// The delivered event's seq: every answer names it (protocol.md).
    seq: u64,
}

struct AckTarget {
    link: Link,
    sub: SubscriptionId,
    /// The core's name for this delivery.
    tag: DeliveryTag,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("event_id", &self.event_id)
            .field("pending", &self.target.is_some())
            .finish()
    }
}

impl Acker {
    /// The id of the event this answers.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// The (id, seq) this answers, taken out of the acker.
    fn delivery(&mut self) -> (String, u64) {
        (std::mem::take(&mut self.event_id), self.seq)
    }

    /// See [`Delivery::ack`].
    pub fn ack(mut self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let target = self.target.take();
        Self::settle(target, self.delivery(), Answer::Ack)
    }

    /// See [`Delivery::nack`].
    pub fn nack(
        mut self,
        reason: impl Into<String>,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let target = self.target.take();
        let answer = Answer::Nack {
            reason: Some(reason.into()),
            delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            final_: false,
        };
        Self::settle(target, self.delivery(), answer)
    }

    /// See [`Delivery::term`].
    pub fn term(
        mut self,
        reason: impl Into<String>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let target = self.target.take();
        let answer = Answer::Nack {
            reason: Some(reason.into()),
            delay_ms: None,
            final_: true,
        };
        Self::settle(target, self.delivery(), answer)
    }

    /// See [`Delivery::working`].
    pub fn working(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static + use<> {
        let sent = self.target.as_ref().map(|target| {
            let (reply, answered) = oneshot::channel();
            target
                .send(
                    (self.event_id.clone(), self.seq),
                    Answer::Working,
                    Some(reply),
                )
                .map(|()| answered)
        });
        verdict(sent)
    }

    /// Hands the answer to the driver now, so that it cannot be lost with
    /// the returned future, which resolves with the core's verdict.
    fn settle(
        target: Option<AckTarget>,
        delivery: (String, u64),
        answer: Answer,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let sent = target.map(|target| {
            let (reply, answered) = oneshot::channel();
            target
                .send(delivery, answer, Some(reply))
                .map(|()| answered)
        });
        verdict(sent)
    }
}

/// The core's verdict on an answer handed to the driver (`None`: nothing
/// to answer, an ephemeral delivery).
async fn verdict(
    sent: Option<Result<oneshot::Receiver<Result<(), Error>>, Error>>,
) -> Result<(), Error> {
    match sent {
        None => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(answered)) => answer(answered).await,
    }
}

impl AckTarget {
    /// Hands the answer to the driver; the core decides whether it goes
    /// out (connected, and the delivery held by the current connection).
    fn send(
        &self,
        (event_id, seq): (String, u64),
        answer: Answer,
        reply: Option<Reply<()>>,
    ) -> Result<(), Error> {
        self.link.send(Command::Settle {
            sub: self.sub,
            event_id,
            seq,
            tag: self.tag,
            answer,
            reply,
        })
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            // Best effort: if the client is gone, so is the connection, and
            // the hub delivers the event again anyway.
            let answer = Answer::Nack {
                reason: Some("dropped without an answer".to_owned()),
                delay_ms: None,
                final_: false,
            };
            let _ = target.send((std::mem::take(&mut self.event_id), self.seq), answer, None);
        }
    }
}
