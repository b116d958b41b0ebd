//! Fuzzes the token path of `promhub_hub::auth::Verifier`.
//!
//! The first input byte picks a mode:
//! - 0: the rest is the token itself, verified by an HS-configured and a
//!   JWKS-file-configured verifier (RSA, P-256, Ed25519 and ignored keys).
//!   A forged token must never be accepted.
//! - 1: the rest is a claims payload, wrapped in a correctly HS256-signed
//!   token, so the claim and permission parsers behind the signature check
//!   are reached too.
//! - 2: like 1, but the rest is `header \0 payload`: arbitrary headers over a
//!   valid HMAC.
//!
//! Invariants: no panic; only the documented error codes; messages never
//! contain the secret or the token.

#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use promhub_core::frames::ErrorCode;
use promhub_hub::auth::jwks::KeySet;
use promhub_hub::auth::{AuthConfig, Secret, Verifier};

const SECRET: &str = "fuzz-secret-0123456789-abcdefghijklmn";
/// A fixed clock (2026-05-28) keeps runs reproducible.
const NOW_MS: u64 = 1_780_000_000_000;

/// The P-256 base point: a valid public key without a key generator.
const P256_X: &str = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
const P256_Y: &str = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
/// The Ed25519 base point, encoded.
const ED25519_B: &str = "5866666666666666666666666666666666666666666666666666666666666666";

struct Targets {
    runtime: tokio::runtime::Runtime,
    hs: Verifier,
    jwks: Verifier,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jwks_document() -> String {
    // A 2048-bit odd modulus: verification of fuzzed signatures only needs a
    // well-formed key, not one whose private half exists.
    let mut n: Vec<u8> = (0..256u32).map(|i| (i * 37 + 11) as u8).collect();
    n[0] |= 0xc0;
    n[255] |= 1;
    let rsa = format!(
        r#"{{"kty":"RSA","kid":"rsa","n":"{}","e":"AQAB"}}"#,
        b64(&n)
    );
    let rsa_pinned = format!(
        r#"{{"kty":"RSA","kid":"rsa-ps","alg":"PS256","n":"{}","e":"AQAB"}}"#,
        b64(&n)
    );
    let ec = format!(
        r#"{{"kty":"EC","crv":"P-256","kid":"ec","x":"{}","y":"{}"}}"#,
        b64(&hex(P256_X)),
        b64(&hex(P256_Y))
    );
    let ed = format!(
        r#"{{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"{}"}}"#,
        b64(&hex(ED25519_B))
    );
    let enc = format!(
        r#"{{"kty":"RSA","kid":"enc","use":"enc","n":"{}","e":"AQAB"}}"#,
        b64(&n)
    );
    format!(r#"{{"keys":[{rsa},{rsa_pinned},{ec},{ed},{enc}]}}"#)
}

static TARGETS: LazyLock<Targets> = LazyLock::new(|| {
    let document = jwks_document();
    let keys = KeySet::parse(document.as_bytes()).expect("fuzz JWKS parses");
    assert_eq!(keys.len(), 4, "every fuzz key except `enc` must be usable");
    let path = std::env::temp_dir().join(format!("promhub-fuzz-jwks-{}.json", std::process::id()));
    std::fs::write(&path, document).expect("write JWKS file");

    let hs = Verifier::from_config(&AuthConfig {
        jwt_secret: Some(Secret::new(SECRET)),
        jwt_aud: vec!["hub".into()],
        jwt_iss: Some("idp".into()),
        default_scopes: Some("subscribe:public.**".into()),
        ..AuthConfig::default()
    })
    .expect("HS config");
    let jwks = Verifier::from_config(&AuthConfig {
        jwks_file: Some(path),
        ..AuthConfig::default()
    })
    .expect("JWKS config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    Targets { runtime, hs, jwks }
});

fn hs256(header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(payload));
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("HMAC signing");
    format!("{signing_input}.{signature}")
}

fn check(verifier: &Verifier, token: &str, forged: bool) {
    let result = TARGETS
        .runtime
        .block_on(verifier.verify(Some(token), NOW_MS));
    match result {
        Ok(auth) => {
            assert!(!forged, "a token without a valid signature was accepted");
            let exp = auth.expires_at.expect("accepted tokens have exp");
            assert!(exp.saturating_add(5_000) > NOW_MS, "expired token accepted");
        }
        Err(failure) => {
            assert!(
                matches!(
                    failure.code,
                    ErrorCode::NoToken | ErrorCode::JwtInvalid | ErrorCode::TokenExpired
                ),
                "unexpected code {:?}",
                failure.code
            );
            assert!(!failure.msg.contains(SECRET));
            if token.len() >= 24 {
                assert!(!failure.msg.contains(token), "message echoes the token");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let targets = &*TARGETS;
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            check(&targets.hs, &token, true);
            check(&targets.jwks, &token, true);
        }
        1 => {
            let token = hs256(br#"{"alg":"HS256","typ":"JWT"}"#, rest);
            check(&targets.hs, &token, false);
        }
        _ => {
            let (header, payload) = match rest.iter().position(|&b| b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let token = hs256(header, payload);
            check(&targets.hs, &token, false);
            check(&targets.jwks, &token, true);
        }
    }
});
