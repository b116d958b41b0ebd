//! Authentication on a connection: `AUTH` and re-`AUTH`, the token's expiry (`EXPIRING`, then 4001), and the publish quota a token carries.

use super::*;

impl Connection {
    pub(super) async fn auth(&mut self, auth: Auth) {
        // An AUTH arrived in time; a refused one closes below.
        self.auth_deadline = None;
        let first = self.session.is_none();
        if let Some(v) = auth.v
            && v != PROTOCOL_VERSION
        {
            self.send_error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {v} is not supported; this hub speaks {PROTOCOL_VERSION}"
                ),
                None,
            );
            self.close(close::PROTOCOL_VIOLATION, "unsupported protocol version");
            return;
        }
        let now = crate::clock::now_ms();
        let granted = self
            .shared
            .authenticator
            .authenticate(auth.token.as_deref(), now)
            .await;
        match granted {
            Ok(granted) => {
                let session_id = match &self.session {
                    Some(session) => session.id.clone(),
                    None => format!("s-{}", uuid::Uuid::now_v7().simple()),
                };
                if !first && self.registered {
                    // Frames of this connection are handled in order, so
                    // every later PUBLISH / SUBSCRIBE sees the new policy;
                    // waiting for the broker makes deliveries switch before
                    // the OK too (nothing after the OK under the old one).
                    let (applied, is_applied) = tokio::sync::oneshot::channel();
                    let (conn, policy) = (self.id, Arc::clone(&granted.policy));
                    if self
                        .shared
                        .broker
                        .send(Command::PolicyChanged {
                            conn,
                            policy,
                            applied,
                        })
                        .await
                    {
                        let _ = is_applied.await;
                    }
                }
                self.expiry = granted.expires_at.map(|exp| self.expiry_timer(exp, now));
                self.set_publish_quota(
                    granted
                        .publish_limit
                        .or_else(|| self.config().limits.publish_limit()),
                );
                self.session = Some(Session {
                    id: session_id.clone(),
                    policy: granted.policy,
                    expires_at: granted.expires_at,
                });
                tracing::debug!(conn = self.id, subject = ?granted.subject, "authenticated");
                self.send(HubFrame::Ok(Welcome {
                    v: PROTOCOL_VERSION,
                    session: session_id,
                    server: SERVER_NAME.to_owned(),
                    heartbeat_ms: self.config().heartbeat_ms,
                    expires_at: granted.expires_at,
                }));
            }
            Err(failure) => {
                tracing::debug!(conn = self.id, first, %failure, "authentication refused");
                self.send_error(failure.code, failure.msg, None);
                // A refused re-AUTH ends the connection like a refused first
                // one (4001: get a new token): the old policy is dropped, not
                // kept, and nothing more is sent after the close.
                self.session = None;
                self.expiry = None;
                let reason = if first {
                    "authentication failed"
                } else {
                    "re-authentication failed"
                };
                self.close(close::AUTH_FAILED, reason);
            }
        }
    }

    /// A re-AUTH never refills the bucket (semantics.md §3): under the
    /// same quota it is kept, under another one (a token with another
    /// `rate` claim) it keeps its current level, at most the new burst.
    /// Only a connection that had no quota starts with a full one.
    pub(super) fn set_publish_quota(&mut self, limit: Option<RateLimit>) {
        let now = std::time::Instant::now();
        self.publish_quota = limit.map(|limit| match self.publish_quota.take() {
            Some(bucket) if bucket.limit() == limit => bucket,
            Some(bucket) => bucket.with_limit(limit, now),
            None => TokenBucket::new(limit, now),
        });
    }

    pub(super) fn leeway_ms(&self) -> u64 {
        self.shared.authenticator.leeway_ms()
    }

    /// The first expiry step for a token expiring at `exp` (ms since the
    /// epoch): `EXPIRING` `expiring_notice_ms` before `exp`, or right away
    /// when less time is left (a token accepted close to, or within the
    /// leeway after, its `exp` still gets the warning before the close).
    pub(super) fn expiry_timer(&self, exp: u64, now: u64) -> (Instant, ExpiryStep) {
        let due = self.expiry_due(exp, ExpiryStep::Warn);
        (instant_in(due.saturating_sub(now)), ExpiryStep::Warn)
    }

    /// Wall-clock time (ms) of an expiry step; saturating, since `exp` comes
    /// from a token and may be absurd.
    pub(super) fn expiry_due(&self, exp: u64, step: ExpiryStep) -> u64 {
        match step {
            ExpiryStep::Warn => exp.saturating_sub(self.config().expiring_notice_ms),
            ExpiryStep::Close => exp.saturating_add(self.leeway_ms()),
        }
    }

    pub(super) fn on_expiry(&mut self) {
        let Some((_, step)) = self.expiry.take() else {
            return;
        };
        let Some(exp) = self.session.as_ref().and_then(|s| s.expires_at) else {
            return;
        };
        let now = crate::clock::now_ms();
        let due = self.expiry_due(exp, step);
        if now < due {
            // The timer was capped (a far-away `exp`) or the wall clock
            // moved: not due yet.
            self.expiry = Some((instant_in(due - now), step));
            return;
        }
        match step {
            ExpiryStep::Warn => {
                self.send(HubFrame::Expiring(Expiring { expires_at: exp }));
                let close_at = self.expiry_due(exp, ExpiryStep::Close);
                self.expiry = Some((instant_in(close_at.saturating_sub(now)), ExpiryStep::Close));
            }
            ExpiryStep::Close => {
                self.send_error(ErrorCode::TokenExpired, "the token expired", None);
                self.session = None;
                self.close(close::AUTH_FAILED, "token expired");
            }
        }
    }

    // -----------------------------------------------------------------
    // PUBLISH
}
