//! What the application side ([`Client`](crate::Client), subscriptions,
//! deliveries) sends to the driver task, and how.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use promhub_core::client::SubscriptionId;
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
        /// The connection the delivery came on (see [`Link::epoch`]).
        epoch: u64,
        kind: Settle,
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

/// How a delivery of a durable group is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Nack {
        reason: Option<String>,
        delay_ms: Option<u64>,
        final_: bool,
    },
    Working,
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

/// An `EVENT` on its way to a subscription.
#[derive(Debug)]
pub(crate) struct RawDelivery {
    pub(crate) epoch: u64,
    pub(crate) delivery: Box<EventDelivery>,
}

/// What the handles may know about the connection without asking the
/// driver. Written by the driver only.
#[derive(Debug, Default)]
pub(crate) struct ConnectionInfo {
    /// Counts successful connections (`OK`s).
    pub(crate) epoch: AtomicU64,
    pub(crate) connected: AtomicBool,
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

    /// The number of the current connection. A delivery of a durable group
    /// from an older connection is stale: the hub took it back when that
    /// connection closed and delivers it again.
    pub(crate) fn epoch(&self) -> u64 {
        self.connection.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn connected(&self) -> bool {
        self.connection.connected.load(Ordering::Acquire)
    }
}

/// Waits for the driver's answer; a driver that is gone means closed.
pub(crate) async fn answer<T>(reply: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
    reply.await.unwrap_or(Err(Error::Closed))
}
