//! Wire compatibility of protocol v1 frames: the example session of
//! protocol.md byte for byte, the frames the original `PromClient` of the
//! design note sends, bad input, and a round trip of every frame variant.

use std::collections::BTreeMap;

use promhub_core::frames::{
    Auth, DeliveryCtx, DeliveryRef, ErrorFrame, Event, EventDelivery, Expiring, Nack, Ping, PubAck,
    Publish, PublishOpts, StartFrom, SubAck, Subscribe, SubscribeOpts, UnsubAck, Unsubscribe,
    Welcome, encode_event_delivery, to_payload,
};
use promhub_core::frames::{DecodeErrorKind, GroupError};
use promhub_core::{ClientFrame, DecodeError, ErrorCode, Group, HubFrame, Pattern, Topic};

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s).unwrap()
}
fn topic(s: &str) -> Topic {
    Topic::parse(s).unwrap()
}
fn group(s: &str) -> Group {
    Group::parse(s).unwrap()
}

// ---------------------------------------------------------------------------
// protocol.md, "Example session": `→` lines are client frames, `←` hub frames.

const EXAMPLE_CLIENT_FRAMES: &[&str] = &[
    r#"{"op":"AUTH","token":"eyJ...","v":1,"client":"promhub-native/0.1.0"}"#,
    r#"{"op":"SUBSCRIBE","topic":"process.**","group":"ops","opts":{"from":"earliest"},"rid":"1"}"#,
    r#"{"op":"PUBLISH","topic":"process.state","payload":{"pid":42,"status":"alive"},"opts":{"key":"host:sh:42"},"rid":"2"}"#,
    r#"{"op":"ACK","topic":"process.**","group":"ops","id":"0193..."}"#,
];

const EXAMPLE_HUB_FRAMES: &[&str] = &[
    r#"{"op":"OK","v":1,"session":"s-01J...","server":"promhub/0.1.0","heartbeat_ms":15000}"#,
    r#"{"op":"SUBACK","rid":"1","topic":"process.**","group":"ops","from_seq":1}"#,
    r#"{"op":"PUBACK","rid":"2","id":"0193...","seq":1}"#,
    r#"{"op":"EVENT","topic":"process.**","group":"ops","event":{"id":"0193...","seq":1,"topic":"process.state","ts":1764300000000,"key":"host:sh:42","payload":{"pid":42,"status":"alive"}},"ctx":{"attempt":1}}"#,
];

#[test]
fn example_session_client_frames_are_byte_compatible() {
    let expected_ops = ["AUTH", "SUBSCRIBE", "PUBLISH", "ACK"];
    for (line, op) in EXAMPLE_CLIENT_FRAMES.iter().zip(expected_ops) {
        let frame = ClientFrame::decode(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(frame.op(), op, "{line}");
        assert_eq!(frame.encode(), *line, "re-encoding changed the bytes");
    }
}

#[test]
fn example_session_hub_frames_are_byte_compatible() {
    let expected_ops = ["OK", "SUBACK", "PUBACK", "EVENT"];
    for (line, op) in EXAMPLE_HUB_FRAMES.iter().zip(expected_ops) {
        let frame = HubFrame::decode(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(frame.op(), op, "{line}");
        assert_eq!(frame.encode(), *line, "re-encoding changed the bytes");
    }
}

#[test]
fn example_session_fields_decode_to_the_right_values() {
    let ClientFrame::Subscribe(sub) = ClientFrame::decode(EXAMPLE_CLIENT_FRAMES[1]).unwrap() else {
        panic!("not a SUBSCRIBE")
    };
    assert_eq!(sub.topic, pattern("process.**"));
    assert_eq!(sub.group, Some(group("ops")));
    assert_eq!(sub.opts.unwrap().from, Some(StartFrom::Earliest));
    assert_eq!(sub.rid.as_deref(), Some("1"));

    let ClientFrame::Publish(publish) = ClientFrame::decode(EXAMPLE_CLIENT_FRAMES[2]).unwrap()
    else {
        panic!("not a PUBLISH")
    };
    assert_eq!(publish.topic, topic("process.state"));
    assert_eq!(publish.payload.get(), r#"{"pid":42,"status":"alive"}"#);
    assert_eq!(publish.opts.unwrap().key.as_deref(), Some("host:sh:42"));

    let HubFrame::Event(delivery) = HubFrame::decode(EXAMPLE_HUB_FRAMES[3]).unwrap() else {
        panic!("not an EVENT")
    };
    assert_eq!(delivery.topic, pattern("process.**"));
    assert_eq!(delivery.event.topic, topic("process.state"));
    assert_eq!(delivery.event.seq, 1);
    assert_eq!(delivery.event.ts, 1_764_300_000_000);
    assert_eq!(delivery.ctx, DeliveryCtx::first());
}

/// The hub's fast path (event serialized once, reused for every subscriber)
/// must give the same bytes as encoding the whole frame.
#[test]
fn pre_serialized_event_delivery_matches_the_example() {
    let HubFrame::Event(delivery) = HubFrame::decode(EXAMPLE_HUB_FRAMES[3]).unwrap() else {
        panic!("not an EVENT")
    };
    let event_json = serde_json::value::to_raw_value(&delivery.event).unwrap();
    let text = encode_event_delivery(
        &delivery.topic,
        delivery.group.as_ref(),
        &event_json,
        &delivery.ctx,
    );
    assert_eq!(text, EXAMPLE_HUB_FRAMES[3]);
}

// ---------------------------------------------------------------------------
// The design note's PromClient (section 4) sends `JSON.stringify` output:
// undefined fields are dropped, and it never sends `rid`, `v` or `client`.

#[test]
fn design_note_prom_client_frames_decode() {
    // connect(): `{ op: "AUTH", token: this.token }`, token may be undefined.
    let ClientFrame::Auth(auth) = ClientFrame::decode(r#"{"op":"AUTH","token":"t0k"}"#).unwrap()
    else {
        panic!("not AUTH")
    };
    assert_eq!(
        auth,
        Auth {
            token: Some("t0k".into()),
            v: None,
            client: None
        }
    );
    for anonymous in [r#"{"op":"AUTH"}"#, r#"{"op":"AUTH","token":null}"#] {
        let ClientFrame::Auth(auth) = ClientFrame::decode(anonymous).unwrap() else {
            panic!("not AUTH")
        };
        assert_eq!(auth, Auth::default(), "{anonymous}");
    }

    // publish(topic, payload, opts) with and without opts (all PublishOpts
    // fields of the note's type).
    let ClientFrame::Publish(p) = ClientFrame::decode(
        r#"{"op":"PUBLISH","topic":"heartbeat.received","payload":{"ok":true}}"#,
    )
    .unwrap() else {
        panic!("not PUBLISH")
    };
    assert_eq!(p.topic, topic("heartbeat.received"));
    assert_eq!(p.payload.get(), r#"{"ok":true}"#);
    assert!(p.opts.is_none() && p.rid.is_none());

    let full = r#"{"op":"PUBLISH","topic":"a.b","payload":[1,"x",null],"opts":{"headers":{"h":"v"},"key":"k","tags":["t1","t2"],"caused_by":["e0"],"sid":"s","ts":1764300000000}}"#;
    let ClientFrame::Publish(p) = ClientFrame::decode(full).unwrap() else {
        panic!("not PUBLISH")
    };
    assert_eq!(
        p.opts,
        Some(PublishOpts {
            headers: Some(BTreeMap::from([("h".to_owned(), "v".to_owned())])),
            key: Some("k".into()),
            tags: Some(vec!["t1".into(), "t2".into()]),
            caused_by: Some(vec!["e0".into()]),
            sid: Some("s".into()),
            ts: Some(1_764_300_000_000),
            id: None,
        })
    );
    // Scalar payloads are any JSON too.
    for payload in ["null", "0", "\"text\"", "false"] {
        let text = format!(r#"{{"op":"PUBLISH","topic":"a","payload":{payload}}}"#);
        let ClientFrame::Publish(p) = ClientFrame::decode(&text).unwrap() else {
            panic!("not PUBLISH")
        };
        assert_eq!(p.payload.get(), payload);
    }

    // subscribe(topic, group, handler, opts?) and unsubscribe(topic, group).
    let ClientFrame::Subscribe(s) =
        ClientFrame::decode(r#"{"op":"SUBSCRIBE","topic":"process.**","group":"ops"}"#).unwrap()
    else {
        panic!("not SUBSCRIBE")
    };
    assert_eq!(
        s,
        Subscribe {
            topic: pattern("process.**"),
            group: Some(group("ops")),
            opts: None,
            rid: None
        }
    );
    // `opts?: any`: unknown option names are ignored (forward compatibility).
    let ClientFrame::Subscribe(s) = ClientFrame::decode(
        r#"{"op":"SUBSCRIBE","topic":"a.*","group":"g","opts":{"from":"latest","someday":1}}"#,
    )
    .unwrap() else {
        panic!("not SUBSCRIBE")
    };
    assert_eq!(s.opts.unwrap().from, Some(StartFrom::Latest));
    let ClientFrame::Unsubscribe(u) =
        ClientFrame::decode(r#"{"op":"UNSUBSCRIBE","topic":"process.**","group":"ops"}"#).unwrap()
    else {
        panic!("not UNSUBSCRIBE")
    };
    assert_eq!(
        u,
        Unsubscribe {
            topic: pattern("process.**"),
            group: Some(group("ops")),
            rid: None
        }
    );

    // The EVENT handler answers ACK or NACK with topic and group copied from
    // the EVENT; for an ephemeral subscription `group` is undefined.
    let ClientFrame::Ack(ack) =
        ClientFrame::decode(r#"{"op":"ACK","topic":"process.**","group":"ops","id":"e1"}"#)
            .unwrap()
    else {
        panic!("not ACK")
    };
    assert_eq!(
        ack,
        DeliveryRef {
            topic: pattern("process.**"),
            group: Some(group("ops")),
            id: "e1".into(),
            seq: None,
        }
    );
    let ClientFrame::Ack(ack) =
        ClientFrame::decode(r#"{"op":"ACK","topic":"process.**","id":"e1"}"#).unwrap()
    else {
        panic!("not ACK")
    };
    assert_eq!(ack.group, None);
    let ClientFrame::Nack(nack) = ClientFrame::decode(
        r#"{"op":"NACK","topic":"process.**","group":"ops","id":"e1","seq":12,"reason":"boom"}"#,
    )
    .unwrap() else {
        panic!("not NACK")
    };
    assert_eq!(
        nack,
        Nack {
            topic: pattern("process.**"),
            group: Some(group("ops")),
            id: "e1".into(),
            seq: Some(12),
            reason: Some("boom".into()),
            delay_ms: None,
            final_: None
        }
    );
}

/// The note's client reads `msg.code` / `msg.msg` from ERR and keys handlers
/// by `${msg.topic}::${msg.group}` from EVENT: both must be where it looks.
#[test]
fn hub_frames_keep_the_fields_the_design_note_client_reads() {
    let err = HubFrame::Err(ErrorFrame::new(
        ErrorCode::Forbidden,
        "no publish permission",
        None,
    ));
    let value: serde_json::Value = serde_json::from_str(&err.encode()).unwrap();
    assert_eq!(value["op"], "ERR");
    assert_eq!(value["code"], "forbidden");
    assert_eq!(value["msg"], "no publish permission");

    let value: serde_json::Value = serde_json::from_str(EXAMPLE_HUB_FRAMES[3]).unwrap();
    assert_eq!(value["topic"], "process.**");
    assert_eq!(value["group"], "ops");
    assert_eq!(value["event"]["id"], "0193...");
}

// ---------------------------------------------------------------------------
// Bad input

fn client_err(text: &str) -> DecodeError {
    match ClientFrame::decode(text) {
        Ok(frame) => panic!("{text:?} decoded as {frame:?}; expected an error"),
        Err(e) => e,
    }
}

fn hub_err(text: &str) -> DecodeError {
    match HubFrame::decode(text) {
        Ok(frame) => panic!("{text:?} decoded as {frame:?}; expected an error"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_error(e: &DecodeError, kind: DecodeErrorKind, rid: Option<&str>, input: &str) {
    assert_eq!(e.kind, kind, "{input:?}: {e}");
    assert_eq!(e.rid.as_deref(), rid, "{input:?}: {e}");
    assert_eq!(e.code(), ErrorCode::BadRequest);
    let frame = e.to_error_frame();
    assert_eq!(frame.code, ErrorCode::BadRequest);
    assert_eq!(frame.rid.as_deref(), rid);
    assert!(!frame.msg.is_empty());
}

#[test]
fn malformed_or_non_object_input_is_malformed() {
    for text in [
        "",
        "   ",
        "{",
        r#"{"op":"PING""#,
        r#"{"op":"PING",}"#,
        r#"{op:"PING"}"#,
        "PING",
        "null",
        "42",
        "true",
        r#""PING""#,
        "[]",
        r#"["PING"]"#,
        // Arrays must not be read positionally as structs.
        r#"["PUBLISH","r1"]"#,
        r#"["PING","r1"]"#,
        r#"{"op":"PING"} trailing"#,
        r#"{"op":"PING"}{"op":"PING"}"#,
    ] {
        assert_error(&client_err(text), DecodeErrorKind::Malformed, None, text);
        assert_error(&hub_err(text), DecodeErrorKind::Malformed, None, text);
    }
}

#[test]
fn missing_or_unknown_op_is_unknown_op_and_keeps_the_rid() {
    for (text, rid) in [
        (r#"{}"#, None),
        (r#"{"rid":"7"}"#, Some("7")),
        (r#"{"op":"FROB","rid":"7"}"#, Some("7")),
        (
            r#"{"op":"publish","topic":"a","payload":1,"rid":"7"}"#,
            Some("7"),
        ),
        (r#"{"op":null,"rid":"7"}"#, Some("7")),
        (r#"{"op":5,"rid":"7"}"#, Some("7")),
        (r#"{"op":{"x":1},"rid":"7"}"#, Some("7")),
        (r#"{"op":"FROB","rid":7}"#, None),
    ] {
        assert_error(&client_err(text), DecodeErrorKind::UnknownOp, rid, text);
        assert_error(&hub_err(text), DecodeErrorKind::UnknownOp, rid, text);
    }
    // Hub ops are unknown to the client decoder and the other way round.
    for (text, rid) in [
        (
            r#"{"op":"OK","v":1,"session":"s","server":"x","heartbeat_ms":1}"#,
            None,
        ),
        (r#"{"op":"PUBACK","rid":"3","id":"e","seq":1}"#, Some("3")),
    ] {
        assert_error(&client_err(text), DecodeErrorKind::UnknownOp, rid, text);
    }
    for (text, rid) in [
        (r#"{"op":"AUTH","token":"t"}"#, None),
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"rid":"3"}"#,
            Some("3"),
        ),
    ] {
        assert_error(&hub_err(text), DecodeErrorKind::UnknownOp, rid, text);
    }
}

#[test]
fn wrong_fields_are_invalid_fields_and_keep_the_rid() {
    for (text, rid) in [
        // Wrong types.
        (
            r#"{"op":"PUBLISH","topic":5,"payload":1,"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":null,"payload":1,"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":["a"],"payload":1,"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"opts":[],"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"opts":{"ts":"now"},"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"opts":{"ts":-1},"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"opts":{"tags":"t"},"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"opts":{"headers":{"h":1}},"rid":"r"}"#,
            Some("r"),
        ),
        (r#"{"op":"AUTH","token":42}"#, None),
        (r#"{"op":"AUTH","v":"1"}"#, None),
        (r#"{"op":"ACK","topic":"a","group":"g","id":7}"#, None),
        (
            r#"{"op":"NACK","topic":"a","group":"g","id":"e","final":"yes"}"#,
            None,
        ),
        (
            r#"{"op":"NACK","topic":"a","group":"g","id":"e","delay_ms":-5}"#,
            None,
        ),
        // Missing fields.
        (r#"{"op":"PUBLISH","topic":"a","rid":"r"}"#, Some("r")),
        (r#"{"op":"PUBLISH","payload":1,"rid":"r"}"#, Some("r")),
        (r#"{"op":"SUBSCRIBE","rid":"r"}"#, Some("r")),
        (r#"{"op":"UNSUBSCRIBE","rid":"r"}"#, Some("r")),
        (r#"{"op":"ACK","topic":"a","group":"g"}"#, None),
        (r#"{"op":"WORKING","group":"g","id":"e"}"#, None),
        // Nested objects given as arrays must not be read by position.
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"opts":[null,"k"],"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"opts":"k","rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a","opts":["earliest"],"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a","opts":[],"rid":"r"}"#,
            Some("r"),
        ),
        // Bad subscribe options.
        (
            r#"{"op":"SUBSCRIBE","topic":"a.**","opts":{"from":"middle"},"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a.**","opts":{"from":-1},"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a.**","opts":{"from":1.5},"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a.**","opts":{"max_inflight":-1},"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a.**","opts":{"snapshot":"yes"},"rid":"r"}"#,
            Some("r"),
        ),
        // Invalid topics and patterns.
        (
            r#"{"op":"PUBLISH","topic":"a..b","payload":1,"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"","payload":1,"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a.*","payload":1,"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a.**","payload":1,"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"PUBLISH","topic":"a b","payload":1,"rid":"r"}"#,
            Some("r"),
        ),
        (r#"{"op":"SUBSCRIBE","topic":"a..b","rid":"r"}"#, Some("r")),
        (r#"{"op":"SUBSCRIBE","topic":"x*","rid":"r"}"#, Some("r")),
        (
            r#"{"op":"UNSUBSCRIBE","topic":"a.b**","rid":"r"}"#,
            Some("r"),
        ),
        (r#"{"op":"ACK","topic":"a..b","group":"g","id":"e"}"#, None),
        // Invalid groups.
        (
            r#"{"op":"SUBSCRIBE","topic":"a","group":"","rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a","group":"*","rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a","group":"two words","rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a","group":"tab\tbed","rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"SUBSCRIBE","topic":"a","group":5,"rid":"r"}"#,
            Some("r"),
        ),
        (
            r#"{"op":"UNSUBSCRIBE","topic":"a","group":"*","rid":"r"}"#,
            Some("r"),
        ),
        // A rid of the wrong type is itself an error, and cannot be echoed.
        (r#"{"op":"PING","rid":5}"#, None),
        (
            r#"{"op":"PUBLISH","topic":"a","payload":1,"rid":{"x":1}}"#,
            None,
        ),
    ] {
        assert_error(&client_err(text), DecodeErrorKind::InvalidFields, rid, text);
    }

    let long_group = format!(
        r#"{{"op":"SUBSCRIBE","topic":"a","group":"{}","rid":"r"}}"#,
        "g".repeat(129)
    );
    assert_error(
        &client_err(&long_group),
        DecodeErrorKind::InvalidFields,
        Some("r"),
        &long_group,
    );

    for (text, rid) in [
        (r#"{"op":"OK","v":1,"session":"s","server":"x"}"#, None),
        (r#"{"op":"PUBACK","rid":"3","id":"e"}"#, Some("3")),
        (r#"{"op":"PUBACK","rid":"3","id":"e","seq":"1"}"#, Some("3")),
        (
            r#"{"op":"SUBACK","rid":"3","topic":"a..b","from_seq":1}"#,
            Some("3"),
        ),
        (
            r#"{"op":"EVENT","topic":"a.**","event":{"id":"e","seq":1,"topic":"a.*","ts":1,"payload":1},"ctx":{"attempt":1}}"#,
            None,
        ),
        (
            r#"{"op":"EVENT","topic":"a.**","event":{"id":"e","seq":1,"topic":"a","ts":1},"ctx":{"attempt":1}}"#,
            None,
        ),
        (
            r#"{"op":"EVENT","topic":"a.**","event":{"id":"e","seq":1,"topic":"a","ts":1,"payload":1}}"#,
            None,
        ),
        (
            r#"{"op":"EVENT","topic":"a.**","event":["e",1,"a",1,null,1],"ctx":{"attempt":1}}"#,
            None,
        ),
        (
            r#"{"op":"EVENT","topic":"a.**","event":{"id":"e","seq":1,"topic":"a","ts":1,"payload":1},"ctx":[1]}"#,
            None,
        ),
        (r#"{"op":"ERR","msg":"m","rid":"4"}"#, Some("4")),
        (r#"{"op":"EXPIRING"}"#, None),
    ] {
        assert_error(&hub_err(text), DecodeErrorKind::InvalidFields, rid, text);
    }
}

#[test]
fn group_errors_say_what_is_wrong() {
    assert_eq!(Group::parse(""), Err(GroupError::Empty));
    assert_eq!(Group::parse("*"), Err(GroupError::Reserved));
    assert_eq!(Group::parse("a b"), Err(GroupError::BadCharacter));
    assert_eq!(
        Group::parse(&"g".repeat(129)),
        Err(GroupError::TooLong(129))
    );
    assert!(Group::parse(&"g".repeat(128)).is_ok());
}

/// Forward compatibility: unknown fields are ignored and unknown error codes
/// still decode.
#[test]
fn unknown_fields_and_error_codes_are_tolerated() {
    let frame = ClientFrame::decode(r#"{"op":"PING","rid":"1","future":{"a":[1,2]}}"#).unwrap();
    assert_eq!(frame.rid(), Some("1"));
    let HubFrame::Err(err) =
        HubFrame::decode(r#"{"op":"ERR","code":"quota_exceeded","msg":"m","rid":"9"}"#).unwrap()
    else {
        panic!("not ERR")
    };
    assert_eq!(err.code, ErrorCode::Unknown);
    assert_eq!(err.rid.as_deref(), Some("9"));
}

// ---------------------------------------------------------------------------
// Round trip of every variant, every optional field set.

fn all_client_frames() -> Vec<ClientFrame> {
    vec![
        ClientFrame::Auth(Auth {
            token: Some("eyJ.x.y".into()),
            v: Some(1),
            client: Some("promhub-native/0.1.0".into()),
        }),
        ClientFrame::Auth(Auth::default()),
        ClientFrame::Publish(Publish {
            topic: topic("process.state"),
            payload: to_payload(&serde_json::json!({"pid": 42, "s": "ünï \"q\""})).unwrap(),
            opts: Some(PublishOpts {
                headers: Some(BTreeMap::from([
                    ("a".into(), "1".into()),
                    ("b".into(), "".into()),
                ])),
                key: Some("host:sh:42".into()),
                tags: Some(vec!["x".into()]),
                caused_by: Some(vec!["e0".into(), "e1".into()]),
                sid: Some("s1".into()),
                ts: Some(u64::MAX),
                id: Some("dedup-1".into()),
            }),
            rid: Some("r1".into()),
        }),
        ClientFrame::Publish(Publish {
            topic: topic("a"),
            payload: to_payload(&serde_json::Value::Null).unwrap(),
            opts: None,
            rid: None,
        }),
        ClientFrame::Subscribe(Subscribe {
            topic: pattern("a.*.**"),
            group: Some(group("workers")),
            opts: Some(SubscribeOpts {
                from: Some(StartFrom::Seq(17)),
                max_inflight: Some(8),
                ack_timeout_ms: Some(30_000),
                max_deliver: Some(5),
                snapshot: Some(true),
            }),
            rid: Some("r2".into()),
        }),
        ClientFrame::Subscribe(Subscribe {
            topic: pattern("**"),
            group: None,
            opts: Some(SubscribeOpts {
                from: Some(StartFrom::Latest),
                ..SubscribeOpts::default()
            }),
            rid: None,
        }),
        ClientFrame::Subscribe(Subscribe {
            topic: pattern("x"),
            group: None,
            opts: Some(SubscribeOpts {
                from: Some(StartFrom::Earliest),
                ..SubscribeOpts::default()
            }),
            rid: None,
        }),
        ClientFrame::Unsubscribe(Unsubscribe {
            topic: pattern("a.**"),
            group: Some(group("g")),
            rid: Some("r3".into()),
        }),
        ClientFrame::Ack(DeliveryRef {
            topic: pattern("a.**"),
            group: Some(group("g")),
            id: "e1".into(),
            seq: Some(7),
        }),
        ClientFrame::Nack(Nack {
            topic: pattern("a.**"),
            group: Some(group("g")),
            id: "e1".into(),
            seq: Some(7),
            reason: Some("handler failed".into()),
            delay_ms: Some(250),
            final_: Some(true),
        }),
        ClientFrame::Working(DeliveryRef {
            topic: pattern("a.**"),
            group: None,
            id: "e2".into(),
            seq: None,
        }),
        ClientFrame::Ping(Ping {
            rid: Some("p".into()),
        }),
        ClientFrame::Ping(Ping::default()),
        ClientFrame::Pong(Ping {
            rid: Some("p".into()),
        }),
    ]
}

fn all_hub_frames() -> Vec<HubFrame> {
    let event = Event {
        id: "0193abc".into(),
        seq: 9,
        topic: topic("process.state"),
        ts: 1_764_300_000_000,
        key: Some("host:sh:42".into()),
        payload: to_payload(&serde_json::json!([1, {"a": null}])).unwrap(),
        headers: Some(BTreeMap::from([("h".into(), "v".into())])),
        tags: Some(vec!["t".into()]),
        caused_by: Some(vec!["e0".into()]),
        sid: Some("s".into()),
    };
    vec![
        HubFrame::Ok(Welcome {
            v: 1,
            session: "s-1".into(),
            server: "promhub/0.1.0".into(),
            heartbeat_ms: 15_000,
            expires_at: Some(1_764_300_000_000),
        }),
        HubFrame::Err(ErrorFrame {
            code: ErrorCode::RateLimited,
            msg: "slow down".into(),
            rid: Some("r".into()),
            retry_after_ms: Some(500),
        }),
        HubFrame::Err(ErrorFrame::new(ErrorCode::BadRequest, "bad", None)),
        HubFrame::Puback(PubAck {
            rid: "r".into(),
            id: "e".into(),
            seq: 1,
            duplicate: true,
        }),
        HubFrame::Puback(PubAck {
            rid: "r".into(),
            id: "e".into(),
            seq: 2,
            duplicate: false,
        }),
        HubFrame::Suback(SubAck {
            rid: Some("r".into()),
            topic: pattern("a.**"),
            group: Some(group("g")),
            from_seq: 3,
        }),
        HubFrame::Unsuback(UnsubAck {
            rid: Some("r".into()),
            topic: pattern("a.**"),
            group: Some(group("g")),
        }),
        HubFrame::Event(EventDelivery {
            topic: pattern("process.**"),
            group: Some(group("ops")),
            event: event.clone(),
            ctx: DeliveryCtx {
                attempt: 3,
                ack_deadline: Some(1_764_300_030_000),
                snapshot: Some(true),
            },
        }),
        HubFrame::Event(EventDelivery {
            topic: pattern("**"),
            group: None,
            event: Event {
                key: None,
                headers: None,
                tags: None,
                caused_by: None,
                sid: None,
                ..event
            },
            ctx: DeliveryCtx::first(),
        }),
        HubFrame::Ping(Ping {
            rid: Some("p".into()),
        }),
        HubFrame::Pong(Ping::default()),
        HubFrame::Expiring(Expiring {
            expires_at: 1_764_300_000_000,
        }),
    ]
}

#[test]
fn every_client_frame_round_trips() {
    let frames = all_client_frames();
    let mut ops: Vec<&str> = frames.iter().map(ClientFrame::op).collect();
    ops.dedup();
    assert_eq!(
        ops,
        [
            "AUTH",
            "PUBLISH",
            "SUBSCRIBE",
            "UNSUBSCRIBE",
            "ACK",
            "NACK",
            "WORKING",
            "PING",
            "PONG"
        ]
    );
    for frame in frames {
        let text = frame.encode();
        let decoded = ClientFrame::decode(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(decoded, frame, "{text}");
        assert_eq!(decoded.encode(), text);
    }
}

#[test]
fn every_hub_frame_round_trips() {
    let frames = all_hub_frames();
    let mut ops: Vec<&str> = frames.iter().map(HubFrame::op).collect();
    ops.dedup();
    assert_eq!(
        ops,
        [
            "OK", "ERR", "PUBACK", "SUBACK", "UNSUBACK", "EVENT", "PING", "PONG", "EXPIRING"
        ]
    );
    for frame in frames {
        let text = frame.encode();
        let decoded = HubFrame::decode(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(decoded, frame, "{text}");
        assert_eq!(decoded.encode(), text);
    }
}

/// Empty option objects are not sent: they would only cost bytes.
#[test]
fn empty_options_are_omitted() {
    let frame = ClientFrame::Publish(Publish {
        topic: topic("a"),
        payload: to_payload(&1).unwrap(),
        opts: Some(PublishOpts::default()),
        rid: None,
    });
    assert_eq!(
        frame.encode(),
        r#"{"op":"PUBLISH","topic":"a","payload":1}"#
    );
    let frame = ClientFrame::Subscribe(Subscribe {
        topic: pattern("a"),
        group: None,
        opts: Some(SubscribeOpts::default()),
        rid: None,
    });
    assert_eq!(frame.encode(), r#"{"op":"SUBSCRIBE","topic":"a"}"#);
}

#[test]
fn peek_rid_reads_only_the_request_id() {
    use promhub_core::frames::peek_rid;
    assert_eq!(
        peek_rid(r#"{"op":"PUBLISH","topic":"a","payload":1,"rid":"7"}"#),
        Some("7".to_owned())
    );
    assert_eq!(peek_rid(r#"{"op":"PUBLISH","rid":7}"#), None);
    assert_eq!(peek_rid(r#"{"op":"PING"}"#), None);
    assert_eq!(peek_rid("not json"), None);
}
