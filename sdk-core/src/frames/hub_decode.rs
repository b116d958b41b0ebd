//! Single-pass decoding of hub frames ([`HubFrame::decode`]).
//!
//! A client decodes every frame the hub sends, most of them `EVENT`s, so
//! this path reads the text once: one visitor collects the fields of every
//! hub frame, reading `op` as it goes, and the frame is then assembled from
//! the fields its `op` has. The hub writes `op` first, so by the time the
//! other fields come the visitor knows which ones belong to the frame and
//! skips the rest unparsed, exactly as a per-op struct would ignore them.
//!
//! Failures take a slow path that reproduces the per-op semantics whatever
//! the key order: read `op` and `rid` loosely (for the error), then decode
//! again with the op known up front. Errors are rare; the common case pays
//! for one parse, and the browser SDK's wasm carries one visitor instead of
//! a derived one per frame struct.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{
    DecodeError, DecodeErrorKind, DeliveryCtx, ErrorCode, ErrorFrame, Event, EventDelivery,
    Expiring, Group, Head, HeadOp, HubFrame, LooseString, Millis, Ping, PubAck, SubAck, UnsubAck,
    Welcome, head_from, unknown_op,
};
use crate::object_only::ObjectOnly;
use crate::topic::Pattern;

/// The ops a hub sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HubOp {
    Ok,
    Err,
    Puback,
    Suback,
    Unsuback,
    Event,
    Ping,
    Pong,
    Expiring,
}

impl HubOp {
    fn parse(name: &str) -> Option<HubOp> {
        Some(match name {
            "OK" => HubOp::Ok,
            "ERR" => HubOp::Err,
            "PUBACK" => HubOp::Puback,
            "SUBACK" => HubOp::Suback,
            "UNSUBACK" => HubOp::Unsuback,
            "EVENT" => HubOp::Event,
            "PING" => HubOp::Ping,
            "PONG" => HubOp::Pong,
            "EXPIRING" => HubOp::Expiring,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            HubOp::Ok => "OK",
            HubOp::Err => "ERR",
            HubOp::Puback => "PUBACK",
            HubOp::Suback => "SUBACK",
            HubOp::Unsuback => "UNSUBACK",
            HubOp::Event => "EVENT",
            HubOp::Ping => "PING",
            HubOp::Pong => "PONG",
            HubOp::Expiring => "EXPIRING",
        }
    }

    /// Does a frame of this op have the field? (protocol.md, and the
    /// structs in `frames`.)
    fn has(self, field: Field) -> bool {
        use Field as F;
        match self {
            HubOp::Ok => matches!(
                field,
                F::V | F::Session | F::Server | F::HeartbeatMs | F::ExpiresAt
            ),
            HubOp::Err => matches!(field, F::Code | F::Msg | F::Rid | F::RetryAfterMs),
            HubOp::Puback => matches!(field, F::Rid | F::Id | F::Seq | F::Duplicate),
            HubOp::Suback => matches!(field, F::Rid | F::Topic | F::Group | F::FromSeq),
            HubOp::Unsuback => matches!(field, F::Rid | F::Topic | F::Group),
            HubOp::Event => matches!(field, F::Topic | F::Group | F::Event | F::Ctx),
            HubOp::Ping | HubOp::Pong => field == F::Rid,
            HubOp::Expiring => field == F::ExpiresAt,
        }
    }
}

/// Every key of every hub frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Op,
    Rid,
    V,
    Session,
    Server,
    HeartbeatMs,
    ExpiresAt,
    Code,
    Msg,
    RetryAfterMs,
    Id,
    Seq,
    Duplicate,
    Topic,
    Group,
    FromSeq,
    Event,
    Ctx,
    /// A key no hub frame has: ignored (forward compatibility).
    Unknown,
}

impl Field {
    fn bit(self) -> u32 {
        1 << self as u32
    }

    fn name(self) -> &'static str {
        match self {
            Field::Op => "op",
            Field::Rid => "rid",
            Field::V => "v",
            Field::Session => "session",
            Field::Server => "server",
            Field::HeartbeatMs => "heartbeat_ms",
            Field::ExpiresAt => "expires_at",
            Field::Code => "code",
            Field::Msg => "msg",
            Field::RetryAfterMs => "retry_after_ms",
            Field::Id => "id",
            Field::Seq => "seq",
            Field::Duplicate => "duplicate",
            Field::Topic => "topic",
            Field::Group => "group",
            Field::FromSeq => "from_seq",
            Field::Event => "event",
            Field::Ctx => "ctx",
            Field::Unknown => "",
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "op" => Field::Op,
                    "rid" => Field::Rid,
                    "v" => Field::V,
                    "session" => Field::Session,
                    "server" => Field::Server,
                    "heartbeat_ms" => Field::HeartbeatMs,
                    "expires_at" => Field::ExpiresAt,
                    "code" => Field::Code,
                    "msg" => Field::Msg,
                    "retry_after_ms" => Field::RetryAfterMs,
                    "id" => Field::Id,
                    "seq" => Field::Seq,
                    "duplicate" => Field::Duplicate,
                    "topic" => Field::Topic,
                    "group" => Field::Group,
                    "from_seq" => Field::FromSeq,
                    "event" => Field::Event,
                    "ctx" => Field::Ctx,
                    _ => Field::Unknown,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// The fields of any hub frame, as read (absent and `null` are `None`).
#[derive(Default)]
struct Fields {
    /// Which fields were `null` (bit `Field as u32`): refused where the
    /// frame's struct has no `Option` for them, as serde would.
    nulls: u32,
    op: Option<LooseString>,
    rid: Option<LooseString>,
    v: Option<u32>,
    session: Option<String>,
    server: Option<String>,
    heartbeat_ms: Option<u64>,
    expires_at: Option<Millis>,
    code: Option<ErrorCode>,
    msg: Option<String>,
    retry_after_ms: Option<u64>,
    id: Option<String>,
    seq: Option<u64>,
    duplicate: Option<bool>,
    topic: Option<Pattern>,
    group: Option<Group>,
    from_seq: Option<u64>,
    event: Option<ObjectOnly<Event>>,
    ctx: Option<ObjectOnly<DeliveryCtx>>,
}

/// Reads the fields of one frame; with `op` known up front, fields of
/// other ops are skipped unparsed.
struct FieldsSeed {
    op: Option<HubOp>,
}

impl<'de> DeserializeSeed<'de> for FieldsSeed {
    type Value = Fields;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Fields, D::Error> {
        // `deserialize_map`: a JSON array is refused, never read by position.
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        /// Stores the next value in `slot`, refusing a second occurrence.
        fn store<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
            nulls: &mut u32,
            field: Field,
        ) -> Result<(), A::Error> {
            if slot.is_some() || *nulls & field.bit() != 0 {
                return Err(de::Error::duplicate_field(field.name()));
            }
            *slot = map.next_value()?;
            if slot.is_none() {
                *nulls |= field.bit();
            }
            Ok(())
        }

        let mut op = self.op;
        let mut fields = Fields::default();
        while let Some(field) = map.next_key::<Field>()? {
            let wanted = match (field, op) {
                (Field::Op | Field::Rid, _) => true,
                (Field::Unknown, _) => false,
                (_, Some(op)) => op.has(field),
                // `op` not read yet: parse everything, sort it out later.
                (_, None) => true,
            };
            if !wanted {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let f = &mut fields;
            match field {
                Field::Op => {
                    store(&mut map, &mut f.op, &mut f.nulls, field)?;
                    if op.is_none()
                        && let Some(LooseString::Text(name)) = &f.op
                    {
                        op = HubOp::parse(name);
                    }
                }
                Field::Rid => store(&mut map, &mut f.rid, &mut f.nulls, field)?,
                Field::V => store(&mut map, &mut f.v, &mut f.nulls, field)?,
                Field::Session => store(&mut map, &mut f.session, &mut f.nulls, field)?,
                Field::Server => store(&mut map, &mut f.server, &mut f.nulls, field)?,
                Field::HeartbeatMs => store(&mut map, &mut f.heartbeat_ms, &mut f.nulls, field)?,
                Field::ExpiresAt => store(&mut map, &mut f.expires_at, &mut f.nulls, field)?,
                Field::Code => store(&mut map, &mut f.code, &mut f.nulls, field)?,
                Field::Msg => store(&mut map, &mut f.msg, &mut f.nulls, field)?,
                Field::RetryAfterMs => store(&mut map, &mut f.retry_after_ms, &mut f.nulls, field)?,
                Field::Id => store(&mut map, &mut f.id, &mut f.nulls, field)?,
                Field::Seq => store(&mut map, &mut f.seq, &mut f.nulls, field)?,
                Field::Duplicate => store(&mut map, &mut f.duplicate, &mut f.nulls, field)?,
                Field::Topic => store(&mut map, &mut f.topic, &mut f.nulls, field)?,
                Field::Group => store(&mut map, &mut f.group, &mut f.nulls, field)?,
                Field::FromSeq => store(&mut map, &mut f.from_seq, &mut f.nulls, field)?,
                Field::Event => store(&mut map, &mut f.event, &mut f.nulls, field)?,
                Field::Ctx => store(&mut map, &mut f.ctx, &mut f.nulls, field)?,
                Field::Unknown => {}
            }
        }
        Ok(fields)
    }
}

/// `Some(value)`, or why the field is not there: absent, or `null`.
fn required<T>(value: Option<T>, field: Field, nulls: u32) -> Result<T, String> {
    value.ok_or_else(|| {
        if nulls & field.bit() != 0 {
            format!(
                "invalid type: null, expected a value for field `{}`",
                field.name()
            )
        } else {
            format!("missing field `{}`", field.name())
        }
    })
}

/// A field that may be absent but not `null` (a `#[serde(default)]`
/// field without `Option`).
fn not_null<T>(value: Option<T>, field: Field, nulls: u32) -> Result<Option<T>, String> {
    if value.is_none() && nulls & field.bit() != 0 {
        return required(value, field, nulls).map(Some);
    }
    Ok(value)
}

impl Fields {
    /// The request id as the frame's own field: absent is `None`, any
    /// other type than a string is refused.
    fn typed_rid(&mut self) -> Result<Option<String>, String> {
        match self.rid.take() {
            None => Ok(None),
            Some(LooseString::Text(rid)) => Ok(Some(rid)),
            Some(LooseString::Other) => {
                Err("invalid type for field `rid`, expected a string".into())
            }
        }
    }

    /// Assembles the frame of `op` from its fields; `Err` is the message
    /// of an invalid (e.g. incomplete) frame.
    fn into_frame(mut self, op: HubOp) -> Result<HubFrame, String> {
        let nulls = self.nulls;
        Ok(match op {
            HubOp::Ok => HubFrame::Ok(Welcome {
                v: required(self.v, Field::V, nulls)?,
                session: required(self.session, Field::Session, nulls)?,
                server: required(self.server, Field::Server, nulls)?,
                heartbeat_ms: required(self.heartbeat_ms, Field::HeartbeatMs, nulls)?,
                expires_at: self.expires_at,
            }),
            HubOp::Err => HubFrame::Err(ErrorFrame {
                rid: self.typed_rid()?,
                code: required(self.code, Field::Code, nulls)?,
                msg: required(self.msg, Field::Msg, nulls)?,
                retry_after_ms: self.retry_after_ms,
            }),
            HubOp::Puback => HubFrame::Puback(PubAck {
                rid: required(self.typed_rid()?, Field::Rid, nulls)?,
                id: required(self.id, Field::Id, nulls)?,
                seq: required(self.seq, Field::Seq, nulls)?,
                duplicate: not_null(self.duplicate, Field::Duplicate, nulls)?.unwrap_or(false),
            }),
            HubOp::Suback => HubFrame::Suback(SubAck {
                rid: self.typed_rid()?,
                topic: required(self.topic, Field::Topic, nulls)?,
                group: self.group,
                from_seq: required(self.from_seq, Field::FromSeq, nulls)?,
            }),
            HubOp::Unsuback => HubFrame::Unsuback(UnsubAck {
                rid: self.typed_rid()?,
                topic: required(self.topic, Field::Topic, nulls)?,
                group: self.group,
            }),
            HubOp::Event => HubFrame::Event(EventDelivery {
                topic: required(self.topic, Field::Topic, nulls)?,
                group: self.group,
                event: required(self.event, Field::Event, nulls)?.0,
                ctx: required(self.ctx, Field::Ctx, nulls)?.0,
            }),
            HubOp::Ping => HubFrame::Ping(Ping {
                rid: self.typed_rid()?,
            }),
            HubOp::Pong => HubFrame::Pong(Ping {
                rid: self.typed_rid()?,
            }),
            HubOp::Expiring => HubFrame::Expiring(Expiring {
                expires_at: required(self.expires_at, Field::ExpiresAt, nulls)?,
            }),
        })
    }
}

/// How the frame text is read: `json_text` in production (no float
/// parsing or formatting in the browser SDK's wasm); serde_json in the
/// tests, which check both agree.
trait FrameReader {
    type Error: fmt::Display;
    fn fields(text: &str, op: Option<HubOp>) -> Result<Fields, Self::Error>;
    fn head(text: &str) -> Result<(HeadOp, Option<String>), DecodeError>;
}

/// [`crate::json_text`].
struct JsonTextReader;

impl FrameReader for JsonTextReader {
    type Error = crate::json_text::JsonError;
    fn fields(text: &str, op: Option<HubOp>) -> Result<Fields, Self::Error> {
        crate::json_text::from_str_seed(text, FieldsSeed { op })
    }
    fn head(text: &str) -> Result<(HeadOp, Option<String>), DecodeError> {
        head_from(crate::json_text::from_str::<ObjectOnly<Head>>(text))
    }
}

fn invalid(op: HubOp, rid: Option<String>, message: impl fmt::Display) -> DecodeError {
    DecodeError {
        rid,
        op: Some(op.name().to_owned()),
        kind: DecodeErrorKind::InvalidFields,
        message: format!("invalid {} frame: {message}", op.name()),
    }
}

/// [`HubFrame::decode`].
pub(super) fn decode(text: &str) -> Result<HubFrame, DecodeError> {
    decode_with::<JsonTextReader>(text)
}

fn decode_with<R: FrameReader>(text: &str) -> Result<HubFrame, DecodeError> {
    match R::fields(text, None) {
        Ok(mut fields) => {
            let (op, rid) = match fields.op.take() {
                None => (HeadOp::Missing, fields.rid.take()),
                Some(LooseString::Other) => (HeadOp::NotAString, fields.rid.take()),
                Some(LooseString::Text(name)) => match HubOp::parse(&name) {
                    Some(op) => {
                        let rid = match &fields.rid {
                            Some(LooseString::Text(rid)) => Some(rid.clone()),
                            _ => None,
                        };
                        return fields
                            .into_frame(op)
                            .map_err(|message| invalid(op, rid, message));
                    }
                    None => (HeadOp::Name(name), fields.rid.take()),
                },
            };
            Err(unknown_op(op, rid.and_then(LooseString::into_text)))
        }
        Err(_) => decode_slowly::<R>(text),
    }
}

/// After a failed single pass: find `op` and `rid` on their own, then
/// decode again knowing the op, so that fields of other ops are ignored
/// wherever they stand and the error names the frame.
#[cold]
fn decode_slowly<R: FrameReader>(text: &str) -> Result<HubFrame, DecodeError> {
    let (head_op, rid) = R::head(text)?;
    let op = match &head_op {
        HeadOp::Name(name) => HubOp::parse(name),
        HeadOp::Missing | HeadOp::NotAString => None,
    };
    let Some(op) = op else {
        return Err(unknown_op(head_op, rid));
    };
    match R::fields(text, Some(op)) {
        Ok(fields) => fields
            .into_frame(op)
            .map_err(|message| invalid(op, rid, message)),
        Err(e) => Err(invalid(op, rid, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json, the reference `json_text` is checked against.
    struct SerdeJsonReader;

    impl FrameReader for SerdeJsonReader {
        type Error = serde_json::Error;
        fn fields(text: &str, op: Option<HubOp>) -> Result<Fields, Self::Error> {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let fields = FieldsSeed { op }.deserialize(&mut deserializer)?;
            deserializer.end()?;
            Ok(fields)
        }
        fn head(text: &str) -> Result<(HeadOp, Option<String>), DecodeError> {
            super::super::decode_head(text)
        }
    }

    /// Both readers decode `text` to the same frame, or both refuse it the
    /// same way (messages may differ: floats are not spelled out).
    fn assert_same_decoding(text: &str) {
        let ours = decode_with::<JsonTextReader>(text);
        let reference = decode_with::<SerdeJsonReader>(text);
        match (&ours, &reference) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{text}");
                // And it is written back as serde_json writes it.
                assert_eq!(
                    crate::json_text::to_string(a).ok(),
                    serde_json::to_string(a).ok(),
                    "{text}"
                );
            }
            (Err(a), Err(b)) => {
                assert_eq!(
                    (a.kind, &a.rid, &a.op),
                    (b.kind, &b.rid, &b.op),
                    "{text}\n{a}\n{b}"
                );
            }
            _ => panic!("{text}: json_text {ours:?}, serde_json {reference:?}"),
        }
    }

    mod equivalence {
        use proptest::prelude::*;

        use super::assert_same_decoding;

        const KEYS: &[&str] = &[
            "op",
            "rid",
            "v",
            "session",
            "server",
            "heartbeat_ms",
            "expires_at",
            "code",
            "msg",
            "retry_after_ms",
            "id",
            "seq",
            "duplicate",
            "topic",
            "group",
            "from_seq",
            "event",
            "ctx",
            "other",
            r"o\u0070",
            "",
        ];
        const OPS: &[&str] = &[
            r#""OK""#,
            r#""ERR""#,
            r#""PUBACK""#,
            r#""SUBACK""#,
            r#""UNSUBACK""#,
            r#""EVENT""#,
            r#""PING""#,
            r#""PONG""#,
            r#""EXPIRING""#,
            r#""NOPE""#,
            r#""EV\u0045NT""#,
            "1",
            "null",
        ];
        /// Values of every JSON kind, valid and not, with the edge cases
        /// of both readers: escapes, surrogates, number forms, overflow.
        const VALUES: &[&str] = &[
            r#""a""#,
            r#""""#,
            r#""a/b.c""#,
            r#""s\u00e9""#,
            r#""\ud83d\ude00""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x""#,
            r#""\x""#,
            "\"a\u{1}b\"",
            r#""a\"b\\c\/\b\f\n\r\t""#,
            r#""é☃""#,
            r#""unterminated"#,
            r#""forbidden""#,
            r#""bad_request""#,
            r#""zzz""#,
            "0",
            "1",
            "42",
            "-1",
            "-0",
            "01",
            "1.5",
            "1.",
            ".5",
            "1e3",
            "1E+2",
            "1e-2",
            "1e",
            "-",
            "--1",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "4294967296",
            "true",
            "false",
            "null",
            "nul",
            "tru",
            "[]",
            "[1,2]",
            "[1,]",
            "[",
            "{}",
            r#"{"a":1}"#,
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{1:2}"#,
            r#"{"forbidden":null}"#,
            r#"{"id":"e1","seq":3,"topic":"a/b","ts":5,"payload":{"x":[1,2.5,"\u0041"]}}"#,
            r#"{"id":"e1","seq":3,"topic":"a/b","ts":5,"payload":1e400,"key":"k","headers":{"h":"v"},"tags":["t"],"caused_by":[],"sid":"s"}"#,
            r#"{"id":"e1","seq":3,"topic":"a/b","ts":5}"#,
            r#"{"id":"e1","seq":3,"topic":"a/b","ts":5,"payload":null,"payload":2}"#,
            r#"{"id":"e1","seq":-3,"topic":"a/b","ts":5,"payload":[]}"#,
            r#"{"id":"e1","seq":3,"topic":"a/+","ts":5,"payload":[}"#,
            r#"{"attempt":1}"#,
            r#"{"attempt":2,"ack_deadline":9,"snapshot":true}"#,
            r#"{"attempt":1.0}"#,
            "[1]",
        ];
        const SPACES: &[&str] = &["", " ", "\n", "\t "];
        const DAMAGE: &[u8] = &[
            b'"', b'\\', b',', b'}', b'{', b'[', b']', b':', b'0', b'-', b'e', b'.', b'n', 0x01,
            b' ',
        ];

        fn frame() -> impl Strategy<Value = String> {
            let field = (prop::sample::select(KEYS), prop::sample::select(VALUES));
            (
                prop::sample::select(OPS),
                0usize..4,
                prop::collection::vec(field, 0..7),
                prop::sample::select(SPACES),
                any::<bool>(),
            )
                .prop_map(|(op, op_at, fields, space, with_op)| {
                    let mut entries: Vec<String> = fields
                        .into_iter()
                        .map(|(key, value)| format!("\"{key}\":{space}{value}"))
                        .collect();
                    if with_op {
                        let at = op_at.min(entries.len());
                        entries.insert(at, format!("\"op\":{op}"));
                    }
                    format!("{space}{{{}}}{space}", entries.join(&format!(",{space}")))
                })
        }

        /// A generated frame, damaged: cut short, a byte replaced or
        /// inserted.
        fn damaged() -> impl Strategy<Value = String> {
            (
                frame(),
                any::<prop::sample::Index>(),
                0u8..3,
                prop::sample::select(DAMAGE),
            )
                .prop_map(|(text, at, how, byte)| {
                    let mut bytes = text.into_bytes();
                    let at = at.index(bytes.len() + 1);
                    match how {
                        0 => bytes.truncate(at),
                        1 if at < bytes.len() => bytes[at] = byte,
                        _ => bytes.insert(at, byte),
                    }
                    String::from_utf8_lossy(&bytes).into_owned()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn json_text_decodes_frames_as_serde_json_does(text in frame()) {
                assert_same_decoding(&text);
            }

            #[test]
            fn json_text_refuses_damaged_frames_as_serde_json_does(text in damaged()) {
                assert_same_decoding(&text);
            }
        }
    }

    #[test]
    fn json_text_and_serde_json_agree_on_edge_cases() {
        let event = r#""event":{"id":"e1","seq":3,"topic":"a/b","ts":5,"payload":PAYLOAD},"ctx":{"attempt":1}"#;
        for payload in [
            "1",
            "1.5e-3",
            "-0",
            "1e999",
            r#""\ud800""#,
            r#"{"a":[{"b":null}]}"#,
            "[1,]",
            "01",
            r#""a\u0001""#,
            "\"a\u{1}\"",
        ] {
            let body = event.replace("PAYLOAD", payload);
            assert_same_decoding(&format!(r#"{{"op":"EVENT","topic":"a/#",{body}}}"#));
            assert_same_decoding(&format!(r#"{{"topic":"a/#",{body},"op":"EVENT"}}"#));
        }
        // Nesting: payloads are skipped without a limit, values read into
        // types have serde_json's limit of 128.
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_same_decoding(&format!(
            r#"{{"op":"EVENT","topic":"a/#","event":{{"id":"e","seq":1,"topic":"a","ts":1,"payload":{deep}}},"ctx":{{"attempt":1}}}}"#
        ));
        for depth in [126, 127, 128, 129, 5000] {
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_same_decoding(&format!(r#"{{"op":"PING","rid":{nested}}}"#));
            assert_same_decoding(&format!(r#"{{"rid":{nested},"op":"PING"}}"#));
        }
        for text in [
            r#"{"op":"ERR","code":{"forbidden":null},"msg":"m"}"#,
            r#"{"op":"ERR","code":{"forbidden":1},"msg":"m"}"#,
            r#"{"op":"ERR","code":"\u0066orbidden","msg":"\ud83d\ude00"}"#,
            r#"{"op":"PUBACK","rid":"r","id":"e","seq":18446744073709551615}"#,
            r#"{"op":"PUBACK","rid":"r","id":"e","seq":18446744073709551616}"#,
            r#"{"op":"OK","v":4294967296,"session":"s","server":"x","heartbeat_ms":1}"#,
            r#"{"op":"OK","v":1.0,"session":"s","server":"x","heartbeat_ms":1}"#,
            r#"{"op":1.5,"rid":"r"}"#,
            r#"{"op":1e400,"rid":"r"}"#,
            r#"{"op":-1e400,"rid":"r"}"#,
            r#"{"op":1e-400,"rid":"r"}"#,
            &format!(r#"{{"op":1{}e-300,"rid":"r"}}"#, "0".repeat(400)),
            &format!(r#"{{"op":0.{}1,"rid":"r"}}"#, "0".repeat(400)),
            &format!(r#"{{"op":1{},"rid":"r"}}"#, "0".repeat(400)),
            r#"{"op":"PING","rid":"r"} x"#,
            r#"{"op":"PING","rid":"r"}  "#,
            "",
            "[]",
            r#"["PING"]"#,
        ] {
            assert_same_decoding(text);
        }
    }

    #[test]
    fn fields_of_other_ops_are_ignored_wherever_op_stands() {
        // `seq` belongs to PUBACK; a PING ignores it, even when it comes
        // before `op` and has a type PUBACK would refuse.
        for text in [
            r#"{"op":"PING","rid":"1","seq":"x"}"#,
            r#"{"seq":"x","op":"PING","rid":"1"}"#,
            r#"{"rid":"1","event":[1],"op":"PING"}"#,
        ] {
            let frame = decode(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                frame,
                HubFrame::Ping(Ping {
                    rid: Some("1".into())
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn errors_name_the_op_and_keep_the_rid_wherever_they_stand() {
        for text in [
            r#"{"op":"PUBACK","rid":"3","id":"e","seq":"1"}"#,
            r#"{"seq":"1","id":"e","rid":"3","op":"PUBACK"}"#,
            r#"{"seq":"1","id":"e","op":"PUBACK","rid":"3"}"#,
        ] {
            let e = decode(text).expect_err(text);
            assert_eq!(e.kind, DecodeErrorKind::InvalidFields, "{text}");
            assert_eq!(e.rid.as_deref(), Some("3"), "{text}");
            assert_eq!(e.op.as_deref(), Some("PUBACK"), "{text}");
            assert!(e.message.starts_with("invalid PUBACK frame: "), "{e}");
            assert!(
                e.message.contains("seq") || e.message.contains("u64"),
                "{e}"
            );
        }
        let e = decode(r#"{"op":"SUBACK","rid":"4","topic":"a"}"#).expect_err("no from_seq");
        assert_eq!(e.message, "invalid SUBACK frame: missing field `from_seq`");
        assert_eq!(e.rid.as_deref(), Some("4"));
    }

    #[test]
    fn null_is_refused_where_the_frame_has_no_option() {
        // `duplicate` may be absent (false) but not null; `expires_at` may
        // be null in OK but not in EXPIRING.
        for text in [
            r#"{"op":"PUBACK","rid":"3","id":"e","seq":1,"duplicate":null}"#,
            r#"{"duplicate":null,"op":"PUBACK","rid":"3","id":"e","seq":1}"#,
            r#"{"op":"EXPIRING","expires_at":null}"#,
        ] {
            let e = decode(text).expect_err(text);
            assert_eq!(e.kind, DecodeErrorKind::InvalidFields, "{text}");
            assert!(e.message.contains("null"), "{e}");
        }
        let HubFrame::Ok(welcome) = decode(
            r#"{"op":"OK","v":1,"session":"s","server":"x","heartbeat_ms":1,"expires_at":null}"#,
        )
        .expect("OK with a null expires_at") else {
            panic!("not OK")
        };
        assert_eq!(welcome.expires_at, None);
    }

    #[test]
    fn duplicate_fields_are_refused() {
        for text in [
            r#"{"op":"PUBACK","rid":"3","id":"e","seq":1,"seq":2}"#,
            r#"{"op":"PUBACK","rid":"3","id":"e","seq":null,"seq":2}"#,
        ] {
            let e = decode(text).expect_err(text);
            assert_eq!(e.kind, DecodeErrorKind::InvalidFields);
            assert!(e.message.contains("duplicate field `seq`"), "{e}");
        }
        // A field of another op is ignored, repeated or not.
        assert!(decode(r#"{"op":"PING","seq":1,"seq":2}"#).is_ok());
    }
}
