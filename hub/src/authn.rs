//! Authentication of `AUTH` frames behind one small interface with two
//! implementations: [`DevAuthenticator`] (development mode: the configured
//! policy for everyone) and the JWT [`Verifier`](crate::auth::Verifier).
//!
//! The result types are the verifier's ([`Authenticated`], [`AuthFailure`]),
//! so there is one of each in the hub.

use std::sync::Arc;

use async_trait::async_trait;
use promhub_core::Policy;
use promhub_core::frames::Millis;

use crate::auth::Verifier;
pub use crate::auth::{AuthFailure, Authenticated};

/// Turns the token of an `AUTH` frame into a connection's permissions.
///
/// Async because verifying may have to (re)load signing keys (a JWKS refetch
/// on an unknown `kid`).
#[async_trait]
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    async fn authenticate(
        &self,
        token: Option<&str>,
        now_ms: Millis,
    ) -> Result<Authenticated, AuthFailure>;

    /// How long after `expires_at` a token is still honoured. The gateway
    /// closes a connection at `expires_at + leeway_ms()`, the same allowance
    /// the authenticator applied when it accepted the token.
    fn leeway_ms(&self) -> u64 {
        0
    }

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

#[async_trait]
impl Authenticator for DevAuthenticator {
    async fn authenticate(
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
            publish_limit: None,
        })
    }

    fn is_development(&self) -> bool {
        true
    }
}

/// JWT mode: each connection's policy comes from its own verified token.
#[async_trait]
impl Authenticator for Verifier {
    async fn authenticate(
        &self,
        token: Option<&str>,
        now_ms: Millis,
    ) -> Result<Authenticated, AuthFailure> {
        self.verify(token, now_ms).await
    }

    fn leeway_ms(&self) -> u64 {
        Verifier::leeway_ms(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Secret};
    use promhub_core::{ErrorCode, Topic};

    #[tokio::test]
    async fn dev_mode_gives_every_token_the_configured_policy() {
        let auth = DevAuthenticator::new(Policy::from_scope_str("publish:a.*").unwrap());
        for token in [None, Some("anything"), Some("")] {
            let granted = auth.authenticate(token, 0).await.unwrap();
            assert!(granted.policy.may_publish(&Topic::parse("a.b").unwrap()));
            assert!(!granted.policy.may_publish(&Topic::parse("b").unwrap()));
            assert_eq!(granted.expires_at, None);
        }
        assert!(auth.is_development());
        assert_eq!(auth.leeway_ms(), 0);
    }

    #[tokio::test]
    async fn the_verifier_is_an_authenticator_with_its_own_leeway() {
        let config = AuthConfig {
            jwt_secret: Some(Secret::new("0123456789abcdef0123456789abcdef")),
            jwt_leeway_secs: 7,
            ..AuthConfig::default()
        };
        let verifier: Arc<dyn Authenticator> = Arc::new(Verifier::from_config(&config).unwrap());
        assert!(!verifier.is_development());
        assert_eq!(verifier.leeway_ms(), 7000);
        let refused = verifier.authenticate(Some("not.a.jwt"), 0).await;
        assert_eq!(refused.unwrap_err().code, ErrorCode::JwtInvalid);
        let missing = verifier.authenticate(None, 0).await;
        assert_eq!(missing.unwrap_err().code, ErrorCode::NoToken);
    }
}
