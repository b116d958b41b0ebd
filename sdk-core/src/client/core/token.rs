//! Tokens: `set_token`, and the token source the driver may have
//! ([`ClientConfig::token_source`](crate::client::ClientConfig::token_source)):
//! when to ask it ([`Transmit::FetchToken`]), and when to ask again after
//! it failed (the reconnect backoff, jittered from the machine's seeded
//! RNG, so both SDKs retry alike and tests are deterministic).

use super::{ClientCore, Lost, close_code};
use crate::client::codec::Codec;
use crate::client::events::{ClientEvent, ConnectionState, StateReason, Transmit};
use crate::frames::Millis;

/// Where the token source stands.
#[derive(Debug, Default)]
pub(super) struct TokenFetch {
    /// A [`Transmit::FetchToken`] is unanswered.
    in_flight: bool,
    /// A refresh (or the reconnect after a refused token) waits for a
    /// token: a failure is retried.
    wanted: bool,
    /// A token arrived since the last connection authenticated: the next
    /// connection attempt uses it instead of asking for another.
    pub(super) fresh: bool,
    /// The current connection attempt waits for a token before `AUTH`.
    pub(super) for_connect: bool,
    /// … and its socket is open already.
    pub(super) socket_open: bool,
    /// Failures in a row, for the retry delay.
    failures: u32,
    /// When to ask again after a failure (driver ms).
    pub(super) retry_at: Option<u64>,
}

impl TokenFetch {
    pub(super) fn new(have_token: bool) -> Self {
        TokenFetch {
            fresh: have_token,
            ..TokenFetch::default()
        }
    }

    /// The connection attempt is over. If it was waiting for the source,
    /// the next one asks again rather than wait for an answer that may
    /// never come (a late answer is still taken).
    pub(super) fn give_up_connect(&mut self) {
        if std::mem::take(&mut self.for_connect) {
            self.in_flight = false;
        }
        self.socket_open = false;
    }
}

impl<C: Codec> ClientCore<C> {
    /// Replaces the token. Connected: sends `AUTH` on the open connection
    /// (`OK` → [`ClientEvent::TokenRefreshed`]; `ERR` → the hub closes).
    /// Authenticating: sent right after `OK`. Otherwise used by the next
    /// `AUTH` (the next connection attempt asks the token source for no
    /// other) — and if the hub had refused the previous token (4001/4003),
    /// this reconnects (unless reconnecting is disabled): at once after the
    /// first refusal, after a reconnect delay
    /// ([`ReconnectConfig::delay_bounds`](crate::client::ReconnectConfig::delay_bounds)
    /// of the refusals in a row) after later ones, so that a token source
    /// that keeps handing out a bad token cannot make the client hammer the
    /// hub.
    pub fn set_token(&mut self, now: u64, token: Option<String>) {
        self.token = token;
        self.tokens.wanted = false;
        self.tokens.retry_at = None;
        self.tokens.failures = 0;
        if !matches!(
            self.state,
            ConnectionState::Connected | ConnectionState::Authenticating
        ) {
            self.tokens.fresh = true;
        }
        match self.state {
            ConnectionState::Connected => self.send_token_refresh(now),
            ConnectionState::Authenticating => self.auth.refresh_after_ok = true,
            ConnectionState::Connecting => {
                if std::mem::take(&mut self.tokens.for_connect)
                    && std::mem::take(&mut self.tokens.socket_open)
                {
                    self.authenticate(now);
                }
            }
            ConnectionState::Closed if self.awaiting_token && self.config.reconnect.enabled => {
                self.awaiting_token = false;
                self.reconnect.attempt = 0;
                if self.token_refusals <= 1 {
                    self.start_connect(now, StateReason::TokenUpdated);
                } else {
                    let attempt = self.token_refusals - 1;
                    let (floor, cap) = self.config.reconnect.delay_bounds(attempt);
                    let delay_ms = self.rng.u64(floor..=cap);
                    self.reconnect.attempt = attempt;
                    self.reconnect.at = Some(now.saturating_add(delay_ms));
                    self.set_state(ConnectionState::Disconnected, StateReason::TokenUpdated);
                    self.emit(ClientEvent::Reconnecting { attempt, delay_ms });
                }
            }
            ConnectionState::Closed | ConnectionState::Disconnected => {}
        }
    }

    /// The token source answered [`Transmit::FetchToken`] with a token
    /// (`None`: connect anonymously). Used like [`set_token`](Self::set_token).
    pub fn handle_token(&mut self, now: u64, token: Option<String>) {
        self.tokens.in_flight = false;
        self.set_token(now, token);
    }

    /// The token source failed. A connection attempt that waited for the
    /// token is given up (and reconnects with the usual backoff, asking
    /// again); a refresh, or the reconnect after a refused token, asks
    /// again after the reconnect backoff of the failures in a row.
    /// Reported with [`ClientEvent::TokenFetchFailed`].
    pub fn handle_token_error(&mut self, now: u64, message: &str) {
        self.tokens.in_flight = false;
        self.tokens.failures = self.tokens.failures.saturating_add(1);
        if self.state == ConnectionState::Connecting && self.tokens.for_connect {
            self.emit(ClientEvent::TokenFetchFailed {
                message: message.to_owned(),
                retry_in_ms: None,
            });
            self.abandon_socket(close_code::NORMAL, "no token");
            self.connection_lost(now, Lost::TokenFetchFailed(message.to_owned()));
            return;
        }
        let retry_in_ms = self.tokens.wanted.then(|| {
            let (floor, cap) = self.config.reconnect.delay_bounds(self.tokens.failures);
            self.rng.u64(floor..=cap)
        });
        self.tokens.retry_at = retry_in_ms.map(|delay| now.saturating_add(delay));
        self.emit(ClientEvent::TokenFetchFailed {
            message: message.to_owned(),
            retry_in_ms,
        });
    }

    /// Closed after the hub refused the token, while the token source is
    /// being asked for a new one: a reconnect follows when it answers.
    pub fn waiting_for_token(&self) -> bool {
        self.state == ConnectionState::Closed
            && self.awaiting_token
            && self.config.token_source
            && self.config.reconnect.enabled
    }

    /// The token must be replaced: tells the application, and asks the
    /// token source if there is one.
    pub(super) fn need_token(&mut self, expires_at: Option<Millis>) {
        self.emit(ClientEvent::TokenRefreshNeeded { expires_at });
        if self.config.token_source {
            self.tokens.wanted = true;
            self.fetch_token();
        }
    }

    /// A connection attempt starts: it waits for a token from the source
    /// unless one arrived since the last connection.
    pub(super) fn fetch_token_for_connect(&mut self) {
        if self.config.token_source && !self.tokens.fresh {
            self.tokens.for_connect = true;
            self.fetch_token();
        }
    }

    fn fetch_token(&mut self) {
        self.tokens.retry_at = None;
        if !std::mem::replace(&mut self.tokens.in_flight, true) {
            self.transmits.push_back(Transmit::FetchToken);
        }
    }

    pub(super) fn fire_token_retry(&mut self, now: u64) {
        if let Some(at) = self.tokens.retry_at
            && at <= now
        {
            self.tokens.retry_at = None;
            if self.tokens.wanted {
                self.fetch_token();
            }
        }
    }

    /// [`close`](Self::close): nothing waits for a token any more.
    pub(super) fn stop_token_retries(&mut self) {
        self.tokens.wanted = false;
        self.tokens.retry_at = None;
    }
}
