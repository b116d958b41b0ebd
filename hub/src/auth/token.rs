//! The compact JWS parser: `BASE64URL(header).BASE64URL(payload).BASE64URL(sig)`.
//!
//! Everything here runs before the signature is checked, on attacker input:
//! the size limit comes first, then the shape, then a strict header parse.
//! The payload is only decoded after the signature verified
//! ([`ParsedToken::payload`]).

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::strict_json::{self, truncate};
use super::{AuthFailure, MAX_TOKEN_BYTES};

/// The header fields the verifier acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// A token split into its parts, header parsed, signature decoded, payload
/// not yet trusted.
#[derive(Debug)]
pub struct ParsedToken<'a> {
    pub header: TokenHeader,
    /// `header.payload` exactly as received: the signed bytes.
    signing_input: &'a str,
    payload_b64: &'a str,
    signature: Vec<u8>,
}

impl<'a> ParsedToken<'a> {
    /// The bytes the signature covers.
    pub fn signing_input(&self) -> &'a [u8] {
        self.signing_input.as_bytes()
    }

    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// Decodes and parses the claims. Call only after the signature verified.
    pub fn payload(&self) -> Result<serde_json::Map<String, Value>, AuthFailure> {
        let bytes = URL_SAFE_NO_PAD
            .decode(self.payload_b64)
            .map_err(|_| AuthFailure::invalid("token payload is not valid base64url"))?;
        match strict_json::from_slice(&bytes) {
            Ok(Value::Object(claims)) => Ok(claims),
            Ok(_) => Err(AuthFailure::invalid("token payload is not a JSON object")),
            Err(_) => Err(AuthFailure::invalid(
                "token payload is not valid JSON (or has duplicate keys)",
            )),
        }
    }
}

/// Splits and checks a token's shape and header. Never decodes the payload.
pub fn parse(token: &str) -> Result<ParsedToken<'_>, AuthFailure> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthFailure::invalid(format!(
            "token is too large ({} bytes, at most {MAX_TOKEN_BYTES})",
            token.len()
        )));
    }
    if !token.bytes().all(|b| is_base64url(b) || b == b'.') {
        return Err(not_compact());
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_compact());
    };
    if header_b64.is_empty() || payload_b64.is_empty() {
        return Err(not_compact());
    }

    let header = parse_header(header_b64)?;
    if signature_b64.is_empty() {
        return Err(AuthFailure::invalid("token has no signature"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| AuthFailure::invalid("token signature is not valid base64url"))?;

    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    Ok(ParsedToken {
        header,
        signing_input,
        payload_b64,
        signature,
    })
}

fn parse_header(header_b64: &str) -> Result<TokenHeader, AuthFailure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| AuthFailure::invalid("token header is not valid base64url"))?;
    let header = match strict_json::from_slice(&bytes) {
        Ok(Value::Object(header)) => header,
        Ok(_) => return Err(AuthFailure::invalid("token header is not a JSON object")),
        Err(_) => {
            return Err(AuthFailure::invalid(
                "token header is not valid JSON (or has duplicate keys)",
            ));
        }
    };

    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg,
        Some(_) => return Err(AuthFailure::invalid("token header `alg` is not a string")),
        None => return Err(AuthFailure::invalid("token header has no `alg`")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthFailure::invalid(
            "unsigned tokens (`alg: none`) are never accepted",
        ));
    }
    let alg = Algorithm::from_str(alg).map_err(|_| {
        AuthFailure::invalid(format!(
            "token algorithm {:?} is not supported",
            truncate(alg, 16)
        ))
    })?;

    // RFC 7515 §4.1.11: a recipient must refuse extensions it does not
    // understand, and this verifier understands none (e.g. `b64: false`).
    if header.contains_key("crit") {
        return Err(AuthFailure::invalid("token header `crit` is not supported"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthFailure::invalid("token header `kid` is not a string")),
    };
    if header.get("typ").is_some_and(|typ| !typ.is_string()) {
        return Err(AuthFailure::invalid("token header `typ` is not a string"));
    }
    // `jku`, `jwk`, `x5u` and `x5c` are deliberately ignored: keys come only
    // from the hub's configuration, never from the token itself.
    Ok(TokenHeader { alg, kid })
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn not_compact() -> AuthFailure {
    AuthFailure::invalid("token is not a JWT in compact form (three base64url parts)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str, sig: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), sig)
    }

    fn msg(result: Result<ParsedToken<'_>, AuthFailure>) -> String {
        result.expect_err("should be refused").msg
    }

    #[test]
    fn splits_a_well_formed_token() {
        let t = token(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#, "{}", "AQID");
        let parsed = parse(&t).unwrap();
        assert_eq!(parsed.header.alg, Algorithm::RS256);
        assert_eq!(parsed.header.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.signature(), &[1, 2, 3]);
        assert_eq!(
            parsed.signing_input(),
            t.rsplit_once('.').unwrap().0.as_bytes()
        );
        assert!(parsed.payload().unwrap().is_empty());
    }

    #[test]
    fn refuses_bad_shapes() {
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "a.b.c.d.e",
            ".b.c",
            "a..c",
            "a b.c.d",
            "YQ==.YQ.YQ",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn refuses_alg_none_in_any_case_even_without_signature() {
        for alg in ["none", "None", "NONE"] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#), "{}", "");
            assert!(msg(parse(&t)).contains("alg: none"));
        }
    }

    #[test]
    fn refuses_bad_headers() {
        let cases = [
            (r#"{"kid":"a"}"#, "no `alg`"),
            (r#"{"alg":256}"#, "not a string"),
            (r#"{"alg":"HS1"}"#, "not supported"),
            (r#"{"alg":"HS256","kid":7}"#, "`kid`"),
            (r#"{"alg":"HS256","typ":1}"#, "`typ`"),
            (r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, "`crit`"),
            (r#"{"alg":"HS256","alg":"RS256"}"#, "duplicate"),
            (r#"["alg","HS256"]"#, "not a JSON object"),
        ];
        for (header, expected) in cases {
            let t = token(header, "{}", "AQID");
            let m = msg(parse(&t));
            assert!(m.contains(expected), "{header}: {m}");
        }
    }

    #[test]
    fn refuses_missing_or_malformed_signature() {
        let h = r#"{"alg":"HS256"}"#;
        assert!(msg(parse(&token(h, "{}", ""))).contains("no signature"));
        // A lone trailing base64 character is not a whole byte.
        assert!(msg(parse(&token(h, "{}", "A"))).contains("signature"));
    }

    #[test]
    fn refuses_oversized_tokens_before_parsing() {
        let huge = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert!(msg(parse(&huge)).contains("too large"));
    }

    #[test]
    fn payload_must_be_a_json_object_without_duplicates() {
        let h = r#"{"alg":"HS256"}"#;
        for payload in ["[1]", r#"{"exp":1,"exp":2}"#, "nope"] {
            let t = token(h, payload, "AQID");
            assert!(parse(&t).unwrap().payload().is_err(), "{payload}");
        }
    }
}
