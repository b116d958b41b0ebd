//! Wire protocol v1 (protocol.md): every frame as a Rust type.
//!
//! Frames are JSON text objects tagged by `op`. Encoding is plain serde;
//! decoding goes through [`ClientFrame::decode`], which reads `op` first and
//! then the one struct it names, and [`HubFrame::decode`], which reads a
//! frame in one pass (every client decodes every `EVENT`; see `hub_decode`).
//! Both keep payloads as raw JSON ([`Payload`]) — the hub never re-parses or
//! re-encodes what publishers send — and let an error carry the frame's
//! `rid` so the peer can match it to its request.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::object_only::{self, ObjectOnly};
use crate::topic::{Pattern, Topic};

mod hub_decode;

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

/// `PUBLISH`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Publish {
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Topic,
    #[cfg_attr(feature = "ts", tsify(type = "unknown"))]
    pub payload: Payload,
    #[serde(
        default,
        skip_serializing_if = "opts_empty",
        deserialize_with = "object_only::optional"
    )]
    pub opts: Option<PublishOpts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
}

/// Payloads compare by their JSON text: `RawValue` has no equality.
impl PartialEq for Publish {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.payload.get() == other.payload.get()
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

/// A frame a client sends to the hub.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
#[serde(tag = "op", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientFrame {
    Auth(Auth),
    Publish(Publish),
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

/// A stored event as delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Event {
    pub id: String,
    pub seq: u64,
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Topic,
    pub ts: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[cfg_attr(feature = "ts", tsify(type = "unknown"))]
    pub payload: Payload,
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

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.seq == other.seq
            && self.topic == other.topic
            && self.ts == other.ts
            && self.key == other.key
            && self.payload.get() == other.payload.get()
            && self.headers == other.headers
            && self.tags == other.tags
            && self.caused_by == other.caused_by
            && self.sid == other.sid
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
/// sent them, so the client finds its handler by `topic::group`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct EventDelivery {
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub topic: Pattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", tsify(type = "string"))]
    pub group: Option<Group>,
    #[serde(deserialize_with = "object_only::required")]
    pub event: Event,
    #[serde(deserialize_with = "object_only::required")]
    pub ctx: DeliveryCtx,
}

/// `EXPIRING`: the token is about to expire; send a fresh `AUTH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
pub struct Expiring {
    pub expires_at: Millis,
}

/// A frame the hub sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(tsify::Tsify))]
#[serde(tag = "op", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HubFrame {
    Ok(Welcome),
    Err(ErrorFrame),
    Puback(PubAck),
    Suback(SubAck),
    Unsuback(UnsubAck),
    Event(EventDelivery),
    Ping(Ping),
    Pong(Ping),
    Expiring(Expiring),
}

// ---------------------------------------------------------------------------
// Encoding

/// Serializes a frame to its JSON text.
pub fn encode<T: Serialize>(frame: &T) -> String {
    // Frames contain only strings, numbers, maps with string keys and raw
    // JSON that was valid when it was parsed, so serialization cannot fail.
    crate::json_text::to_string(frame).unwrap_or_else(|e| {
        // Unreachable in practice; report rather than panic. The message
        // goes through the string writer (which cannot fail) so that it is
        // escaped into valid JSON.
        let msg = crate::json_text::to_string(&format!("encode failed: {e}"))
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
    #[derive(Serialize)]
    struct EventDeliveryRef<'a> {
        op: &'static str,
        topic: &'a Pattern,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<&'a Group>,
        event: &'a RawValue,
        ctx: &'a DeliveryCtx,
    }
    encode(&EventDeliveryRef {
        op: "EVENT",
        topic: subscription,
        group,
        event: event_json,
        ctx,
    })
}

// ---------------------------------------------------------------------------
// Decoding

/// A frame that could not be decoded. Maps to `ERR bad_request`; `rid` is the
/// frame's request id when one could be read, so the error can carry it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub rid: Option<Rid>,
    pub op: Option<String>,
    pub kind: DecodeErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Not JSON, or not an object.
    Malformed,
    /// No `op`, or an `op` this version does not know.
    UnknownOp,
    /// A known `op` with missing or wrongly typed fields, or an invalid topic.
    InvalidFields,
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }

    /// The `ERR` frame to answer with.
    pub fn to_error_frame(&self) -> ErrorFrame {
        ErrorFrame::new(
            ErrorCode::BadRequest,
            self.message.clone(),
            self.rid.clone(),
        )
    }
}

/// What every frame has in common: read first to pick the struct to decode.
/// Both fields are read loosely so that an `op` or `rid` of the wrong type
/// is reported as such, with the rid when there is a usable one, instead of
/// making the whole frame "malformed".
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    op: Option<LooseString>,
    #[serde(default)]
    rid: Option<LooseString>,
}

/// A value kept when it is a JSON string and skipped otherwise. Written by
/// hand rather than as an untagged enum: `#[serde(untagged)]` buffers the
/// value into serde's generic `Content` tree first, which costs time and a
/// lot of wasm code for two fields.
enum LooseString {
    Text(String),
    Other,
}

impl LooseString {
    fn into_text(self) -> Option<String> {
        match self {
            LooseString::Text(s) => Some(s),
            LooseString::Other => None,
        }
    }
}

impl<'de> Deserialize<'de> for LooseString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = LooseString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LooseString, E> {
                Ok(LooseString::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<LooseString, E> {
                Ok(LooseString::Text(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<LooseString, E> {
                Ok(LooseString::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<LooseString, E> {
                Ok(LooseString::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<LooseString, E> {
                Ok(LooseString::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<LooseString, E> {
                Ok(LooseString::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<LooseString, E> {
                Ok(LooseString::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<LooseString, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LooseString::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<LooseString, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LooseString::Other)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The frame's `op` as found in the text.
enum HeadOp {
    Missing,
    NotAString,
    Name(String),
}

fn decode_head(text: &str) -> Result<(HeadOp, Option<Rid>), DecodeError> {
    head_from(serde_json::from_str::<ObjectOnly<Head>>(text))
}

/// `op` and `rid` from a head as read (by serde_json or `json_text`).
fn head_from<E: fmt::Display>(
    read: Result<ObjectOnly<Head>, E>,
) -> Result<(HeadOp, Option<Rid>), DecodeError> {
    match read {
        Ok(ObjectOnly(head)) => {
            let op = match head.op {
                None => HeadOp::Missing,
                Some(LooseString::Text(name)) => HeadOp::Name(name),
                Some(LooseString::Other) => HeadOp::NotAString,
            };
            Ok((op, head.rid.and_then(LooseString::into_text)))
        }
        Err(e) => Err(DecodeError {
            rid: None,
            op: None,
            kind: DecodeErrorKind::Malformed,
            message: format!("malformed frame: {e}"),
        }),
    }
}

/// The request id of a frame without decoding the rest of it: lets a peer
/// refuse a frame (e.g. one over the size limit) with an error the sender
/// can match to its request. `None` when the text has no string `rid`.
pub fn peek_rid(text: &str) -> Option<Rid> {
    decode_head(text).ok().and_then(|(_, rid)| rid)
}

fn decode_body<'a, T: Deserialize<'a>>(
    text: &'a str,
    op: &str,
    rid: &Option<Rid>,
) -> Result<T, DecodeError> {
    serde_json::from_str::<T>(text).map_err(|e| DecodeError {
        rid: rid.clone(),
        op: Some(op.to_owned()),
        kind: DecodeErrorKind::InvalidFields,
        message: format!("invalid {op} frame: {e}"),
    })
}

fn unknown_op(op: HeadOp, rid: Option<Rid>) -> DecodeError {
    let (op, message) = match op {
        HeadOp::Missing => (None, "frame has no op".to_owned()),
        HeadOp::NotAString => (None, "frame's op is not a string".to_owned()),
        HeadOp::Name(op) => {
            let message = format!("unknown op {}", crate::json_text::Quoted(&op));
            (Some(op), message)
        }
    };
    DecodeError {
        rid,
        op,
        kind: DecodeErrorKind::UnknownOp,
        message,
    }
}

impl ClientFrame {
    /// Decodes one text frame. Never panics, whatever the input.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        let (op, rid) = decode_head(text)?;
        let HeadOp::Name(name) = &op else {
            return Err(unknown_op(op, rid));
        };
        let name = name.as_str();
        Ok(match name {
            "AUTH" => ClientFrame::Auth(decode_body(text, name, &rid)?),
            "PUBLISH" => ClientFrame::Publish(decode_body(text, name, &rid)?),
            "SUBSCRIBE" => ClientFrame::Subscribe(decode_body(text, name, &rid)?),
            "UNSUBSCRIBE" => ClientFrame::Unsubscribe(decode_body(text, name, &rid)?),
            "ACK" => ClientFrame::Ack(decode_body(text, name, &rid)?),
            "NACK" => ClientFrame::Nack(decode_body(text, name, &rid)?),
            "WORKING" => ClientFrame::Working(decode_body(text, name, &rid)?),
            "PING" => ClientFrame::Ping(decode_body(text, name, &rid)?),
            "PONG" => ClientFrame::Pong(decode_body(text, name, &rid)?),
            _ => return Err(unknown_op(op, rid)),
        })
    }

    /// The frame's request id, if it has one.
    pub fn rid(&self) -> Option<&str> {
        match self {
            ClientFrame::Publish(f) => f.rid.as_deref(),
            ClientFrame::Subscribe(f) => f.rid.as_deref(),
            ClientFrame::Unsubscribe(f) => f.rid.as_deref(),
            ClientFrame::Ping(f) | ClientFrame::Pong(f) => f.rid.as_deref(),
            ClientFrame::Auth(_)
            | ClientFrame::Ack(_)
            | ClientFrame::Nack(_)
            | ClientFrame::Working(_) => None,
        }
    }

    /// The `op` name, for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            ClientFrame::Auth(_) => "AUTH",
            ClientFrame::Publish(_) => "PUBLISH",
            ClientFrame::Subscribe(_) => "SUBSCRIBE",
            ClientFrame::Unsubscribe(_) => "UNSUBSCRIBE",
            ClientFrame::Ack(_) => "ACK",
            ClientFrame::Nack(_) => "NACK",
            ClientFrame::Working(_) => "WORKING",
            ClientFrame::Ping(_) => "PING",
            ClientFrame::Pong(_) => "PONG",
        }
    }
}

impl HubFrame {
    /// Decodes one text frame from the hub. Never panics, whatever the input.
    /// Reads the text once in the common case (see `hub_decode`).
    pub fn decode(text: &str) -> Result<HubFrame, DecodeError> {
        hub_decode::decode(text)
    }

    /// The `op` name, for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            HubFrame::Ok(_) => "OK",
            HubFrame::Err(_) => "ERR",
            HubFrame::Puback(_) => "PUBACK",
            HubFrame::Suback(_) => "SUBACK",
            HubFrame::Unsuback(_) => "UNSUBACK",
            HubFrame::Event(_) => "EVENT",
            HubFrame::Ping(_) => "PING",
            HubFrame::Pong(_) => "PONG",
            HubFrame::Expiring(_) => "EXPIRING",
        }
    }
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
}
