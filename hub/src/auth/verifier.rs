//! [`Verifier`]: token in, [`Authenticated`] or [`AuthFailure`] out.
//!
//! The token's `alg` selects the key store, and each store holds keys of its
//! own families only: `HS*` → the configured secret; `RS*`/`PS*`/`ES*`/
//! `EdDSA` → JWKS keys whose allowed algorithms include it. No path leads from
//! a JWKS key to HMAC (the key-confusion attack), and the crypto backend
//! checks the key family once more when it builds the verifier.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use promhub_core::frames::ErrorCode;

use super::claims::{self, ClaimRules};
use super::config::{self, AuthConfig, AuthConfigError};
use super::jwks::{self, JwksError, JwksSource, JwksStore, Lookup};
use super::token::{self, ParsedToken};
use super::{AuthFailure, Authenticated};

/// Verifies `AUTH` tokens. Cheap to clone (one `Arc`); share one per hub.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// HS256/384/512 key; `DecodingKey` zeroizes on drop.
    secret: Option<DecodingKey>,
    jwks: Option<JwksStore>,
    rules: ClaimRules,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &self.inner.secret.as_ref().map(|_| "[redacted]"))
            .field("jwks", &self.inner.jwks.is_some())
            .field("rules", &self.inner.rules)
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier. Fails on any configuration problem, including
    /// development mode (nothing configured) and an unusable JWKS file; a
    /// JWKS URL is fetched on first use or by [`Verifier::load_keys`].
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        config.validate()?;
        let secret = config
            .jwt_secret
            .as_ref()
            .map(|secret| DecodingKey::from_secret(secret.expose().as_bytes()));

        let cache_ttl = Duration::from_secs(config.jwks_cache_ttl_secs);
        let refetch_interval = Duration::from_secs(config.jwks_refetch_interval_secs);
        let jwks = if let Some(url) = &config.jwks_url {
            let source = JwksSource::url(config::jwks_url(url)?, config.fetch_timeout())
                .map_err(AuthConfigError::HttpClient)?;
            Some(JwksStore::new(source, None, cache_ttl, refetch_interval))
        } else if let Some(path) = &config.jwks_file {
            let file_error = |reason: String| AuthConfigError::JwksFile {
                path: path.clone(),
                reason,
            };
            let keys = jwks::load_file_now(path).map_err(|e| file_error(e.to_string()))?;
            if keys.is_empty() {
                return Err(file_error("holds no usable signing key".to_owned()));
            }
            let source = JwksSource::File(path.clone());
            Some(JwksStore::new(
                source,
                Some(keys),
                cache_ttl,
                refetch_interval,
            ))
        } else {
            None
        };

        let rules = ClaimRules {
            audiences: config.jwt_aud.clone(),
            issuer: config.jwt_iss.clone(),
            leeway_ms: config.jwt_leeway_secs.saturating_mul(1000),
            default_policy: Arc::new(config.default_policy()?),
        };
        Ok(Verifier {
            inner: Arc::new(Inner {
                secret,
                jwks,
                rules,
            }),
        })
    }

    /// How long after `exp` a token is still accepted, in ms (`--jwt-leeway`).
    pub fn leeway_ms(&self) -> u64 {
        self.inner.rules.leeway_ms
    }

    /// (Re)loads the JWKS now, e.g. at start to report a bad URL early.
    /// `Ok(None)` without a JWKS or when the refetch interval forbids a load
    /// yet; `Ok(Some(n))`: `n` usable keys.
    pub async fn load_keys(&self, now_ms: u64) -> Result<Option<usize>, JwksError> {
        match &self.inner.jwks {
            Some(store) => store.load(now_ms).await.transpose(),
            None => Ok(None),
        }
    }

    /// Verifies `token` at `now_ms` (ms since the Unix epoch; injected so the
    /// caller owns the clock). `None` or an empty token is `no_token`.
    pub async fn verify(
        &self,
        token: Option<&str>,
        now_ms: u64,
    ) -> Result<Authenticated, AuthFailure> {
        let token = match token {
            Some(token) if !token.is_empty() => token,
            _ => {
                return Err(AuthFailure::new(ErrorCode::NoToken, "a token is required"));
            }
        };
        let parsed = token::parse(token)?;
        let alg = parsed.header.alg;
        if alg.family() == AlgorithmFamily::Hmac {
            let Some(secret) = &self.inner.secret else {
                return Err(AuthFailure::invalid(
                    "HS256/384/512 tokens are not accepted by this hub (no shared secret is configured)",
                ));
            };
            if !signature_verifies(&parsed, alg, secret) {
                return Err(bad_signature());
            }
        } else {
            self.verify_with_jwks(&parsed, now_ms).await?;
        }
        claims::check(&parsed.payload()?, &self.inner.rules, now_ms)
    }

    async fn verify_with_jwks(
        &self,
        parsed: &ParsedToken<'_>,
        now_ms: u64,
    ) -> Result<(), AuthFailure> {
        let alg = parsed.header.alg;
        let Some(store) = &self.inner.jwks else {
            return Err(AuthFailure::invalid(format!(
                "{alg:?} tokens are not accepted by this hub (it verifies HS256/384/512 only)"
            )));
        };
        let kid = parsed.header.kid.as_deref();
        let snapshot = store.snapshot(kid, now_ms).await;
        if !snapshot.loaded {
            // Not the token's fault: the hub could not load its keys yet.
            return Err(AuthFailure::new(
                ErrorCode::Internal,
                "the hub's signing keys are unavailable; try again later",
            ));
        }
        match snapshot.keys.lookup(kid, alg) {
            Lookup::Found(keys) => {
                if keys
                    .into_iter()
                    .any(|key| signature_verifies(parsed, alg, key))
                {
                    Ok(())
                } else {
                    Err(bad_signature())
                }
            }
            Lookup::UnknownKid => Err(AuthFailure::invalid("token key id (`kid`) is unknown")),
            Lookup::NotForSignatures => Err(AuthFailure::invalid(
                "token key id (`kid`) names a key that is not usable for signatures",
            )),
            Lookup::AlgorithmNotAllowed => Err(AuthFailure::invalid(format!(
                "the key named by `kid` does not allow {alg:?}"
            ))),
            Lookup::AmbiguousWithoutKid { candidates: 0 } => Err(AuthFailure::invalid(format!(
                "no signing key allows {alg:?}"
            ))),
            Lookup::AmbiguousWithoutKid { .. } => Err(AuthFailure::invalid(
                "token has no key id (`kid`) and several keys could have signed it",
            )),
        }
    }
}

fn signature_verifies(parsed: &ParsedToken<'_>, alg: Algorithm, key: &DecodingKey) -> bool {
    // The factory refuses a key of another family (e.g. an RSA key for HS256).
    match (DEFAULT_PROVIDER.verifier_factory)(&alg, key) {
        Ok(verifier) => verifier
            .verify(parsed.signing_input(), &parsed.signature().to_vec())
            .is_ok(),
        Err(_) => false,
    }
}

fn bad_signature() -> AuthFailure {
    AuthFailure::invalid("token signature does not verify")
}
