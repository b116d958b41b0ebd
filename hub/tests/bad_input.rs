//! Bad input gets the spec's ERR code and the connection lives on; a
//! connection that keeps sending garbage is closed with 4008.

mod common;

use common::{Client, TestHub};
use serde_json::{Value, json};

/// Sends `text` and returns the ERR it gets, checking the connection still
/// answers PING afterwards.
async fn error_for(client: &mut Client, text: &str) -> Value {
    client.send_text(text).await;
    let answer = client.recv_json().await;
    assert_eq!(answer["op"], "ERR", "{text} answered with {answer}");
    assert!(answer["msg"].as_str().is_some_and(|m| !m.is_empty()));
    client.assert_alive_and_quiet().await;
    answer
}

#[tokio::test]
async fn malformed_json_is_bad_request() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    for text in [
        "{",
        "not json",
        "[1,2]",
        "42",
        "\"PING\"",
        "{\"op\":\"PUBLISH\",}",
    ] {
        assert_eq!(
            error_for(&mut client, text).await["code"],
            "bad_request",
            "{text}"
        );
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_field_types_are_bad_request_with_the_rid() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    for text in [
        r#"{"op":"PUBLISH","topic":5,"payload":1,"rid":"a"}"#,
        r#"{"op":"PUBLISH","topic":"t","rid":"a"}"#,
        r#"{"op":"PUBLISH","topic":"t","payload":1,"opts":{"key":7},"rid":"a"}"#,
        r#"{"op":"PUBLISH","topic":"t","payload":1,"opts":{"ts":"now"},"rid":"a"}"#,
        r#"{"op":"SUBSCRIBE","topic":"t","group":["g"],"rid":"a"}"#,
        r#"{"op":"SUBSCRIBE","topic":"t","opts":{"max_inflight":-1},"rid":"a"}"#,
        r#"{"op":"SUBSCRIBE","topic":"t","opts":{"from":"yesterday"},"rid":"a"}"#,
        r#"{"op":"ACK","topic":"t","group":"g","rid":"a"}"#,
        r#"{"op":"NACK","topic":"t","group":"g","id":"x","delay_ms":"soon","rid":"a"}"#,
    ] {
        let answer = error_for(&mut client, text).await;
        assert_eq!(answer["code"], "bad_request", "{text}");
        assert_eq!(answer["rid"], "a", "{text}");
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn out_of_range_subscribe_options_are_bad_request() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    for opts in [
        json!({"max_inflight": 0}),
        json!({"ack_timeout_ms": 0}),
        json!({"max_deliver": 0}),
        json!({"snapshot": true}),
        json!({"from": u64::MAX}),
    ] {
        let answer = client.subscribe("t", Some("g"), opts.clone()).await;
        assert_eq!(answer["op"], "ERR", "{opts}");
        assert_eq!(answer["code"], "bad_request", "{opts}");
    }
    client.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_ops_are_bad_request() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    for text in [
        r#"{"op":"DELETE","topic":"a","rid":"x"}"#,
        r#"{"op":"publish","topic":"a","payload":1}"#,
        r#"{"topic":"a"}"#,
        r#"{"op":7}"#,
    ] {
        assert_eq!(
            error_for(&mut client, text).await["code"],
            "bad_request",
            "{text}"
        );
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_topics_and_patterns_are_bad_request() {
    let mut hub = TestHub::start().await;
    // Separate connections: more than 10 bad frames would close one (4008).
    let mut client = hub.client().await;
    for topic in [
        "",
        "a..b",
        ".a",
        "a.",
        "a b",
        "a.*",
        "a.**",
        "x*",
        &"s.".repeat(40),
    ] {
        let answer = client.publish(topic, json!(1), json!(null)).await;
        assert_eq!(answer["op"], "ERR", "{topic:?}");
        assert_eq!(answer["code"], "bad_request", "publishing to {topic:?}");
    }
    client.assert_alive_and_quiet().await;
    let mut client = hub.client().await;
    for pattern in ["", "a..b", "x*", "a.b**", "a.*b"] {
        let answer = client.subscribe(pattern, None, json!(null)).await;
        assert_eq!(answer["code"], "bad_request", "subscribing to {pattern:?}");
    }
    let answer = client.subscribe("ok", Some("bad group"), json!(null)).await;
    assert_eq!(answer["code"], "bad_request");
    client.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn bad_event_ids_are_bad_request() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    for id in [String::new(), "x".repeat(300), "a\u{0001}b".to_owned()] {
        let answer = client.publish("t", json!(1), json!({"id": id})).await;
        assert_eq!(answer["code"], "bad_request", "{id:?}");
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn frames_over_the_size_limit_are_too_large_and_the_connection_lives() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    let payload = "x".repeat(1024 * 1024 + 1);
    let frame = json!({"op": "PUBLISH", "topic": "big", "payload": payload, "rid": "big"});
    let answer = error_for(&mut client, &frame.to_string()).await;
    assert_eq!(answer["code"], "too_large");
    // The rid lets the publisher match the refusal to its request.
    assert_eq!(answer["rid"], "big");
    // Just under the limit is fine.
    let payload = "y".repeat(1024 * 1024 - 200);
    let ack = client.publish("big", json!(payload), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK", "{}", ack["code"]);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn frames_over_the_hard_limit_close_the_connection() {
    let mut hub = TestHub::start_with(|c| c.max_frame_bytes = 64 * 1024).await;
    let mut client = hub.client().await;
    // The hub refuses to even read this one (see HubConfig::hard_frame_limit).
    client.send_text("z".repeat(1024 * 1024)).await;
    let closed = client.expect_close(0).await;
    assert_ne!(closed.code, 1000, "{closed:?}");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn binary_frames_are_bad_request() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    client.send_binary(br#"{"op":"PING"}"#.to_vec()).await;
    let answer = client.recv_json().await;
    assert_eq!(answer["code"], "bad_request");
    client.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn frames_before_auth_are_unauthorized() {
    let mut hub = TestHub::start().await;
    let mut client = hub.connect().await;
    for text in [
        r#"{"op":"PUBLISH","topic":"t","payload":1,"rid":"p"}"#,
        r#"{"op":"SUBSCRIBE","topic":"t","rid":"s"}"#,
        r#"{"op":"ACK","topic":"t","group":"g","id":"x"}"#,
    ] {
        client.send_text(text).await;
        let answer = client.recv_json().await;
        assert_eq!(answer["op"], "ERR");
        assert_eq!(answer["code"], "unauthorized", "{text}");
    }
    // The PUBLISH was not stored: after AUTH, a replay group sees nothing.
    client.auth().await;
    let suback = client
        .subscribe("t", Some("check"), json!({"from": "earliest"}))
        .await;
    assert_eq!(suback["op"], "SUBACK");
    client.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn answers_for_unknown_ids_are_ignored() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    client.subscribe("t", Some("g"), json!(null)).await;
    for text in [
        r#"{"op":"ACK","topic":"t","group":"g","id":"no-such-event"}"#,
        r#"{"op":"NACK","topic":"t","group":"g","id":"no-such-event"}"#,
        r#"{"op":"WORKING","topic":"t","group":"g","id":"no-such-event"}"#,
        r#"{"op":"ACK","topic":"other","group":"g","id":"x"}"#,
        r#"{"op":"ACK","topic":"t","id":"ephemeral-acks-are-ignored"}"#,
    ] {
        client.send_text(text).await;
    }
    client.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_acl_refuses_with_forbidden() {
    let mut hub = TestHub::start_with(|c| {
        c.dev_scopes = Some("publish:allowed.* subscribe:allowed.**".into());
    })
    .await;
    let mut client = hub.client().await;
    let answer = client.publish("secret.x", json!(1), json!(null)).await;
    assert_eq!(answer["code"], "forbidden");
    let answer = client.subscribe("secret.*", None, json!(null)).await;
    assert_eq!(answer["code"], "forbidden");
    let answer = client.subscribe("secret.*", Some("g"), json!(null)).await;
    assert_eq!(answer["code"], "forbidden");
    assert_eq!(
        client.publish("allowed.x", json!(1), json!(null)).await["op"],
        "PUBACK"
    );
    // A pattern wider than the grant is accepted; delivery filters.
    let suback = client.subscribe("**", None, json!(null)).await;
    assert_eq!(suback["op"], "SUBACK");
    client.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn an_unsupported_protocol_version_is_refused() {
    let mut hub = TestHub::start().await;
    let mut client = hub.connect().await;
    client.send_json(json!({"op": "AUTH", "v": 2})).await;
    let answer = client.recv_json().await;
    assert_eq!(answer["code"], "unsupported_version");
    assert_eq!(client.expect_close(0).await.code, 4008);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_that_keeps_sending_garbage_is_closed_with_4008() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    // The default tolerance is 10 bad frames per minute.
    for _ in 0..10 {
        client.send_text("garbage").await;
        assert_eq!(client.recv_json().await["code"], "bad_request");
    }
    client.assert_alive_and_quiet().await;
    client.send_text("garbage").await;
    assert_eq!(client.recv_json().await["code"], "bad_request");
    let closed = client.expect_close(0).await;
    assert_eq!(closed.code, 4008, "{closed:?}");
    hub.stop().await.unwrap();
}

/// Mutated frames (truncated, bytes flipped, fields swapped) never take the
/// hub down: every answer is a well-formed frame, and afterwards a fresh
/// client works normally.
#[tokio::test]
async fn mutated_frames_never_break_the_hub() {
    let mut hub = TestHub::start().await;
    let valid = [
        r#"{"op":"PUBLISH","topic":"fuzz.a","payload":{"x":[1,2,{"y":null}]},"opts":{"key":"k","headers":{"h":"v"},"tags":["t"],"id":"fz"},"rid":"1"}"#,
        r#"{"op":"SUBSCRIBE","topic":"fuzz.*","group":"g","opts":{"from":"earliest","max_inflight":3},"rid":"2"}"#,
        r#"{"op":"NACK","topic":"fuzz.*","group":"g","id":"fz","delay_ms":5,"final":false}"#,
        r#"{"op":"UNSUBSCRIBE","topic":"fuzz.*","group":"g","rid":"3"}"#,
        r#"{"op":"AUTH","token":null,"v":1}"#,
    ];
    let known_ops = ["OK", "ERR", "PUBACK", "SUBACK", "UNSUBACK", "EVENT", "PONG"];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut client = hub.client().await;
    for round in 0..400 {
        let mut bytes = valid[round % valid.len()].as_bytes().to_vec();
        match rng.u8(0..4) {
            0 => bytes.truncate(rng.usize(0..bytes.len())),
            1 => {
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(0..bytes.len());
                    bytes[at] = rng.u8(0x20..0x7f);
                }
            }
            2 => {
                let at = rng.usize(0..bytes.len());
                bytes.insert(at, b'"');
            }
            _ => {}
        }
        client
            .send_text(String::from_utf8_lossy(&bytes).into_owned())
            .await;
        // Drain what the hub answered, up to its PONG (a barrier).
        let rid = format!("fz{round}");
        client.send_json(json!({"op": "PING", "rid": rid})).await;
        loop {
            match client.recv().await {
                Ok(frame) => {
                    let op = frame["op"].as_str().unwrap_or_default().to_owned();
                    assert!(known_ops.contains(&op.as_str()), "{frame}");
                    if op == "PONG" && frame["rid"] == rid.as_str() {
                        break;
                    }
                }
                // Too much garbage: 4008. Carry on with a new connection.
                Err(closed) => {
                    assert_eq!(closed.code, 4008, "{closed:?}");
                    client = hub.client().await;
                    break;
                }
            }
        }
    }
    let mut fresh = hub.client().await;
    let ack = fresh.publish("after.fuzz", json!(1), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK");
    hub.stop().await.unwrap();
}
