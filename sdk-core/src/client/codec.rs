//! [`Codec`]: how a [`ClientCore`](super::ClientCore) writes frames, and
//! what the payloads it takes and hands out are.

use std::fmt;

use crate::frames::{self, ClientFrame, Payload, Publish, SamePayload};

/// How frames become text, and what payloads are. The machine's behaviour
/// does not depend on it: only the bytes it sends and the payload types of
/// [`publish`](super::ClientCore::publish) and
/// [`ClientEvent::Delivery`](super::ClientEvent::Delivery) do.
pub trait Codec {
    /// What [`publish`](super::ClientCore::publish) takes.
    type Payload: fmt::Debug;
    /// What the payload of a delivered `EVENT` is read into.
    type EventPayload: fmt::Debug + Clone + SamePayload;
    /// The JSON text of a frame.
    fn encode(frame: &ClientFrame<Publish<Self::Payload>>) -> String;
}

/// serde_json, with payloads as JSON text ([`Payload`]) both ways: the
/// hub's and the native SDK's codec (and [`ClientCore`](super::ClientCore)'s
/// default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    type Payload = Payload;
    type EventPayload = Payload;

    fn encode(frame: &ClientFrame) -> String {
        frames::encode(frame)
    }
}
