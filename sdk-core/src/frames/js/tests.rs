//! The JavaScript codec against serde_json, in a real JavaScript engine
//! (Node, through `wasm-bindgen-test-runner`; `scripts/test.sh` runs them
//! with `cargo test -p promhub-core --features js --target
//! wasm32-unknown-unknown --lib`).
//!
//! Reading: a hub frame's text, parsed by `JSON.parse` and read by
//! [`Value`](super::Value), decodes to the frame serde_json decodes from the
//! same text, or both refuse it the same way (kind, rid and op; messages
//! may differ). Writing: every client frame serde_json reads is written by
//! [`write`](super::write) exactly as serde_json writes it. The inputs are
//! generated (seeded, so a failure repeats) from fields of every kind, valid
//! and not, then damaged; they leave out what the module documentation
//! lists as reading differently on purpose (integral floats, integers past
//! 2^53, repeated keys, lone surrogates).

use serde_json::value::RawValue;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::wasm_bindgen_test;

use super::{JsHubFrame, JsPayload, Parsed, json_parse, write};
use crate::frames::decode::{self, DecodeError, DecodeErrorKind, JsonText};
use crate::frames::{ClientFrame, Payload, Publish};

/// Cases per generated test (the old property tests ran 4,000).
const CASES: usize = 4000;

fn decode_js(text: &str) -> Result<JsHubFrame, DecodeError> {
    let parsed =
        json_parse(&JsValue::from_str(text)).map_err(|e| super::JsDecodeError(super::text_of(&e)));
    decode::decode(&Parsed(&parsed))
}

fn decode_serde_json(text: &str) -> Result<JsHubFrame, DecodeError> {
    decode::decode(&JsonText(text))
}

/// Both readers decode `text` to the same frame, or both refuse it the
/// same way.
fn assert_same_decoding(text: &str) {
    let ours = decode_js(text);
    let reference = decode_serde_json(text);
    match (&ours, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
        (Err(a), Err(b)) => assert_eq!(
            (a.kind, &a.rid, &a.op),
            (b.kind, &b.rid, &b.op),
            "{text}\njs: {a}\nserde_json: {b}"
        ),
        _ => panic!("{text}\njs: {ours:?}\nserde_json: {reference:?}"),
    }
}

/// The frame serde_json reads from `text`, if any, is written by
/// [`write`] as serde_json writes it; returns whether there was one.
fn assert_same_writing(text: &str) -> bool {
    let Ok(frame) = ClientFrame::decode(text) else {
        return false;
    };
    let ours = write::to_string(&with_js_payload(frame.clone()));
    assert_eq!(
        ours.as_deref(),
        Ok(serde_json::to_string(&frame).unwrap().as_str()),
        "{text}"
    );
    true
}

/// The same frame, its payload as the text `JSON.stringify` would give.
fn with_js_payload(frame: ClientFrame) -> ClientFrame<Publish<JsPayload>> {
    match frame {
        ClientFrame::Publish(p) => ClientFrame::Publish(Publish {
            topic: p.topic,
            payload: JsPayload::new(p.payload.get().to_owned()),
            opts: p.opts,
            rid: p.rid,
        }),
        ClientFrame::Auth(f) => ClientFrame::Auth(f),
        ClientFrame::Subscribe(f) => ClientFrame::Subscribe(f),
        ClientFrame::Unsubscribe(f) => ClientFrame::Unsubscribe(f),
        ClientFrame::Ack(f) => ClientFrame::Ack(f),
        ClientFrame::Nack(f) => ClientFrame::Nack(f),
        ClientFrame::Working(f) => ClientFrame::Working(f),
        ClientFrame::Ping(f) => ClientFrame::Ping(f),
        ClientFrame::Pong(f) => ClientFrame::Pong(f),
    }
}

const HUB_KEYS: &[&str] = &[
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
    "",
];
const HUB_OPS: &[&str] = &[
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
const CLIENT_KEYS: &[&str] = &[
    "rid", "token", "v", "client", "topic", "payload", "opts", "group", "id", "seq", "reason",
    "delay_ms", "final", "other", "",
];
const CLIENT_OPS: &[&str] = &[
    r#""AUTH""#,
    r#""PUBLISH""#,
    r#""SUBSCRIBE""#,
    r#""UNSUBSCRIBE""#,
    r#""ACK""#,
    r#""NACK""#,
    r#""WORKING""#,
    r#""PING""#,
    r#""PONG""#,
    r#""NOPE""#,
];
/// Values of every JSON kind, valid and not: escapes, number forms,
/// overflow, and whole sub-objects of the frames.
const VALUES: &[&str] = &[
    r#""a""#,
    r#""""#,
    r#""a.b""#,
    r#""a.*""#,
    r#""a.**""#,
    r#""a/b""#,
    r#""s\u00e9""#,
    r#""\ud83d\ude00""#,
    r#""\x""#,
    "\"a\u{1}b\"",
    r#""a\"b\\c\/\b\f\n\r\t""#,
    r#""é☃""#,
    r#""unterminated"#,
    r#""forbidden""#,
    r#""bad_request""#,
    r#""zzz""#,
    r#""latest""#,
    r#""earliest""#,
    "0",
    "1",
    "42",
    "-1",
    "01",
    "1.5",
    "1.",
    ".5",
    "1e-2",
    "1e",
    "-",
    "--1",
    "-9223372036854775809",
    "4294967296",
    "9007199254740991",
    "true",
    "false",
    "null",
    "nul",
    "tru",
    "[]",
    "[1,2]",
    r#"["a","b"]"#,
    "[1,]",
    "[",
    "{}",
    r#"{"a":1}"#,
    r#"{"a":"b"}"#,
    r#"{"a":1,}"#,
    r#"{"a"}"#,
    r#"{1:2}"#,
    r#"{"id":"e1","seq":3,"topic":"a.b","ts":5,"payload":{"x":[1,2.5,"\u0041"]}}"#,
    r#"{"id":"e1","seq":3,"topic":"a.b","ts":5,"payload":1e400,"key":"k","headers":{"h":"v"},"tags":["t"],"caused_by":[],"sid":"s"}"#,
    r#"{"id":"e1","seq":3,"topic":"a.b","ts":5}"#,
    r#"{"id":"e1","seq":-3,"topic":"a.b","ts":5,"payload":[]}"#,
    r#"{"id":"e1","seq":3,"topic":"a.*","ts":5,"payload":[}"#,
    r#"{"attempt":1}"#,
    r#"{"attempt":2,"ack_deadline":9,"snapshot":true,"gap":true}"#,
    r#"{"attempt":1.5}"#,
    "[1]",
    r#"{"from":"earliest","max_inflight":4,"ack_timeout_ms":100,"max_deliver":3,"snapshot":true}"#,
    r#"{"from":7}"#,
    r#"{"from":"soon"}"#,
    r#"{"from":-7}"#,
    r#"{"headers":{"h":"v"},"key":"k","tags":["t"],"caused_by":["c"],"sid":"s","ts":1,"id":"i"}"#,
    r#"{"headers":{"h":1}}"#,
    r#"{"id":7}"#,
];
const SPACES: &[&str] = &["", " ", "\n", "\t "];
const DAMAGE: &[u8] = b"\"\\,}{[]:0-e.n\x01 ";

/// A frame of `ops` with fields from `keys` (each at most once: a repeated
/// key reads differently on purpose) and `VALUES`.
fn frame(rng: &mut fastrand::Rng, ops: &[&str], keys: &[&str]) -> String {
    let space = SPACES[rng.usize(..SPACES.len())];
    let mut keys: Vec<&str> = keys.to_vec();
    rng.shuffle(&mut keys);
    keys.truncate(rng.usize(0..7));
    let mut entries: Vec<String> = keys
        .into_iter()
        .map(|key| format!("\"{key}\":{space}{}", VALUES[rng.usize(..VALUES.len())]))
        .collect();
    if rng.u8(..10) != 0 {
        let at = rng.usize(..=entries.len());
        entries.insert(at, format!("\"op\":{space}{}", ops[rng.usize(..ops.len())]));
    }
    format!("{space}{{{}}}{space}", entries.join(&format!(",{space}")))
}

/// `text`, cut short or with a byte replaced or inserted.
fn damaged(rng: &mut fastrand::Rng, text: String) -> String {
    let mut bytes = text.into_bytes();
    let at = rng.usize(..=bytes.len());
    let byte = DAMAGE[rng.usize(..DAMAGE.len())];
    match rng.u8(..3) {
        0 => bytes.truncate(at),
        1 if at < bytes.len() => bytes[at] = byte,
        _ => bytes.insert(at, byte),
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[wasm_bindgen_test]
fn hub_frames_decode_as_with_serde_json() {
    let mut rng = fastrand::Rng::with_seed(14);
    let mut decoded = 0;
    for _ in 0..CASES {
        let text = frame(&mut rng, HUB_OPS, HUB_KEYS);
        assert_same_decoding(&text);
        decoded += usize::from(decode_serde_json(&text).is_ok());
    }
    // The generator reaches frames that decode, not only refusals.
    assert!(decoded > CASES / 100, "only {decoded} of {CASES} decoded");
}

#[wasm_bindgen_test]
fn damaged_hub_frames_are_refused_as_with_serde_json() {
    let mut rng = fastrand::Rng::with_seed(15);
    for _ in 0..CASES {
        let text = frame(&mut rng, HUB_OPS, HUB_KEYS);
        assert_same_decoding(&damaged(&mut rng, text));
    }
}

#[wasm_bindgen_test]
fn client_frames_are_written_as_serde_json_writes_them() {
    let mut rng = fastrand::Rng::with_seed(16);
    let mut written = 0;
    for _ in 0..CASES {
        let text = frame(&mut rng, CLIENT_OPS, CLIENT_KEYS);
        written += usize::from(assert_same_writing(&text));
    }
    assert!(written > CASES / 100, "only {written} of {CASES} written");
}

#[wasm_bindgen_test]
fn edge_cases_decode_as_with_serde_json() {
    let event =
        r#""event":{"id":"e1","seq":3,"topic":"a.b","ts":5,"payload":PAYLOAD},"ctx":{"attempt":1}"#;
    for payload in [
        "1",
        "1.5e-3",
        "-0",
        r#"{"a":[{"b":null}]}"#,
        "[1,]",
        "01",
        "\"a\u{1}\"",
    ] {
        let body = event.replace("PAYLOAD", payload);
        assert_same_decoding(&format!(r#"{{"op":"EVENT","topic":"a.*",{body}}}"#));
        assert_same_decoding(&format!(r#"{{"topic":"a.*",{body},"op":"EVENT"}}"#));
    }
    for text in [
        r#"{"o\u0070":"PING","rid":"r"}"#,
        r#"{"op":"ERR","code":"\u0066orbidden","msg":"\ud83d\ude00"}"#,
        r#"{"op":"PUBACK","rid":"r","id":"e","seq":9007199254740991}"#,
        r#"{"op":"PUBACK","rid":"r","id":"e","seq":"1"}"#,
        r#"{"seq":"1","id":"e","rid":"3","op":"PUBACK"}"#,
        r#"{"op":"PUBACK","rid":"3","id":"e","seq":1,"duplicate":null}"#,
        r#"{"op":"EXPIRING","expires_at":null}"#,
        r#"{"op":"OK","v":1,"session":"s","server":"x","heartbeat_ms":1,"expires_at":null}"#,
        r#"{"op":"OK","v":4294967296,"session":"s","server":"x","heartbeat_ms":1}"#,
        r#"{"op":"SUBACK","rid":"4","topic":"a"}"#,
        r#"{"op":"PING","rid":"1","seq":"x"}"#,
        r#"{"rid":"1","event":[1],"op":"PING"}"#,
        r#"{"op":1.5,"rid":"r"}"#,
        r#"{"op":"PING","rid":"r"} x"#,
        r#"{"op":"PING","rid":"r"}  "#,
        "",
        "[]",
        r#"["PING"]"#,
        "null",
        "\"PING\"",
    ] {
        assert_same_decoding(text);
    }
}

/// The differences the module documentation names, pinned: what the
/// parsed value cannot tell.
#[wasm_bindgen_test]
fn what_a_parsed_value_cannot_tell() {
    // An integral float reads as an integer; serde_json refuses it.
    let text = r#"{"op":"PUBACK","rid":"r","id":"e","seq":1e3}"#;
    assert!(decode_serde_json(text).is_err());
    let Ok(crate::frames::HubFrame::Puback(ack)) = decode_js(text) else {
        panic!("{text}")
    };
    assert_eq!(ack.seq, 1000);
    // Past 2^53 − 1 the number is refused, not rounded.
    let text = r#"{"op":"PUBACK","rid":"r","id":"e","seq":9007199254740993}"#;
    assert!(decode_serde_json(text).is_ok());
    let error = decode_js(text).expect_err(text);
    assert_eq!(error.rid.as_deref(), Some("r"));
    // A repeated key keeps its last value.
    let text = r#"{"op":"PUBACK","rid":"r","id":"e","seq":1,"seq":2}"#;
    assert!(decode_serde_json(text).is_err());
    let Ok(crate::frames::HubFrame::Puback(ack)) = decode_js(text) else {
        panic!("{text}")
    };
    assert_eq!(ack.seq, 2);
    // An error code is read from its name only, not from serde's map form
    // of an enum (which the hub never writes).
    let text = r#"{"op":"ERR","code":{"forbidden":null},"msg":"m"}"#;
    assert!(decode_serde_json(text).is_ok());
    assert!(decode_js(text).is_err());
    // A lone surrogate escape is U+FFFD, not an error.
    let text = r#"{"op":"PING","rid":"a\ud800"}"#;
    assert!(decode_serde_json(text).is_err());
    assert_eq!(
        decode_js(text),
        Ok(crate::frames::HubFrame::Ping(crate::frames::Ping {
            rid: Some("a\u{fffd}".into())
        }))
    );
    // A number past a double's range is Infinity, not a malformed text.
    let text = r#"{"op":1e400,"rid":"r"}"#;
    assert_eq!(
        decode_serde_json(text).expect_err(text).kind,
        DecodeErrorKind::Malformed
    );
    assert_eq!(
        decode_js(text).expect_err(text).kind,
        DecodeErrorKind::UnknownOp
    );
}

#[wasm_bindgen_test]
fn payloads_are_written_as_json_stringify_wrote_them() {
    let payload: Payload = RawValue::from_string(r#"{"b":[1,2],"a":"é\n"}"#.to_owned()).unwrap();
    let frame = ClientFrame::Publish(Publish {
        topic: "orders.created".parse().unwrap(),
        payload,
        opts: None,
        rid: Some("7".into()),
    });
    assert_eq!(
        write::to_string(&with_js_payload(frame.clone())).unwrap(),
        serde_json::to_string(&frame).unwrap()
    );
    assert_eq!(
        write::to_string(&with_js_payload(frame)).unwrap(),
        r#"{"op":"PUBLISH","topic":"orders.created","payload":{"b":[1,2],"a":"é\n"},"rid":"7"}"#
    );
}
