//! The cap on subscriptions per connection (`limits.max_subscriptions_per_connection`):
//! one more is refused with `limit_exceeded`, the connection and its
//! subscriptions live on, and a subscription given up frees a place.

mod common;

use common::TestHub;
use promhub_hub::refusals::{self, Refusal};
use serde_json::json;

#[tokio::test]
async fn one_subscription_over_the_cap_is_refused_with_limit_exceeded() {
    let mut hub = TestHub::start_with(|config| {
        config.limits.max_subscriptions_per_connection = 3;
    })
    .await;
    let mut client = hub.client().await;
    for (topic, group) in [("a.one", None), ("a.*", None), ("jobs.*", Some("workers"))] {
        let ack = client.subscribe(topic, group, json!(null)).await;
        assert_eq!(ack["op"], "SUBACK", "{ack}");
    }
    // The same subscription again is not a new one.
    assert_eq!(
        client.subscribe("a.one", None, json!(null)).await["op"],
        "SUBACK"
    );
    let refused_before = refusals::total(Refusal::SubscriptionCap);
    for (topic, group) in [("b.two", None), ("jobs.*", Some("other"))] {
        let refused = client.subscribe(topic, group, json!(null)).await;
        assert_eq!(refused["op"], "ERR", "{refused}");
        assert_eq!(refused["code"], "limit_exceeded", "{refused}");
        assert!(
            refused["msg"]
                .as_str()
                .unwrap()
                .contains("max_subscriptions_per_connection"),
            "{refused}"
        );
    }
    assert_eq!(
        refusals::total(Refusal::SubscriptionCap),
        refused_before + 2
    );
    // The connection and its subscriptions work on.
    let mut publisher = hub.client().await;
    let ack = publisher.publish("a.one", json!(1), json!(null)).await;
    assert_eq!(ack["op"], "PUBACK");
    for _ in 0..2 {
        assert_eq!(client.recv_event().await["event"]["payload"], 1);
    }
    // Giving one up makes room.
    let rid = client.rid();
    client
        .send_json(json!({"op": "UNSUBSCRIBE", "topic": "a.*", "rid": rid}))
        .await;
    assert_eq!(client.recv_json().await["op"], "UNSUBACK");
    assert_eq!(
        client.subscribe("b.two", None, json!(null)).await["op"],
        "SUBACK"
    );
    hub.stop().await.unwrap();
}
