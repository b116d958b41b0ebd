//! Decoding frames: read the frame's head (`op` and `rid`), then the one
//! struct its `op` names, with that struct's derived `Deserialize`. The
//! same steps whatever holds the frame ([`FrameSource`]): JSON text, read
//! by serde_json, or (feature `js`) the JavaScript value `JSON.parse` made
//! of it.

use std::fmt;

use serde::de::{self, DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};

use super::{ClientFrame, ErrorCode, ErrorFrame, HubFrame, Rid};
use crate::object_only::ObjectOnly;
use crate::quoted::Quoted;

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

/// Where a frame is read from: any serde data format that can be read
/// twice (the head, then the frame's struct).
pub(crate) trait FrameSource {
    type Error: fmt::Display;
    fn read<T: DeserializeOwned>(&self) -> Result<T, Self::Error>;
}

/// JSON text, read by serde_json.
pub(crate) struct JsonText<'a>(pub(crate) &'a str);

impl FrameSource for JsonText<'_> {
    type Error = serde_json::Error;
    fn read<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0)
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

/// A value kept when it is a string and skipped otherwise. Written by hand
/// rather than as an untagged enum: `#[serde(untagged)]` buffers the value
/// into serde's generic `Content` tree first, which costs time and a lot of
/// wasm code for two fields.
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

/// The frame's `op` as found.
enum HeadOp {
    Missing,
    NotAString,
    Name(String),
}

/// `op` and `rid`; an error when the source is not one JSON object.
fn read_head<S: FrameSource>(source: &S) -> Result<(HeadOp, Option<Rid>), DecodeError> {
    match source.read::<ObjectOnly<Head>>() {
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
    read_head(&JsonText(text)).ok().and_then(|(_, rid)| rid)
}

fn unknown_op(op: HeadOp, rid: Option<Rid>) -> DecodeError {
    let (op, message) = match op {
        HeadOp::Missing => (None, "frame has no op".to_owned()),
        HeadOp::NotAString => (None, "frame's op is not a string".to_owned()),
        HeadOp::Name(op) => {
            let message = format!("unknown op {}", Quoted(&op));
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

/// A frame enum: the struct each `op` names.
pub(crate) trait Frame: Sized {
    /// The frame of `op`, read from `source`; `None` for an op that is not
    /// one of this enum's.
    fn read_op<S: FrameSource>(op: &str, source: &S) -> Option<Result<Self, S::Error>>;
}

impl Frame for ClientFrame {
    fn read_op<S: FrameSource>(op: &str, source: &S) -> Option<Result<Self, S::Error>> {
        Some(match op {
            "AUTH" => source.read().map(ClientFrame::Auth),
            "PUBLISH" => source.read().map(ClientFrame::Publish),
            "SUBSCRIBE" => source.read().map(ClientFrame::Subscribe),
            "UNSUBSCRIBE" => source.read().map(ClientFrame::Unsubscribe),
            "ACK" => source.read().map(ClientFrame::Ack),
            "NACK" => source.read().map(ClientFrame::Nack),
            "WORKING" => source.read().map(ClientFrame::Working),
            "PING" => source.read().map(ClientFrame::Ping),
            "PONG" => source.read().map(ClientFrame::Pong),
            _ => return None,
        })
    }
}

impl<E: DeserializeOwned> Frame for HubFrame<E> {
    fn read_op<S: FrameSource>(op: &str, source: &S) -> Option<Result<Self, S::Error>> {
        Some(match op {
            "OK" => source.read().map(HubFrame::Ok),
            "ERR" => source.read().map(HubFrame::Err),
            "PUBACK" => source.read().map(HubFrame::Puback),
            "SUBACK" => source.read().map(HubFrame::Suback),
            "UNSUBACK" => source.read().map(HubFrame::Unsuback),
            "EVENT" => source.read().map(HubFrame::Event),
            "PING" => source.read().map(HubFrame::Ping),
            "PONG" => source.read().map(HubFrame::Pong),
            "EXPIRING" => source.read().map(HubFrame::Expiring),
            _ => return None,
        })
    }
}

/// Decodes one frame of `F` from `source`. Never panics, whatever the input.
pub(crate) fn decode<F: Frame, S: FrameSource>(source: &S) -> Result<F, DecodeError> {
    let (op, rid) = read_head(source)?;
    let HeadOp::Name(name) = &op else {
        return Err(unknown_op(op, rid));
    };
    match F::read_op(name, source) {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => {
            let message = format!("invalid {name} frame: {e}");
            Err(DecodeError {
                rid,
                op: Some(name.clone()),
                kind: DecodeErrorKind::InvalidFields,
                message,
            })
        }
        None => Err(unknown_op(op, rid)),
    }
}

impl ClientFrame {
    /// Decodes one text frame. Never panics, whatever the input.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        decode(&JsonText(text))
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
}

impl<P> ClientFrame<P> {
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
    pub fn decode(text: &str) -> Result<HubFrame, DecodeError> {
        decode(&JsonText(text))
    }
}

impl<E> HubFrame<E> {
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
