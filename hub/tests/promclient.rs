//! A client written exactly like the design note's `PromClient` (section 4 of
//! the seed note): JSON frames without `rid`, AUTH without token, PUBLISH
//! without answer, SUBSCRIBE with a group, ACK after the handler.

mod common;

use common::TestHub;
use serde_json::json;

#[tokio::test]
async fn promclient_publishes_subscribes_receives_and_acks() {
    let mut hub = TestHub::start().await;

    // `connect()`: AUTH with `token: undefined`, i.e. no token field at all.
    let mut subscriber = hub.connect().await;
    subscriber.send_text(r#"{"op":"AUTH"}"#).await;
    let ok = subscriber.recv_json().await;
    assert_eq!(ok["op"], "OK");
    assert_eq!(ok["v"], 1);
    assert!(ok["session"].as_str().is_some_and(|s| !s.is_empty()));

    // `subscribe(topic, group, handler)` with `opts: undefined`.
    subscriber
        .send_text(r#"{"op":"SUBSCRIBE","topic":"orders.*","group":"billing"}"#)
        .await;
    // PromClient ignores the SUBACK; the test waits for it as a sync point.
    let suback = subscriber.recv_json().await;
    assert_eq!(suback["op"], "SUBACK");
    assert_eq!(suback["topic"], "orders.*");
    assert_eq!(suback["group"], "billing");
    assert!(suback.get("rid").is_none());

    let mut publisher = hub.connect().await;
    publisher.send_text(r#"{"op":"AUTH"}"#).await;
    assert_eq!(publisher.recv_json().await["op"], "OK");
    // `publish(topic, payload, opts)`: no rid, so no answer on success.
    publisher
        .send_text(
            r#"{"op":"PUBLISH","topic":"orders.created","payload":{"order":1},"opts":{"key":"o-1","headers":{"source":"test"}}}"#,
        )
        .await;
    publisher
        .send_text(r#"{"op":"PUBLISH","topic":"orders.paid","payload":{"order":1}}"#)
        .await;

    // The handler is found by `${msg.topic}::${msg.group}` = "orders.*::billing".
    let first = subscriber.recv_event().await;
    assert_eq!(first["topic"], "orders.*");
    assert_eq!(first["group"], "billing");
    assert_eq!(first["event"]["topic"], "orders.created");
    assert_eq!(first["event"]["payload"], json!({"order": 1}));
    assert_eq!(first["event"]["key"], "o-1");
    assert_eq!(first["event"]["headers"]["source"], "test");
    assert_eq!(first["ctx"]["attempt"], 1);
    assert!(first["event"]["id"].as_str().is_some());
    assert!(first["event"]["ts"].as_u64().is_some());
    // ACK exactly as PromClient builds it.
    let ack = format!(
        r#"{{"op":"ACK","topic":{},"group":{},"id":{}}}"#,
        first["topic"], first["group"], first["event"]["id"]
    );
    subscriber.send_text(ack).await;

    let second = subscriber.recv_event().await;
    assert_eq!(second["event"]["topic"], "orders.paid");
    assert!(second["event"]["seq"].as_u64() > first["event"]["seq"].as_u64());
    subscriber.ack(&second).await;

    // Both acknowledged: nothing is redelivered, and the publisher got no
    // answer for its rid-less publishes.
    subscriber.assert_alive_and_quiet().await;
    publisher.assert_alive_and_quiet().await;

    // `unsubscribe(topic, group)`: no rid, no answer.
    subscriber
        .send_text(r#"{"op":"UNSUBSCRIBE","topic":"orders.*","group":"billing"}"#)
        .await;
    subscriber.assert_alive_and_quiet().await;
    let puback = publisher
        .publish("orders.created", json!({"order": 2}), json!(null))
        .await;
    assert_eq!(puback["op"], "PUBACK");
    // PONG comes after the event was fanned out: nothing for a non-member.
    subscriber.assert_alive_and_quiet().await;
    // The group is durable: joining again delivers what was published meanwhile.
    subscriber
        .send_text(r#"{"op":"SUBSCRIBE","topic":"orders.*","group":"billing"}"#)
        .await;
    assert_eq!(subscriber.recv_json().await["op"], "SUBACK");
    let third = subscriber.recv_event().await;
    assert_eq!(third["event"]["id"], puback["id"]);
    assert_eq!(third["event"]["payload"], json!({"order": 2}));

    hub.stop().await.unwrap();
}
