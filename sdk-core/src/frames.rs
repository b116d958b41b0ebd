//! Wire protocol v1 (protocol.md): every frame as a Rust type.
//!
//! Frames are JSON text objects tagged by `op`. The serde derives on these
//! types are the one definition of every frame: encoding is serde_json,
//! and decoding ([`ClientFrame::decode`], [`HubFrame::decode`]) reads the
//! frame's `op` first, then the one struct it names, from JSON text with
//! serde_json or (feature `js`, the browser SDK) from the JavaScript value
//! `JSON.parse` made of it. Payloads stay as they came — raw JSON text
//! ([`Payload`]) for the hub and the native SDK, the parsed JavaScript
//! value in the browser — and an error carries the frame's `rid` when one
//! could be read, so the peer can match it to its request.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::object_only;
use crate::topic::{Pattern, Topic};

mod decode;
#[cfg(feature = "js")]
pub mod js;

pub use decode::{DecodeError, DecodeErrorKind, peek_rid};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default largest frame a peer accepts (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Any JSON value, kept as its original text.
pub type Payload = Box<RawValue>;

/// Builds a [`Payload`] from any serializable value.
pub fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Payload, serde_json::Error> {
    serde_json::value::to_raw_value(value)
}

/// Client-chosen request id, echoed in the answer.
#[cfg_attr(feature = "ts", tsify::declare)]
pub type Rid = String;

/// Milliseconds since the Unix epoch.
#[cfg_attr(feature = "ts", tsify::declare)]
pub type Millis = u64;

// ---------------------------------------------------------------------------
// Group names

/// Why a group name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group name is empty")]
    Empty,
    #[error("group name is {0} bytes long; at most {MAX_GROUP_BYTES} are allowed")]
    TooLong(usize),
    #[error("group name contains whitespace or a control character")]
    BadCharacter,
    #[error("group name `*` is reserved (it means any group in ACL rules)")]
    Reserved,
}

pub const MAX_GROUP_BYTES: usize = 128;

/// A consumer group name: 1–128 bytes, no whitespace or control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group(Arc<str>);

impl Group {
    pub fn parse(s: &str) -> Result<Self, GroupError> {
        if s.is_empty() {
            return Err(GroupError::Empty);
        }
        if s.len() > MAX_GROUP_BYTES {
            return Err(GroupError::TooLong(s.len()));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(GroupError::BadCharacter);
        }
        if s == "*" {
            return Err(GroupError::Reserved);
        }
        Ok(Group(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Group({:?})", &*self.0)
    }
}

impl Serialize for Group {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(deserializer)?;
        Group::parse(&s).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Client → hub

/// `AUTH`: must be the first frame; sent again it refreshes the credentials.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Auth {
    /// JWT; absent or null means anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// Options of `PUBLISH`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct PublishOpts {
    /// A plain object in JSON (and so in TypeScript), not a `Map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "Record<string, string>"))]
    pub headers: Option<BTreeMap<String, String>>,
    /// Latest-by-key key (e.g. `host:name:pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Event time in ms; defaults to the hub's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<Millis>,
    /// Client-chosen event id, used for de-duplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl PublishOpts {
    pub fn is_empty(&self) -> bool {
        *self == PublishOpts::default()
    }
}

/// `PUBLISH`. `P` is the payload: JSON text ([`Payload`]), or in the
/// browser SDK the text `JSON.stringify` wrote (`js::JsPayload`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Publish<P = Payload> {
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Topic,
    // `type_params = ""`: the declaration names no type parameter.
    #[cfg_attr(feature = "ts", tsify(type = "unknown", type_params = ""))]
    pub payload: P,
    #[serde(
        default,
        skip_serializing_if = "opts_empty",
        deserialize_with = "object_only::optional"
    )]
    pub opts: Option<PublishOpts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
}

impl<P: SamePayload> PartialEq for Publish<P> {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.payload.same(&other.payload)
            && self.opts == other.opts
            && self.rid == other.rid
    }
}

fn opts_empty(opts: &Option<PublishOpts>) -> bool {
    opts.as_ref().is_none_or(PublishOpts::is_empty)
}

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first retained event.
    Earliest,
    /// The next event to be published (the default).
    Latest,
    /// The event with this `seq`.
    Seq(u64),
}

impl Serialize for StartFrom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StartFrom::Earliest => serializer.serialize_str("earliest"),
            StartFrom::Latest => serializer.serialize_str("latest"),
            StartFrom::Seq(seq) => serializer.serialize_u64(*seq),
        }
    }
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = StartFrom;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""latest", "earliest" or a seq number"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StartFrom, E> {
                match v {
                    "latest" => Ok(StartFrom::Latest),
                    "earliest" => Ok(StartFrom::Earliest),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StartFrom, E> {
                Ok(StartFrom::Seq(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StartFrom, E> {
                u64::try_from(v)
                    .map(StartFrom::Seq)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Options of `SUBSCRIBE`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct SubscribeOpts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "\"latest\" | \"earliest\" | number"))]
    pub from: Option<StartFrom>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<u32>,
    /// First send the latest event of every key matching the pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
}

impl SubscribeOpts {
    pub fn is_empty(&self) -> bool {
        *self == SubscribeOpts::default()
    }
}

fn sub_opts_empty(opts: &Option<SubscribeOpts>) -> bool {
    opts.as_ref().is_none_or(SubscribeOpts::is_empty)
}

/// `SUBSCRIBE`: with `group` a durable consumer group, without an ephemeral
/// live subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Subscribe {
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Pattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub group: Option<Group>,
    #[serde(
        default,
        skip_serializing_if = "sub_opts_empty",
        deserialize_with = "object_only::optional"
    )]
    pub opts: Option<SubscribeOpts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
}

/// `UNSUBSCRIBE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Unsubscribe {
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Pattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub group: Option<Group>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
}

/// `ACK` and `WORKING` carry the same fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct DeliveryRef {
    /// The subscription pattern, exactly as subscribed.
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Pattern,
    /// Optional so that ACKs for ephemeral subscriptions (ignored by the hub)
    /// still decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub group: Option<Group>,
    /// The event id.
    pub id: String,
    /// The delivered event's `seq`: the hub finds the delivery by it when
    /// given (else by `id`). The SDKs always send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `NACK`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Nack {
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Pattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub group: Option<Group>,
    pub id: String,
    /// As in [`DeliveryRef::seq`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Dead-letter now, do not retry.
    #[serde(default, rename = "final", skip_serializing_if = "Option::is_none")]
    pub final_: Option<bool>,
}

/// `PING` / `PONG` (both directions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Ping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
}

/// A frame a client sends to the hub. `P` is the `PUBLISH` frame: a
/// [`Publish`] of JSON text, or of another payload type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
#[serde(tag = "op", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientFrame<P = Publish> {
    Auth(Auth),
    Publish(#[cfg_attr(feature = "ts", tsify(type = "Publish", type_params = ""))] P),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Ack(DeliveryRef),
    Nack(Nack),
    Working(DeliveryRef),
    Ping(Ping),
    Pong(Ping),
}

// ---------------------------------------------------------------------------
// Hub → client

/// `OK`: the answer to a successful `AUTH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Welcome {
    pub v: u32,
    pub session: String,
    pub server: String,
    pub heartbeat_ms: u64,
    /// From the token's `exp`, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
}

/// Error codes (protocol.md). Codes this version does not know decode as
/// [`ErrorCode::Unknown`] so that newer hubs do not break older clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    TooLarge,
    NoToken,
    JwtInvalid,
    TokenExpired,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    /// A cap on subscriptions or groups was reached.
    LimitExceeded,
    UnsupportedVersion,
    Internal,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NoToken => "no_token",
            ErrorCode::JwtInvalid => "jwt_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ERR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
    /// With `rate_limited`: when to try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorFrame {
    pub fn new(code: ErrorCode, msg: impl Into<String>, rid: Option<Rid>) -> Self {
        ErrorFrame {
            code,
            msg: msg.into(),
            rid,
            retry_after_ms: None,
        }
    }
}

/// `PUBACK`: the event is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct PubAck {
    pub rid: Rid,
    pub id: String,
    pub seq: u64,
    /// True when `opts.id` was seen before; `seq` is then the original one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `SUBACK`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct SubAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Pattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub group: Option<Group>,
    pub from_seq: u64,
}

/// `UNSUBACK`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct UnsubAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Pattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub group: Option<Group>,
}

/// A stored event as delivered. `P` is what its payload is read into:
/// the JSON text ([`Payload`]) for the hub and the native SDK; [`Unread`]
/// in the browser SDK, whose handlers get the payload as the JavaScript
/// value the frame was parsed into.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Event<P = Payload> {
    pub id: String,
    pub seq: u64,
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Topic,
    pub ts: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    // `type_params = ""`: the declaration names no type parameter.
    #[cfg_attr(feature = "ts", tsify(type = "unknown", type_params = ""))]
    pub payload: P,
    /// A plain object in JSON (and so in TypeScript), not a `Map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "Record<string, string>"))]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

impl<P: SamePayload> PartialEq for Event<P> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.seq == other.seq
            && self.topic == other.topic
            && self.ts == other.ts
            && self.key == other.key
            && self.payload.same(&other.payload)
            && self.headers == other.headers
            && self.tags == other.tags
            && self.caused_by == other.caused_by
            && self.sid == other.sid
    }
}

/// An `EVENT` payload left unread: it deserializes from anything without
/// looking at it. The browser SDK reads frames with it and hands its
/// handlers the payload as the JavaScript value `JSON.parse` made.
pub type Unread = de::IgnoredAny;

/// Payloads compare by their JSON text ([`RawValue`] has no equality);
/// [`Unread`] ones are all alike.
pub trait SamePayload {
    fn same(&self, other: &Self) -> bool;
}

impl SamePayload for Payload {
    fn same(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl SamePayload for Unread {
    fn same(&self, _other: &Self) -> bool {
        true
    }
}

/// Delivery context of an `EVENT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct DeliveryCtx {
    /// 1 on first delivery.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_deadline: Option<Millis>,
    /// True while replaying latest-by-key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
}

impl DeliveryCtx {
    pub fn first() -> Self {
        DeliveryCtx {
            attempt: 1,
            ack_deadline: None,
            snapshot: None,
        }
    }
}

/// `EVENT`: `topic` and `group` are the subscription's, exactly as the client
/// sent them, so the client finds its handler by `topic::group`. `E` is the
/// event: an [`Event`] as read, or (the hub, [`encode_event_delivery`]) one
/// serialized already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
#[serde(bound(deserialize = "E: Deserialize<'de>"))]
pub struct EventDelivery<E = Event> {
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Pattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub group: Option<Group>,
    #[serde(deserialize_with = "object_only::required")]
    #[cfg_attr(feature = "ts", tsify(type = "Event", type_params = ""))]
    pub event: E,
    #[serde(deserialize_with = "object_only::required")]
    pub ctx: DeliveryCtx,
}

/// `EXPIRING`: the token is about to expire; send a fresh `AUTH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Expiring {
    pub expires_at: Millis,
}

/// A frame the hub sends to a client; `E` as in [`EventDelivery`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
#[serde(tag = "op", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HubFrame<E = Event> {
    Ok(Welcome),
    Err(ErrorFrame),
    Puback(PubAck),
    Suback(SubAck),
    Unsuback(UnsubAck),
    Event(
        #[cfg_attr(feature = "ts", tsify(type = "EventDelivery", type_params = ""))]
        EventDelivery<E>,
    ),
    Ping(Ping),
    Pong(Ping),
    Expiring(Expiring),
}

// ---------------------------------------------------------------------------
// Encoding

/// Serializes a frame to its JSON text.
pub fn encode<T: Serialize>(frame: &T) -> String {
    // Frames contain only strings, integers, maps with string keys and raw
    // JSON that was valid when it was made, so serialization cannot fail.
    serde_json::to_string(frame).unwrap_or_else(|e| {
        // Unreachable in practice; report rather than panic (the message
        // is a JSON string, so the frame stays valid JSON).
        let msg = serde_json::to_string(&format!("encode failed: {e}"))
            .unwrap_or_else(|_| r#""encode failed""#.to_owned());
        format!(r#"{{"op":"ERR","code":"internal","msg":{msg}}}"#)
    })
}

impl ClientFrame {
    pub fn encode(&self) -> String {
        encode(self)
    }
}

impl HubFrame {
    pub fn encode(&self) -> String {
        encode(self)
    }
}

/// Encodes an `EVENT` whose event object is already serialized. The hub
/// serializes each event once and reuses that text for every subscriber.
pub fn encode_event_delivery(
    subscription: &Pattern,
    group: Option<&Group>,
    event_json: &RawValue,
    ctx: &DeliveryCtx,
) -> String {
    encode(&HubFrame::Event(EventDelivery {
        topic: subscription.clone(),
        group: group.cloned(),
        event: event_json,
        ctx: ctx.clone(),
    }))
}

// ---------------------------------------------------------------------------
// Close codes

/// WebSocket close codes (protocol.md) and what a client does after each.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame over the hard size limit (not read).
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const AUTH_FAILED: u16 = 4001;
    pub const FORBIDDEN: u16 = 4003;
    pub const PROTOCOL_VIOLATION: u16 = 4008;
    pub const SLOW_CONSUMER: u16 = 4009;
    pub const RATE_LIMITED: u16 = 4029;

    /// Codes after which a client must not reconnect on its own: a normal
    /// close, a token that will not work again, or a protocol violation.
    pub fn is_terminal(code: u16) -> bool {
        matches!(code, NORMAL | AUTH_FAILED | FORBIDDEN | PROTOCOL_VIOLATION)
    }

    /// The reason of a [`RATE_LIMITED`] close: when to reconnect.
    pub fn rate_limited_reason(retry_after_ms: u64) -> String {
        format!(r#"{{"retry_after_ms":{retry_after_ms}}}"#)
    }

    /// The delay a [`RATE_LIMITED`] close asks for: its reason is a number
    /// of ms, or JSON with just `retry_after_ms` (what
    /// [`rate_limited_reason`] writes). Read without a JSON parser, which
    /// would cost the browser SDK more wasm than the rest of this module.
    pub fn retry_after(reason: &str) -> Option<u64> {
        let reason = reason.trim();
        if let Ok(ms) = reason.parse() {
            return Some(ms);
        }
        let entry = reason.strip_prefix('{')?.strip_suffix('}')?;
        let (key, value) = entry.split_once(':')?;
        if key.trim() != r#""retry_after_ms""# {
            return None;
        }
        value.trim().parse().ok()
    }

    #[cfg(all(test, not(target_arch = "wasm32")))]
    mod tests {
        use proptest::prelude::*;

        use super::{rate_limited_reason, retry_after};

        #[test]
        fn retry_after_is_read_from_a_number_or_json() {
            assert_eq!(retry_after("1500"), Some(1500));
            assert_eq!(retry_after(" 20 "), Some(20));
            assert_eq!(retry_after(r#"{"retry_after_ms":700}"#), Some(700));
            assert_eq!(retry_after(r#" { "retry_after_ms" : 700 } "#), Some(700));
            assert_eq!(retry_after("slow down"), None);
            assert_eq!(retry_after(r#"{"retry_after_ms":-1}"#), None);
            assert_eq!(retry_after(r#"{"retry_after_ms":1.5}"#), None);
            assert_eq!(retry_after(r#"{"other":7}"#), None);
            assert_eq!(retry_after(r#"{"retry_after_ms":"7"}"#), None);
            assert_eq!(retry_after(""), None);
        }

        proptest! {
            /// Whatever the hub writes is read back, and the reason is the
            /// JSON object serde_json reads the same number from.
            #[test]
            fn reasons_round_trip(ms in any::<u64>()) {
                let reason = rate_limited_reason(ms);
                prop_assert_eq!(retry_after(&reason), Some(ms));
                let json: serde_json::Value = serde_json::from_str(&reason).unwrap();
                prop_assert_eq!(json, serde_json::json!({ "retry_after_ms": ms }));
            }
        }
    }
}
