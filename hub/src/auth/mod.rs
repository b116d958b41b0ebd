//! JWT authentication (semantics.md §2): turns the `AUTH.token` of a
//! connection into its [`Policy`] or an [`AuthFailure`] with the protocol's
//! error code.
//!
//! - [`config`]: [`AuthConfig`] (TOML) and [`AuthArgs`] (CLI flags).
//! - [`token`]: the compact-JWS parser (size limit, header, strict JSON).
//! - [`jwks`]: JWK parsing and the cached, single-flight JWKS key store.
//! - `claims`: registered-claim checks and the claim → policy mapping.
//! - [`verifier`]: [`Verifier`], which ties them together.
//! - [`mint`]: HS256 development tokens (`promhub token`).
//!
//! Security rules that hold everywhere in this module:
//! - the key decides the algorithm family: the shared secret verifies only
//!   `HS*` tokens, JWKS keys only the asymmetric algorithms they allow; a
//!   JWKS never supplies an HMAC secret and `alg: none` is never accepted;
//! - error messages never contain the token, the secret or key material;
//! - permissions come only from `promhub_core::acl::Policy`'s parsers.

use std::sync::Arc;

use promhub_core::acl::Policy;
use promhub_core::frames::ErrorCode;

use crate::limits::RateLimit;

mod claims;
pub mod config;
pub mod jwks;
pub mod mint;
pub mod token;
pub mod verifier;

mod strict_json;

pub use config::{AuthArgs, AuthConfig, AuthConfigError, Secret};
pub use mint::{MintError, MintOptions, TokenArgs, mint_dev_token, run_token_command};
pub use verifier::Verifier;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The shortest accepted HMAC secret: 256 bits, the HS256 hash size
/// (RFC 7518 §3.2). Shorter secrets are brute-forceable offline from any
/// token.
pub const MIN_SECRET_BYTES: usize = 32;

/// A verified token: what the connection may do and until when.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    /// From the `policy`, `scopes` or `scope` claim, else the default scopes.
    pub policy: Arc<Policy>,
    /// The `sub` claim.
    pub subject: Option<String>,
    /// The `exp` claim in milliseconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// The `rate` claim: this token's per-connection publish quota, in
    /// place of the configured one.
    pub publish_limit: Option<RateLimit>,
}

/// Why a token was refused: `code` is one of `no_token`, `jwt_invalid`,
/// `token_expired` (or `internal` when no signing key could ever be loaded).
/// `msg` is safe to send to the client and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {msg}")]
pub struct AuthFailure {
    pub code: ErrorCode,
    pub msg: String,
}

impl AuthFailure {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        AuthFailure {
            code,
            msg: msg.into(),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        AuthFailure::new(ErrorCode::JwtInvalid, msg)
    }
}
