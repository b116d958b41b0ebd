//! The AUTH step behind the `Authenticator` interface: failures, re-AUTH
//! replacing a connection's policy, and token expiry.

mod common;

use std::sync::Arc;

use common::TestHub;
use promhub_core::{ErrorCode, Policy};
use promhub_hub::{AuthFailure, Authenticated, Authenticator, HubParts};
use serde_json::json;

/// Tokens name their grant: `all`, `a-only` (subscribe a.*, publish **),
/// `expiring` (allow all, expires 1.5 s after AUTH); anything else is refused.
#[derive(Debug)]
struct TokenTable;

#[async_trait::async_trait]
impl Authenticator for TokenTable {
    async fn authenticate(
        &self,
        token: Option<&str>,
        now_ms: u64,
    ) -> Result<Authenticated, AuthFailure> {
        let (policy, expires_at) = match token {
            Some("all") => (Policy::allow_all(), None),
            Some("a-only") => (
                Policy::from_scope_str("subscribe:a.* publish:**").unwrap(),
                None,
            ),
            Some("expiring") => (Policy::allow_all(), Some(now_ms + 1500)),
            None => return Err(AuthFailure::new(ErrorCode::NoToken, "a token is required")),
            Some(_) => return Err(AuthFailure::new(ErrorCode::JwtInvalid, "unknown token")),
        };
        Ok(Authenticated {
            policy: Arc::new(policy),
            expires_at,
            subject: None,
            publish_limit: None,
        })
    }
}

async fn hub() -> TestHub {
    TestHub::start_with_parts(
        // TokenTable has no leeway: the close comes at `expires_at`.
        |c| c.expiring_notice_ms = 1000,
        HubParts {
            store: None,
            authenticator: Some(Arc::new(TokenTable)),
            ..HubParts::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_refused_first_auth_closes_with_4001() {
    let mut hub = hub().await;
    for (token, code) in [(json!(null), "no_token"), (json!("forged"), "jwt_invalid")] {
        let mut client = hub.connect().await;
        client
            .send_json(json!({"op": "AUTH", "token": token}))
            .await;
        let answer = client.recv_json().await;
        assert_eq!(answer["op"], "ERR");
        assert_eq!(answer["code"], code);
        assert_eq!(client.expect_close(0).await.code, 4001);
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn re_auth_replaces_the_policy_of_this_connection_only() {
    let mut hub = hub().await;
    let mut narrowed = hub.connect().await;
    narrowed
        .send_json(json!({"op": "AUTH", "token": "all"}))
        .await;
    let ok = narrowed.recv_json().await;
    let session = ok["session"].clone();
    narrowed.subscribe("**", None, json!(null)).await;
    let mut untouched = hub.connect().await;
    untouched
        .send_json(json!({"op": "AUTH", "token": "all"}))
        .await;
    untouched.recv_json().await;
    untouched.subscribe("**", None, json!(null)).await;

    narrowed
        .send_json(json!({"op": "AUTH", "token": "a-only"}))
        .await;
    let ok = narrowed.recv_json().await;
    assert_eq!(ok["op"], "OK");
    assert_eq!(ok["session"], session, "same session after a refresh");

    let mut publisher = hub.connect().await;
    publisher
        .send_json(json!({"op": "AUTH", "token": "all"}))
        .await;
    publisher.recv_json().await;
    let hidden = publisher.publish("b.x", json!(1), json!(null)).await;
    let visible = publisher.publish("a.x", json!(2), json!(null)).await;
    // Delivery checks each connection's own, current policy.
    assert_eq!(narrowed.recv_event().await["event"]["id"], visible["id"]);
    narrowed.assert_alive_and_quiet().await;
    assert_eq!(untouched.recv_event().await["event"]["id"], hidden["id"]);
    assert_eq!(untouched.recv_event().await["event"]["id"], visible["id"]);

    // A refused re-AUTH closes with 4001, like a refused first AUTH.
    narrowed
        .send_json(json!({"op": "AUTH", "token": "forged"}))
        .await;
    assert_eq!(narrowed.recv_json().await["code"], "jwt_invalid");
    assert_eq!(narrowed.expect_close(0).await.code, 4001);
    untouched.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn an_expiring_token_gets_expiring_then_a_4001_close() {
    let mut hub = hub().await;
    let mut client = hub.connect().await;
    client
        .send_json(json!({"op": "AUTH", "token": "expiring"}))
        .await;
    let ok = client.recv_json().await;
    let expires_at = ok["expires_at"].as_u64().expect("expires_at in OK");
    let warning = client.recv_json().await;
    assert_eq!(warning["op"], "EXPIRING");
    assert_eq!(warning["expires_at"], expires_at);
    let error = client.recv_json().await;
    assert_eq!(error["code"], "token_expired");
    assert_eq!(client.expect_close(0).await.code, 4001);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_fresh_auth_before_expiry_keeps_the_connection() {
    let mut hub = hub().await;
    let mut client = hub.connect().await;
    client
        .send_json(json!({"op": "AUTH", "token": "expiring"}))
        .await;
    client.recv_json().await;
    assert_eq!(client.recv_json().await["op"], "EXPIRING");
    client
        .send_json(json!({"op": "AUTH", "token": "all"}))
        .await;
    let ok = client.recv_json().await;
    assert_eq!(ok["op"], "OK");
    assert!(ok.get("expires_at").is_none());
    // Past the old expiry: still open.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    client.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}
