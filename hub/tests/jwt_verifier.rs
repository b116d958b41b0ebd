//! The JWT verifier against real keys (RSA 2048, P-256, Ed25519 generated
//! here, an HS secret) and a real JWKS HTTP server on 127.0.0.1:0 whose key
//! set and availability the tests control. The clock is injected (`now_ms`),
//! so cache expiry and refetch limits are exercised without sleeping.
//! Keys, signing and the JWKS server live in `common/jwt.rs` (shared with
//! the gateway tests in `jwt_gateway.rs`).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::jwt::{
    JwksServer, KEYS, SECRET, claims_at, ed, es, handcrafted, hs, jwks, rs, sign, standard_jwks,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use promhub_core::acl::Policy;
use promhub_core::frames::ErrorCode;
use promhub_hub::auth::{
    AuthConfig, AuthConfigError, AuthFailure, Authenticated, MAX_TOKEN_BYTES, MintOptions, Secret,
    Verifier, mint_dev_token,
};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

/// The injected "now": 2027-01-15, in ms.
const NOW_MS: u64 = 1_800_000_000_000;
const NOW: u64 = NOW_MS / 1000;
const SECOND: u64 = 1000;

fn claims(extra: Value) -> Value {
    claims_at(NOW, extra)
}

// ------------------------------------------------------------ helpers

fn secret_config() -> AuthConfig {
    AuthConfig {
        jwt_secret: Some(Secret::new(SECRET)),
        ..AuthConfig::default()
    }
}

fn url_config(url: &str) -> AuthConfig {
    AuthConfig {
        jwks_url: Some(url.to_owned()),
        ..AuthConfig::default()
    }
}

fn verifier(config: &AuthConfig) -> Verifier {
    Verifier::from_config(config).expect("valid config")
}

async fn ok(verifier: &Verifier, token: &str, now_ms: u64) -> Authenticated {
    match verifier.verify(Some(token), now_ms).await {
        Ok(auth) => auth,
        Err(failure) => panic!("expected acceptance, got {failure}"),
    }
}

async fn refused(verifier: &Verifier, token: &str, now_ms: u64) -> AuthFailure {
    let failure = verifier
        .verify(Some(token), now_ms)
        .await
        .expect_err("expected refusal");
    // Messages go to clients and logs: never the token or the secret.
    assert!(!failure.msg.contains(token), "{failure}");
    assert!(!failure.msg.contains(SECRET), "{failure}");
    failure
}

async fn refused_with(verifier: &Verifier, token: &str, now_ms: u64, code: ErrorCode) -> String {
    let failure = refused(verifier, token, now_ms).await;
    assert_eq!(failure.code, code, "{failure}");
    failure.msg
}

// -------------------------------------------------------------- tests

#[tokio::test]
async fn every_supported_algorithm_family_verifies() {
    let server = JwksServer::start(standard_jwks()).await;
    let mut config = url_config(&server.url);
    config.jwt_secret = Some(Secret::new(SECRET));
    let v = verifier(&config);
    let c = claims(json!({ "scopes": ["publish:a.*"] }));

    let mut tokens = vec![
        hs(Algorithm::HS256, &c),
        hs(Algorithm::HS384, &c),
        hs(Algorithm::HS512, &c),
        es(&c),
        sign(
            Algorithm::ES384,
            Some(KEYS.ec384.kid),
            &c,
            &KEYS.ec384.encoding_key(),
        ),
        ed(&c),
    ];
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        tokens.push(rs(alg, &KEYS.rsa, &c));
    }
    let expected_policy = Policy::from_scopes(&["publish:a.*"]).unwrap();
    for token in &tokens {
        let auth = ok(&v, token, NOW_MS).await;
        assert_eq!(auth.subject.as_deref(), Some("alice"));
        assert_eq!(auth.expires_at, Some((NOW + 600) * 1000));
        assert_eq!(*auth.policy, expected_policy);
    }
    assert_eq!(server.fetches(), 1, "one fetch serves every JWKS token");
}

#[tokio::test]
async fn missing_token_is_no_token() {
    let v = verifier(&secret_config());
    for token in [None, Some("")] {
        let failure = v.verify(token, NOW_MS).await.unwrap_err();
        assert_eq!(failure.code, ErrorCode::NoToken);
    }
}

#[tokio::test]
async fn alg_none_is_always_refused() {
    let server = JwksServer::start(standard_jwks()).await;
    let mut config = url_config(&server.url);
    config.jwt_secret = Some(Secret::new(SECRET));
    let v = verifier(&config);
    let c = claims(json!({}));
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None"}),
        json!({"alg": "none", "kid": KEYS.rsa.kid}),
    ] {
        // The classic form has an empty signature; also try a non-empty one.
        let unsigned = handcrafted(&header, &c, b"");
        let msg = refused_with(&v, &unsigned, NOW_MS, ErrorCode::JwtInvalid).await;
        assert!(msg.contains("alg: none"), "{msg}");
        let with_sig = handcrafted(&header, &c, b"\x01\x02");
        refused_with(&v, &with_sig, NOW_MS, ErrorCode::JwtInvalid).await;
    }
    assert_eq!(server.fetches(), 0, "refused before any key lookup");
}

#[tokio::test]
async fn hs256_signed_with_the_jwks_public_key_is_refused() {
    let server = JwksServer::start(standard_jwks()).await;
    let public = KEYS.rsa.private.to_public_key();
    let public_key_encodings: Vec<Vec<u8>> = vec![
        public.to_pkcs1_pem(LineEnding::LF).unwrap().into_bytes(),
        public
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
            .into_bytes(),
        public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        public.to_public_key_der().unwrap().as_bytes().to_vec(),
        public.n().to_bytes_be(),
    ];
    let c = claims(json!({}));

    let jwks_only = verifier(&url_config(&server.url));
    let mut both = url_config(&server.url);
    both.jwt_secret = Some(Secret::new(SECRET));
    let jwks_and_secret = verifier(&both);

    for bytes in &public_key_encodings {
        let forged = sign(
            Algorithm::HS256,
            Some(KEYS.rsa.kid),
            &c,
            &EncodingKey::from_secret(bytes),
        );
        let msg = refused_with(&jwks_only, &forged, NOW_MS, ErrorCode::JwtInvalid).await;
        assert!(
            msg.contains("HS256/384/512 tokens are not accepted"),
            "{msg}"
        );
        let msg = refused_with(&jwks_and_secret, &forged, NOW_MS, ErrorCode::JwtInvalid).await;
        assert!(msg.contains("signature"), "{msg}");
    }
}

#[tokio::test]
async fn asymmetric_tokens_are_refused_when_only_a_secret_is_configured() {
    let v = verifier(&secret_config());
    let c = claims(json!({}));
    for token in [rs(Algorithm::RS256, &KEYS.rsa, &c), es(&c), ed(&c)] {
        let msg = refused_with(&v, &token, NOW_MS, ErrorCode::JwtInvalid).await;
        assert!(msg.contains("HS256/384/512 only"), "{msg}");
    }
}

#[tokio::test]
async fn the_key_pins_the_algorithm() {
    // The RSA key declares RS256 only; the EC key allows ES256 only.
    let mut rsa_jwk = KEYS.rsa.jwk();
    rsa_jwk["alg"] = json!("RS256");
    let server = JwksServer::start(jwks(&[rsa_jwk, KEYS.ec.jwk(), KEYS.ec384.jwk()])).await;
    let v = verifier(&url_config(&server.url));
    let c = claims(json!({}));

    ok(&v, &rs(Algorithm::RS256, &KEYS.rsa, &c), NOW_MS).await;
    let pss = rs(Algorithm::PS256, &KEYS.rsa, &c);
    let msg = refused_with(&v, &pss, NOW_MS, ErrorCode::JwtInvalid).await;
    assert!(msg.contains("does not allow PS256"), "{msg}");
    // An RS256 token naming the EC key's kid.
    let cross = sign(
        Algorithm::RS256,
        Some(KEYS.ec.kid),
        &c,
        &KEYS.rsa.encoding_key(),
    );
    refused_with(&v, &cross, NOW_MS, ErrorCode::JwtInvalid).await;
    // The curve pins the algorithm: ES256 under the P-384 key's kid.
    let wrong_curve = sign(
        Algorithm::ES256,
        Some(KEYS.ec384.kid),
        &c,
        &KEYS.ec.encoding_key(),
    );
    let msg = refused_with(&v, &wrong_curve, NOW_MS, ErrorCode::JwtInvalid).await;
    assert!(msg.contains("does not allow ES256"), "{msg}");
}

#[tokio::test]
async fn unknown_kid_is_refused_after_exactly_one_refetch() {
    let server = JwksServer::start(standard_jwks()).await;
    let v = verifier(&url_config(&server.url));
    let c = claims(json!({}));
    ok(&v, &es(&c), NOW_MS).await;
    assert_eq!(server.fetches(), 1);

    let ghost = sign(
        Algorithm::RS256,
        Some("ghost"),
        &c,
        &KEYS.rsa.encoding_key(),
    );
    let t1 = NOW_MS + 31 * SECOND;
    let msg = refused_with(&v, &ghost, t1, ErrorCode::JwtInvalid).await;
    assert!(msg.contains("unknown"), "{msg}");
    assert_eq!(server.fetches(), 2, "one refetch for the unknown kid");

    // A second unknown kid within 30 s: no new fetch.
    let ghost2 = sign(
        Algorithm::RS256,
        Some("ghost-2"),
        &c,
        &KEYS.rsa.encoding_key(),
    );
    refused_with(&v, &ghost2, t1 + 10 * SECOND, ErrorCode::JwtInvalid).await;
    refused_with(&v, &ghost, t1 + 29 * SECOND, ErrorCode::JwtInvalid).await;
    assert_eq!(server.fetches(), 2);

    // 30 s later the limit allows one more.
    refused_with(&v, &ghost2, t1 + 30 * SECOND, ErrorCode::JwtInvalid).await;
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn concurrent_verifications_share_one_fetch() {
    let server = JwksServer::start(jwks(&[KEYS.ec.jwk()])).await;
    let v = verifier(&url_config(&server.url));
    let c = claims(json!({}));
    ok(&v, &es(&c), NOW_MS).await;
    assert_eq!(server.fetches(), 1);

    // The new key appears; the fetch is slow so the callers overlap it.
    server.set_jwks(jwks(&[KEYS.ec.jwk(), KEYS.rsa_next.jwk()]));
    server.state.delay_ms.store(200, Ordering::SeqCst);
    let new_kid_token = rs(Algorithm::RS256, &KEYS.rsa_next, &c);
    let t1 = NOW_MS + 31 * SECOND;
    let results =
        futures_util::future::join_all((0..8).map(|_| v.verify(Some(new_kid_token.as_str()), t1)))
            .await;
    for result in results {
        // Every caller waited for the single fetch and got the new key.
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(server.fetches(), 2);

    // The same with a kid the server does not have either.
    let ghost = sign(
        Algorithm::RS256,
        Some("ghost"),
        &c,
        &KEYS.rsa.encoding_key(),
    );
    let t2 = t1 + 31 * SECOND;
    let results =
        futures_util::future::join_all((0..8).map(|_| v.verify(Some(ghost.as_str()), t2))).await;
    for result in results {
        assert_eq!(result.unwrap_err().code, ErrorCode::JwtInvalid);
    }
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn key_rotation_new_kid_after_refetch_old_kid_after_cache_expiry() {
    let server = JwksServer::start(jwks(&[KEYS.rsa.jwk()])).await;
    let mut config = url_config(&server.url);
    config.jwks_cache_ttl_secs = 120;
    let v = verifier(&config);
    let c = claims(json!({ "exp": NOW + 3600 }));
    let old = rs(Algorithm::RS256, &KEYS.rsa, &c);
    let new = rs(Algorithm::RS256, &KEYS.rsa_next, &c);
    ok(&v, &old, NOW_MS).await;

    // The issuer rotates: only the new key is published.
    server.set_jwks(jwks(&[KEYS.rsa_next.jwk()]));
    // Within the refetch interval the new kid cannot be fetched yet...
    refused_with(&v, &new, NOW_MS + 10 * SECOND, ErrorCode::JwtInvalid).await;
    assert_eq!(server.fetches(), 1);
    // ...after it, the unknown kid triggers the refetch and is accepted.
    ok(&v, &new, NOW_MS + 40 * SECOND).await;
    assert_eq!(server.fetches(), 2);
    // The old key is gone from the fetched set.
    refused_with(&v, &old, NOW_MS + 41 * SECOND, ErrorCode::JwtInvalid).await;

    // Second scenario: the old key disappears while no new kid shows up;
    // the cached set keeps verifying it until the cache expires.
    let server2 = JwksServer::start(jwks(&[KEYS.rsa.jwk()])).await;
    let mut config2 = url_config(&server2.url);
    config2.jwks_cache_ttl_secs = 120;
    let v2 = verifier(&config2);
    ok(&v2, &old, NOW_MS).await;
    server2.set_jwks(jwks(&[KEYS.rsa_next.jwk()]));
    ok(&v2, &old, NOW_MS + 119 * SECOND).await;
    assert_eq!(server2.fetches(), 1, "cache still fresh");
    refused_with(&v2, &old, NOW_MS + 120 * SECOND, ErrorCode::JwtInvalid).await;
    assert_eq!(server2.fetches(), 2);
    ok(&v2, &new, NOW_MS + 121 * SECOND).await;
    assert_eq!(server2.fetches(), 2, "the refreshed set already has it");
}

#[tokio::test]
async fn last_good_key_set_survives_a_failing_jwks_server() {
    let server = JwksServer::start(standard_jwks()).await;
    let mut config = url_config(&server.url);
    config.jwks_cache_ttl_secs = 60;
    let v = verifier(&config);
    let c = claims(json!({ "exp": NOW + 3600 }));
    let token = rs(Algorithm::RS256, &KEYS.rsa, &c);
    ok(&v, &token, NOW_MS).await;

    // HTTP 503 on the refresh after the cache expired.
    server.set_status(503);
    ok(&v, &token, NOW_MS + 61 * SECOND).await;
    assert_eq!(server.fetches(), 2, "the refresh was attempted");
    // Server fully down (connection refused).
    server.stop().await;
    ok(&v, &token, NOW_MS + 200 * SECOND).await;
    ok(&v, &ed(&c), NOW_MS + 300 * SECOND).await;
    // Unknown kids are still refused.
    let ghost = sign(
        Algorithm::RS256,
        Some("ghost"),
        &c,
        &KEYS.rsa.encoding_key(),
    );
    refused_with(&v, &ghost, NOW_MS + 400 * SECOND, ErrorCode::JwtInvalid).await;
}

#[tokio::test]
async fn keys_never_loaded_is_an_internal_error_until_the_server_answers() {
    let server = JwksServer::start(standard_jwks()).await;
    server.set_status(500);
    let v = verifier(&url_config(&server.url));
    let c = claims(json!({}));
    let token = es(&c);
    assert!(v.load_keys(NOW_MS).await.is_err());
    refused_with(&v, &token, NOW_MS + SECOND, ErrorCode::Internal).await;
    assert_eq!(server.fetches(), 1, "the refetch limit also applies");

    server.set_status(200);
    ok(&v, &token, NOW_MS + 31 * SECOND).await;
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn jwk_for_encryption_is_ignored() {
    let mut enc = KEYS.rsa.jwk();
    enc["use"] = json!("enc");
    let mut wrap_only = KEYS.rsa_next.jwk();
    wrap_only.as_object_mut().unwrap().remove("use");
    wrap_only["key_ops"] = json!(["wrapKey"]);
    let server = JwksServer::start(jwks(&[enc, wrap_only, KEYS.ec.jwk()])).await;
    let v = verifier(&url_config(&server.url));
    let c = claims(json!({}));
    ok(&v, &es(&c), NOW_MS).await;
    for key in [&KEYS.rsa, &KEYS.rsa_next] {
        let token = rs(Algorithm::RS256, key, &c);
        let msg = refused_with(&v, &token, NOW_MS + 31 * SECOND, ErrorCode::JwtInvalid).await;
        assert!(msg.contains("not usable for signatures"), "{msg}");
    }
    assert_eq!(
        server.fetches(),
        1,
        "a known-but-ignored kid is no reason to refetch"
    );
}

#[tokio::test]
async fn expiry_and_not_before_use_the_leeway() {
    let v = verifier(&secret_config());
    let token = |exp: u64, nbf: Option<u64>| {
        let mut c = claims(json!({ "exp": exp }));
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        hs(Algorithm::HS256, &c)
    };
    // Default leeway 5 s.
    refused_with(&v, &token(NOW - 6, None), NOW_MS, ErrorCode::TokenExpired).await;
    refused_with(
        &v,
        &token(NOW - 3600, None),
        NOW_MS,
        ErrorCode::TokenExpired,
    )
    .await;
    ok(&v, &token(NOW - 3, None), NOW_MS).await;
    let msg = refused_with(
        &v,
        &token(NOW + 600, Some(NOW + 10)),
        NOW_MS,
        ErrorCode::JwtInvalid,
    )
    .await;
    assert!(msg.contains("not valid yet"), "{msg}");
    ok(&v, &token(NOW + 600, Some(NOW + 4)), NOW_MS).await;

    let mut strict = secret_config();
    strict.jwt_leeway_secs = 0;
    let v0 = verifier(&strict);
    refused_with(&v0, &token(NOW - 1, None), NOW_MS, ErrorCode::TokenExpired).await;
    refused_with(&v0, &token(NOW, None), NOW_MS, ErrorCode::TokenExpired).await;

    let mut lenient = secret_config();
    lenient.jwt_leeway_secs = 60;
    ok(&verifier(&lenient), &token(NOW - 59, None), NOW_MS).await;

    // No exp at all: refused (tokens must expire).
    let no_exp = hs(Algorithm::HS256, &json!({ "sub": "alice" }));
    refused_with(&v, &no_exp, NOW_MS, ErrorCode::JwtInvalid).await;
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let mut config = secret_config();
    config.jwt_aud = vec!["hub".into(), "hub-eu".into()];
    config.jwt_iss = Some("https://idp.example".into());
    let v = verifier(&config);
    let with =
        |aud: Value, iss: &str| hs(Algorithm::HS256, &claims(json!({ "aud": aud, "iss": iss })));
    let iss = "https://idp.example";
    ok(&v, &with(json!("hub"), iss), NOW_MS).await;
    ok(&v, &with(json!(["other", "hub-eu"]), iss), NOW_MS).await;
    refused_with(
        &v,
        &with(json!("other"), iss),
        NOW_MS,
        ErrorCode::JwtInvalid,
    )
    .await;
    refused_with(
        &v,
        &with(json!(["a", "b"]), iss),
        NOW_MS,
        ErrorCode::JwtInvalid,
    )
    .await;
    refused_with(&v, &with(json!(42), iss), NOW_MS, ErrorCode::JwtInvalid).await;
    refused_with(
        &v,
        &with(json!("hub"), "https://evil.example"),
        NOW_MS,
        ErrorCode::JwtInvalid,
    )
    .await;
    let no_iss = hs(Algorithm::HS256, &claims(json!({ "aud": "hub" })));
    refused_with(&v, &no_iss, NOW_MS, ErrorCode::JwtInvalid).await;
    let no_aud = hs(Algorithm::HS256, &claims(json!({ "iss": iss })));
    refused_with(&v, &no_aud, NOW_MS, ErrorCode::JwtInvalid).await;
}

#[tokio::test]
async fn claims_of_the_wrong_type_are_invalid() {
    let v = verifier(&secret_config());
    for bad in [
        json!({ "exp": (NOW + 600).to_string() }),
        json!({ "nbf": "0" }),
        json!({ "aud": 7 }),
        json!({ "sub": ["alice"] }),
        json!({ "scopes": "publish:a" }),
        json!({ "scopes": ["publish:a", 3] }),
        json!({ "scope": ["publish:a"] }),
        json!({ "policy": "allow-all" }),
        json!({ "policy": null }),
    ] {
        let token = hs(Algorithm::HS256, &claims(bad.clone()));
        refused_with(&v, &token, NOW_MS, ErrorCode::JwtInvalid).await;
    }
}

#[tokio::test]
async fn malformed_permissions_are_invalid() {
    let v = verifier(&secret_config());
    for bad in [
        json!({ "scopes": ["publish:a..b"] }),
        json!({ "scopes": ["publish"] }),
        json!({ "scopes": ["delete:a"] }),
        json!({ "scope": "subscribe:a.** bogus" }),
        json!({ "policy": { "rules": [{ "effect": "maybe", "action": "publish", "topics": ["a"] }] } }),
        json!({ "policy": { "rules": [], "extra": true } }),
    ] {
        let token = hs(Algorithm::HS256, &claims(bad.clone()));
        let msg = refused_with(&v, &token, NOW_MS, ErrorCode::JwtInvalid).await;
        assert!(msg.contains("permissions"), "{bad}: {msg}");
    }
}

#[tokio::test]
async fn policy_comes_from_policy_then_scopes_then_scope_then_defaults() {
    let mut config = secret_config();
    config.default_scopes = Some("subscribe:public.**".into());
    let v = verifier(&config);
    let policy_json = json!({ "rules": [
        { "effect": "deny", "action": "publish", "topics": ["a.secret"] },
        { "effect": "allow", "action": "*", "topics": ["a.**"], "groups": ["*"] }
    ], "admin": true });

    let cases = [
        (
            json!({ "policy": policy_json, "scopes": ["publish:x"], "scope": "publish:y" }),
            Policy::from_json(&policy_json).unwrap(),
        ),
        (
            json!({ "scopes": ["publish:x.*", "admin"], "scope": "publish:y" }),
            Policy::from_scopes(&["publish:x.*", "admin"]).unwrap(),
        ),
        (
            json!({ "scope": "publish:y subscribe:z.**" }),
            Policy::from_scope_str("publish:y subscribe:z.**").unwrap(),
        ),
        (
            json!({}),
            Policy::from_scope_str("subscribe:public.**").unwrap(),
        ),
        (json!({ "scopes": [] }), Policy::deny_all()),
    ];
    for (extra, expected) in cases {
        let auth = ok(&v, &hs(Algorithm::HS256, &claims(extra.clone())), NOW_MS).await;
        assert_eq!(*auth.policy, expected, "{extra}");
    }
    assert!(
        ok(
            &v,
            &hs(Algorithm::HS256, &claims(json!({ "policy": policy_json }))),
            NOW_MS
        )
        .await
        .policy
        .admin
    );

    // Without --default-scopes a token without permission claims may do nothing.
    let bare = ok(
        &verifier(&secret_config()),
        &hs(Algorithm::HS256, &claims(json!({}))),
        NOW_MS,
    )
    .await;
    assert_eq!(*bare.policy, Policy::deny_all());
}

#[tokio::test]
async fn oversized_and_tampered_tokens_are_invalid() {
    let v = verifier(&secret_config());
    let padding = "x".repeat(MAX_TOKEN_BYTES);
    let huge = hs(Algorithm::HS256, &claims(json!({ "pad": padding })));
    let msg = refused_with(&v, &huge, NOW_MS, ErrorCode::JwtInvalid).await;
    assert!(msg.contains("too large"), "{msg}");

    // Exactly at the limit is parsed (and here refused for its signature).
    let base = hs(Algorithm::HS256, &claims(json!({})));
    let at_limit = format!("{base}{}", "A".repeat(MAX_TOKEN_BYTES - base.len()));
    let msg = refused_with(&v, &at_limit, NOW_MS, ErrorCode::JwtInvalid).await;
    assert!(!msg.contains("too large"), "{msg}");

    // Payload swapped for one granting more: the signature no longer matches.
    let token = hs(
        Algorithm::HS256,
        &claims(json!({ "scopes": ["subscribe:a"] })),
    );
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD.encode(claims(json!({ "scopes": ["*:**"] })).to_string());
    parts[1] = &forged_payload;
    let msg = refused_with(&v, &parts.join("."), NOW_MS, ErrorCode::JwtInvalid).await;
    assert!(msg.contains("signature"), "{msg}");

    // Signed with another secret.
    let other = sign(
        Algorithm::HS256,
        None,
        &claims(json!({})),
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    );
    refused_with(&v, &other, NOW_MS, ErrorCode::JwtInvalid).await;
}

#[tokio::test]
async fn jwks_file_verifies_and_reloads_on_unknown_kid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[KEYS.ed.jwk()]).to_string()).unwrap();
    let config = AuthConfig {
        jwks_file: Some(path.clone()),
        ..AuthConfig::default()
    };
    let v = verifier(&config);
    let c = claims(json!({ "exp": NOW + 3600 }));
    ok(&v, &ed(&c), NOW_MS).await;

    std::fs::write(&path, jwks(&[KEYS.ed.jwk(), KEYS.rsa.jwk()]).to_string()).unwrap();
    ok(
        &v,
        &rs(Algorithm::PS256, &KEYS.rsa, &c),
        NOW_MS + 31 * SECOND,
    )
    .await;

    // A broken file on reload keeps the last good set.
    std::fs::write(&path, "{ not json").unwrap();
    ok(&v, &ed(&c), NOW_MS + 1000 * SECOND).await;

    // At start, an unusable file is a configuration error.
    std::fs::write(&path, jwks(&[]).to_string()).unwrap();
    assert!(matches!(
        Verifier::from_config(&config),
        Err(AuthConfigError::JwksFile { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Verifier::from_config(&config),
        Err(AuthConfigError::JwksFile { .. })
    ));
}

#[tokio::test]
async fn token_without_kid_needs_an_unambiguous_key() {
    let server =
        JwksServer::start(jwks(&[KEYS.rsa.jwk(), KEYS.rsa_next.jwk(), KEYS.ec.jwk()])).await;
    let v = verifier(&url_config(&server.url));
    let c = claims(json!({}));
    // One EC key: fine without kid.
    let es_no_kid = sign(Algorithm::ES256, None, &c, &KEYS.ec.encoding_key());
    ok(&v, &es_no_kid, NOW_MS).await;
    // Two RSA keys: ambiguous.
    let rs_no_kid = sign(Algorithm::RS256, None, &c, &KEYS.rsa.encoding_key());
    let msg = refused_with(&v, &rs_no_kid, NOW_MS, ErrorCode::JwtInvalid).await;
    assert!(msg.contains("several keys"), "{msg}");
    // No Ed25519 key at all.
    let ed_no_kid = sign(Algorithm::EdDSA, None, &c, &KEYS.ed.encoding_key());
    refused_with(&v, &ed_no_kid, NOW_MS, ErrorCode::JwtInvalid).await;
}

#[tokio::test]
async fn minted_dev_tokens_verify_with_the_same_secret() {
    let mut config = secret_config();
    config.jwt_aud = vec!["hub".into()];
    let v = verifier(&config);
    let token = mint_dev_token(MintOptions {
        secret: SECRET.into(),
        scopes: "publish:a.* subscribe:b.**".into(),
        ttl: Duration::from_secs(3600),
        sub: Some("dev".into()),
        aud: Some("hub".into()),
        iss: None,
    })
    .unwrap();
    // mint_dev_token uses the real clock.
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let auth = ok(&v, &token, now_ms).await;
    assert_eq!(auth.subject.as_deref(), Some("dev"));
    assert_eq!(
        *auth.policy,
        Policy::from_scope_str("publish:a.* subscribe:b.**").unwrap()
    );
    refused_with(&v, &token, now_ms + 3700 * SECOND, ErrorCode::TokenExpired).await;
}
