//! Who may use the ops API: `Authorization: Bearer <token>` with either the
//! configured static admin token (compared in constant time) or a JWT the
//! hub's verifier accepts whose policy has the `admin` scope.
//!
//! Development mode has no verifier (its authenticator accepts any token),
//! so there only the static token opens the ops API; without one the ops
//! API is closed (semantics.md §6: never open by default).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use promhub_core::Policy;
use subtle::ConstantTimeEq;

use super::{OpsError, OpsState};

/// An admitted admin caller.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    /// The JWT's policy; `None` for the static admin token, which is the
    /// operator's own credential and sees every topic.
    pub policy: Option<Arc<Policy>>,
}

impl Admin {
    /// Whether the caller's own subscribe ACL lets it read `topic`.
    pub fn may_read(&self, topic: &promhub_core::Topic) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|policy| policy.allows(promhub_core::Action::Subscribe, topic, None))
    }
}

impl FromRequestParts<OpsState> for Admin {
    type Rejection = OpsError;

    async fn from_request_parts(parts: &mut Parts, state: &OpsState) -> Result<Self, OpsError> {
        let token = bearer_token(parts)?;
        if let Some(expected) = &state.admin_token
            && bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes()))
        {
            return Ok(Admin { policy: None });
        }
        if state.authenticator.is_development() {
            // The development authenticator admits any token; it must not
            // open the ops API.
            return Err(OpsError::Unauthorized(
                "invalid admin token (a hub without a JWT verifier only accepts --admin-token)",
            ));
        }
        let granted = state
            .authenticator
            .authenticate(Some(token), crate::clock::now_ms())
            .await
            .map_err(|_| OpsError::Unauthorized("invalid or expired token"))?;
        if !granted.policy.admin {
            return Err(OpsError::Forbidden(
                "the token lacks the `admin` scope".to_owned(),
            ));
        }
        Ok(Admin {
            policy: Some(granted.policy),
        })
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, OpsError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(OpsError::Unauthorized(
            "missing Authorization: Bearer <token>",
        ))?;
    let value = header
        .to_str()
        .map_err(|_| OpsError::Unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or(OpsError::Unauthorized(
        "expected Authorization: Bearer <token>",
    ))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(OpsError::Unauthorized(
            "expected Authorization: Bearer <token>",
        ));
    }
    Ok(token)
}
