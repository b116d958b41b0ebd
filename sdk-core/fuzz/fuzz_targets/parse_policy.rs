//! Token claims: a `policy` JSON value and a `scope` string. Parsing never
//! panics; an accepted policy survives a JSON round trip and can be queried.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promhub_core::{Action, Pattern, Policy, Topic};

fn query(policy: &Policy) {
    let topic = Topic::parse("process.state").expect("valid topic");
    let everything = Pattern::parse("**").expect("valid pattern");
    for group in [None, Some("workers")] {
        let allowed = policy.allows(Action::Subscribe, &topic, group);
        // What may be delivered must pass the subscribe-time check.
        if allowed {
            assert!(policy.may_subscribe(&Pattern::from(topic.clone()), group));
            assert!(policy.may_subscribe(&everything, group));
        }
    }
    let _ = policy.may_publish(&topic);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
        && let Ok(policy) = Policy::from_json(&value)
    {
        let json = serde_json::to_value(&policy).expect("policy serializes");
        let again = Policy::from_json(&json)
            .unwrap_or_else(|e| panic!("serialized policy {json} is refused: {e}"));
        assert_eq!(again, policy);
        query(&policy);
    }
    if let Ok(policy) = Policy::from_scope_str(&text) {
        let scopes = text
            .split_ascii_whitespace()
            .filter(|s| *s != "admin")
            .count();
        assert_eq!(policy.rules.len(), scopes);
        query(&policy);
    }
});
