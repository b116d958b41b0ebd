//! Claim checks on a token whose signature has verified, and the mapping
//! from its permission claims to a [`Policy`].
//!
//! Every claim this module reads must have its JSON type or the token is
//! `jwt_invalid`; a wrong type is never read as "absent" (`null` included).
//! `exp` is required: a token that never expires cannot be revoked by
//! rotating nothing but time, so the hub does not accept one.
//!
//! Checks run identity first, time last, so `token_expired` is only reported
//! for a token that would otherwise have been accepted (a client that gets it
//! knows a fresh token of the same kind will do).

use std::sync::Arc;

use promhub_core::acl::Policy;
use promhub_core::frames::ErrorCode;
use serde_json::{Map, Value};

use super::strict_json::truncate;
use super::{AuthFailure, Authenticated};
use crate::limits::{RateLimit, default_burst};

/// What the claims must satisfy; built once from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    /// Accepted audiences; empty = the hub has none (tokens with `aud` are
    /// then refused, RFC 7519 §4.1.3).
    pub audiences: Vec<String>,
    pub issuer: Option<String>,
    pub leeway_ms: u64,
    /// For tokens with no `policy`, `scopes` or `scope` claim.
    pub default_policy: Arc<Policy>,
}

pub(crate) fn check(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now_ms: u64,
) -> Result<Authenticated, AuthFailure> {
    let exp_ms = numeric_date_ms(claims, "exp")?;
    let nbf_ms = numeric_date_ms(claims, "nbf")?;
    numeric_date_ms(claims, "iat")?;
    let subject = optional_string(claims, "sub")?;
    let issuer = optional_string(claims, "iss")?;
    let audience = audience(claims)?;

    if let Some(expected) = &rules.issuer
        && issuer.as_deref() != Some(expected.as_str())
    {
        return Err(AuthFailure::invalid("token issuer (`iss`) is not accepted"));
    }
    match (&audience, rules.audiences.is_empty()) {
        (Some(auds), false) if auds.iter().any(|a| rules.audiences.contains(a)) => {}
        (_, false) => {
            return Err(AuthFailure::invalid(
                "token audience (`aud`) does not name this hub",
            ));
        }
        (Some(auds), true) if !auds.is_empty() => {
            return Err(AuthFailure::invalid(
                "token is meant for an audience (`aud`) but this hub has none configured",
            ));
        }
        (_, true) => {}
    }

    let policy = policy(claims, &rules.default_policy)?;
    let publish_limit = rate(claims)?;

    let Some(exp_ms) = exp_ms else {
        return Err(AuthFailure::invalid(
            "token has no `exp` claim (tokens must expire)",
        ));
    };
    if let Some(nbf_ms) = nbf_ms
        && now_ms.saturating_add(rules.leeway_ms) < nbf_ms
    {
        return Err(AuthFailure::invalid("token is not valid yet (`nbf`)"));
    }
    if now_ms >= exp_ms.saturating_add(rules.leeway_ms) {
        return Err(AuthFailure::new(
            ErrorCode::TokenExpired,
            "token has expired",
        ));
    }

    Ok(Authenticated {
        policy,
        subject,
        expires_at: Some(exp_ms),
        publish_limit,
    })
}

/// A NumericDate (seconds, possibly fractional, RFC 7519 §2) in ms.
fn numeric_date_ms(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthFailure> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let invalid = || AuthFailure::invalid(format!("claim `{name}` is not a non-negative number"));
    let Value::Number(number) = value else {
        return Err(invalid());
    };
    if let Some(seconds) = number.as_u64() {
        return Ok(Some(seconds.saturating_mul(1000)));
    }
    match number.as_f64() {
        // `as` saturates: absurdly large dates become u64::MAX ms.
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Some((seconds * 1000.0) as u64))
        }
        _ => Err(invalid()),
    }
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthFailure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthFailure::invalid(format!(
            "claim `{name}` is not a string"
        ))),
    }
}

/// `aud`: a string or an array of strings.
fn audience(claims: &Map<String, Value>) -> Result<Option<Vec<String>>, AuthFailure> {
    let invalid = || AuthFailure::invalid("claim `aud` is not a string or an array of strings");
    match claims.get("aud") {
        None => Ok(None),
        Some(Value::String(aud)) => Ok(Some(vec![aud.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(invalid))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid()),
    }
}

/// `rate`: `{"publish_per_sec": N, "burst": B}` (`burst` optional, one
/// second's worth by default), the per-connection publish quota of this
/// token's connections.
fn rate(claims: &Map<String, Value>) -> Result<Option<RateLimit>, AuthFailure> {
    let Some(value) = claims.get("rate") else {
        return Ok(None);
    };
    let invalid = || {
        AuthFailure::invalid(
            "claim `rate` must be {\"publish_per_sec\": positive number, \"burst\"?: positive integer}",
        )
    };
    let Value::Object(rate) = value else {
        return Err(invalid());
    };
    if rate.keys().any(|k| k != "publish_per_sec" && k != "burst") {
        return Err(invalid());
    }
    let per_sec = rate
        .get("publish_per_sec")
        .and_then(Value::as_f64)
        .ok_or_else(invalid)?;
    let burst = match rate.get("burst") {
        None => default_burst(per_sec),
        Some(burst) => burst
            .as_u64()
            .and_then(|b| u32::try_from(b).ok())
            .ok_or_else(invalid)?,
    };
    let limit = RateLimit { per_sec, burst };
    limit.validate("claim `rate`").map_err(|_| invalid())?;
    Ok(Some(limit))
}

/// `policy` (object) if present, else `scopes` (array of strings), else
/// `scope` (space-separated string), else the default. Every present claim
/// is type-checked and parsed by sdk-core, even the ones precedence hides: a
/// malformed permission claim makes the token invalid, never silently ignored
/// (semantics.md §2).
fn policy(claims: &Map<String, Value>, default: &Arc<Policy>) -> Result<Arc<Policy>, AuthFailure> {
    let from_policy = match claims.get("policy") {
        None => None,
        Some(value @ Value::Object(_)) => Some(Policy::from_json(value)),
        Some(_) => return Err(AuthFailure::invalid("claim `policy` is not an object")),
    };
    let from_scopes = match claims.get("scopes") {
        None => None,
        Some(Value::Array(items)) => Some(Policy::from_scopes(
            &items
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<&str>>>()
                .ok_or_else(|| AuthFailure::invalid("claim `scopes` is not an array of strings"))?,
        )),
        Some(_) => {
            return Err(AuthFailure::invalid(
                "claim `scopes` is not an array of strings",
            ));
        }
    };
    let from_scope = match claims.get("scope") {
        None => None,
        Some(Value::String(scope)) => Some(Policy::from_scope_str(scope)),
        Some(_) => return Err(AuthFailure::invalid("claim `scope` is not a string")),
    };

    let mut chosen = None;
    for parsed in [from_policy, from_scopes, from_scope].into_iter().flatten() {
        let policy = parsed.map_err(|e| {
            AuthFailure::invalid(format!(
                "token permissions are invalid: {}",
                truncate(&e.to_string(), 200)
            ))
        })?;
        chosen.get_or_insert(policy);
    }
    Ok(chosen.map_or_else(|| Arc::clone(default), Arc::new))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW_MS: u64 = 1_700_000_000_000;
    const NOW_S: u64 = NOW_MS / 1000;

    fn rules() -> ClaimRules {
        ClaimRules {
            audiences: Vec::new(),
            issuer: None,
            leeway_ms: 5_000,
            default_policy: Arc::new(Policy::deny_all()),
        }
    }

    fn check_json(claims: Value, rules: &ClaimRules) -> Result<Authenticated, AuthFailure> {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        check(&map, rules, NOW_MS)
    }

    #[test]
    fn wrong_types_are_invalid_never_absent() {
        let exp = NOW_S + 60;
        for claims in [
            json!({"exp": "9999999999"}),
            json!({"exp": null}),
            json!({"exp": -1}),
            json!({"exp": exp, "nbf": "0"}),
            json!({"exp": exp, "iat": true}),
            json!({"exp": exp, "sub": 5}),
            json!({"exp": exp, "iss": ["a"]}),
            json!({"exp": exp, "aud": 5}),
            json!({"exp": exp, "aud": ["a", 5]}),
            json!({"exp": exp, "scopes": "publish:a"}),
            json!({"exp": exp, "scopes": ["publish:a", 1]}),
            json!({"exp": exp, "scope": ["publish:a"]}),
            json!({"exp": exp, "policy": "allow"}),
            json!({"exp": exp, "policy": null}),
            // Lower-precedence claims are still type-checked and parsed.
            json!({"exp": exp, "policy": {"rules": []}, "scope": 1}),
            json!({"exp": exp, "scopes": ["publish:a"], "scope": "publish:a..b"}),
            json!({"exp": exp, "policy": {"rules": []}, "scopes": ["delete:a"]}),
        ] {
            let err = check_json(claims.clone(), &rules()).expect_err(&claims.to_string());
            assert_eq!(err.code, ErrorCode::JwtInvalid, "{claims}");
        }
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let ok = check_json(json!({"exp": NOW_S as f64 + 60.5}), &rules()).unwrap();
        assert_eq!(ok.expires_at, Some(NOW_MS + 60_500));
    }

    #[test]
    fn exp_is_required() {
        let err = check_json(json!({"sub": "x"}), &rules()).unwrap_err();
        assert_eq!(err.code, ErrorCode::JwtInvalid);
        assert!(err.msg.contains("exp"));
    }

    #[test]
    fn expiry_boundaries_with_leeway() {
        // exp + leeway == now: expired (RFC: "on or after").
        let at_edge = check_json(json!({"exp": NOW_S - 5}), &rules()).unwrap_err();
        assert_eq!(at_edge.code, ErrorCode::TokenExpired);
        check_json(json!({"exp": NOW_S - 4}), &rules()).unwrap();
        check_json(json!({"exp": NOW_S + 100, "nbf": NOW_S + 5}), &rules()).unwrap();
        let early = check_json(json!({"exp": NOW_S + 100, "nbf": NOW_S + 6}), &rules());
        assert_eq!(early.unwrap_err().code, ErrorCode::JwtInvalid);
    }

    #[test]
    fn expired_and_otherwise_invalid_is_reported_as_invalid() {
        let mut r = rules();
        r.issuer = Some("me".into());
        let err = check_json(json!({"exp": 1, "iss": "other"}), &r).unwrap_err();
        assert_eq!(err.code, ErrorCode::JwtInvalid);
    }

    #[test]
    fn audience_rules() {
        let exp = NOW_S + 60;
        let mut r = rules();
        // No audience configured: tokens naming one are refused.
        assert!(check_json(json!({"exp": exp, "aud": "hub"}), &r).is_err());
        check_json(json!({"exp": exp, "aud": []}), &r).unwrap();
        r.audiences = vec!["hub".into()];
        check_json(json!({"exp": exp, "aud": "hub"}), &r).unwrap();
        check_json(json!({"exp": exp, "aud": ["x", "hub"]}), &r).unwrap();
        assert!(check_json(json!({"exp": exp}), &r).is_err());
        assert!(check_json(json!({"exp": exp, "aud": []}), &r).is_err());
        assert!(check_json(json!({"exp": exp, "aud": ["x"]}), &r).is_err());
    }

    #[test]
    fn rate_claim_is_the_publish_quota_and_is_type_checked() {
        let exp = NOW_S + 60;
        let none = check_json(json!({"exp": exp}), &rules()).unwrap();
        assert_eq!(none.publish_limit, None);
        let ok = check_json(
            json!({"exp": exp, "rate": {"publish_per_sec": 20, "burst": 5}}),
            &rules(),
        )
        .unwrap();
        assert_eq!(
            ok.publish_limit,
            Some(RateLimit {
                per_sec: 20.0,
                burst: 5
            })
        );
        let default_burst = check_json(
            json!({"exp": exp, "rate": {"publish_per_sec": 0.5}}),
            &rules(),
        )
        .unwrap();
        assert_eq!(default_burst.publish_limit.unwrap().burst, 1);
        for rate in [
            json!(5),
            json!(null),
            json!({}),
            json!({"publish_per_sec": 0}),
            json!({"publish_per_sec": -3}),
            json!({"publish_per_sec": "5"}),
            json!({"publish_per_sec": 5, "burst": 0}),
            json!({"publish_per_sec": 5, "burst": 1.5}),
            json!({"publish_per_sec": 5, "bursts": 2}),
        ] {
            let err = check_json(json!({"exp": exp, "rate": rate.clone()}), &rules())
                .expect_err(&rate.to_string());
            assert_eq!(err.code, ErrorCode::JwtInvalid, "{rate}");
        }
    }

    #[test]
    fn issuer_is_required_when_configured() {
        let exp = NOW_S + 60;
        let mut r = rules();
        r.issuer = Some("idp".into());
        check_json(json!({"exp": exp, "iss": "idp"}), &r).unwrap();
        assert!(check_json(json!({"exp": exp}), &r).is_err());
        assert!(check_json(json!({"exp": exp, "iss": "IDP"}), &r).is_err());
    }
}
