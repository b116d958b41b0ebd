//! What the application side ([`Client`](crate::Client), subscriptions,
//! deliveries) sends to the driver task, and how.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use promhub_core::client::{Answer, DeliveryTag, Gap, SubscriptionId};
use promhub_core::frames::{EventDelivery, Group, Payload, PublishOpts, SubscribeOpts};
use promhub_core::topic::{Pattern, Topic};
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::client::PubAck;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A request to the driver task.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        topic: Topic,
        payload: Payload,
        opts: PublishOpts,
        reply: Reply<PubAck>,
    },
    Subscribe {
        pattern: Pattern,
        group: Option<Group>,
        opts: SubscribeOpts,
        buffer: usize,
        reply: Reply<Subscribed>,
    },
    Unsubscribe {
        sub: SubscriptionId,
        reply: Option<Reply<()>>,
    },
    Settle {
        sub: SubscriptionId,
        event_id: String,
        seq: u64,
        /// The core's tag of the delivery being answered.
        tag: DeliveryTag,
        answer: Answer,
        /// The core's verdict (`None`: nobody waits for it).
        reply: Option<Reply<()>>,
    },
    Ping {
        reply: Reply<std::time::Duration>,
    },
    SetToken(Option<String>),
    Reconnect,
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// The driver's answer to a subscribe, once the hub sent `SUBACK`.
#[derive(Debug)]
pub(crate) struct Subscribed {
    pub(crate) sub: SubscriptionId,
    pub(crate) from_seq: u64,
    pub(crate) receiver: mpsc::Receiver<RawDelivery>,
    /// Set by the driver when the hub drops the subscription for good.
    pub(crate) ended: Arc<Mutex<Option<Error>>>,
}

/// An `EVENT` on its way to a subscription, as the core handed it out.
#[derive(Debug)]
pub(crate) struct RawDelivery {
    pub(crate) delivery: Box<EventDelivery>,
    /// Durable groups: names this delivery in its answer.
    pub(crate) tag: Option<DeliveryTag>,
    /// Live subscriptions: seqs the hub could not deliver before this one.
    pub(crate) gap: Option<Gap>,
}

/// What the handles may know about the connection without asking the
/// driver. Written by the driver only, from the core.
#[derive(Debug, Default)]
pub(crate) struct ConnectionInfo {
    /// The core's [`ClientCore::live_tags_from`](promhub_core::ClientCore::live_tags_from).
    pub(crate) live_tags_from: AtomicU64,
}

/// The channel to the driver task, plus what is known about the connection.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    commands: mpsc::UnboundedSender<Command>,
    connection: Arc<ConnectionInfo>,
}

impl Link {
    pub(crate) fn new(
        commands: mpsc::UnboundedSender<Command>,
        connection: Arc<ConnectionInfo>,
    ) -> Self {
        Link {
            commands,
            connection,
        }
    }

    pub(crate) fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Closed)
    }

    /// Is this durable delivery from a connection that has closed? The hub
    /// took it back and delivers the event again (the core refuses any
    /// answer to it).
    pub(crate) fn is_stale(&self, tag: DeliveryTag) -> bool {
        tag.as_u64() < self.connection.live_tags_from.load(Ordering::Acquire)
    }
}

/// Waits for the driver's answer; a driver that is gone means closed.
pub(crate) async fn answer<T>(reply: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
    reply.await.unwrap_or(Err(Error::Closed))
}
