//! Authentication of `AUTH` frames behind a small interface, so that the
//! development-mode authenticator here and a JWT verifier are
//! interchangeable.

use std::sync::Arc;

use promhub_core::frames::Millis;
use promhub_core::{ErrorCode, Policy};

/// A successful authentication: what the connection may do, and until when.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub policy: Arc<Policy>,
    /// Token expiry in ms since the epoch; `None` for credentials that do
    /// not expire.
    pub expires_at: Option<Millis>,
    /// Who the token names (`sub`), for logs.
    pub subject: Option<String>,
}

/// A refused authentication: the `ERR` code and a message safe to show the
/// client (never a secret).
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
}

/// Turns the token of an `AUTH` frame into a connection's permissions.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    fn authenticate(
        &self,
        token: Option<&str>,
        now_ms: Millis,
    ) -> Result<Authenticated, AuthFailure>;

    /// True when no real verification happens (development mode); the hub
    /// warns loudly at start.
    fn is_development(&self) -> bool {
        false
    }
}

/// Development mode: every connection gets the configured policy, whatever
/// token it sends (semantics.md §2, "without a configured verifier").
#[derive(Debug, Clone)]
pub struct DevAuthenticator {
    policy: Arc<Policy>,
}

impl DevAuthenticator {
    pub fn new(policy: Policy) -> Self {
        DevAuthenticator {
            policy: Arc::new(policy),
        }
    }
}

impl Authenticator for DevAuthenticator {
    fn authenticate(
        &self,
        _token: Option<&str>,
        _now_ms: Millis,
    ) -> Result<Authenticated, AuthFailure> {
        // One shared Arc: policies are immutable, and sharing lets the
        // broker's per-event ACL check be cached across subscribers.
        Ok(Authenticated {
            policy: Arc::clone(&self.policy),
            expires_at: None,
            subject: None,
        })
    }

    fn is_development(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use promhub_core::Topic;

    #[test]
    fn dev_mode_gives_every_token_the_configured_policy() {
        let auth = DevAuthenticator::new(Policy::from_scope_str("publish:a.*").unwrap());
        for token in [None, Some("anything"), Some("")] {
            let granted = auth.authenticate(token, 0).unwrap();
            assert!(granted.policy.may_publish(&Topic::parse("a.b").unwrap()));
            assert!(!granted.policy.may_publish(&Topic::parse("b").unwrap()));
            assert_eq!(granted.expires_at, None);
        }
        assert!(auth.is_development());
    }
}
