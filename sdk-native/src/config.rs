//! [`ClientConfig`]: where the token comes from, and the knobs of the
//! connection state machine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use promhub_core::client::{self as core, QueuePolicy};

/// What a token provider may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The future a token provider returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

pub(crate) type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// How a [`Client`](crate::Client) connects and behaves. Every setting has
/// a working default; `ClientConfig::new().token(jwt)` is a typical start.
#[derive(Clone)]
pub struct ClientConfig {
    /// The settings of the sans-IO state machine (timeouts, reconnect
    /// backoff, heartbeat, outbound queue, token refresh margin). The
    /// builder methods below set the common ones.
    pub core: core::ClientConfig,
    pub(crate) token_provider: Option<TokenProvider>,
    /// How many connection events a slow [`events`](crate::Client::events)
    /// stream may fall behind before it skips some (it is then told how
    /// many with [`ConnectionEvent::Missed`](crate::ConnectionEvent::Missed)).
    pub event_capacity: usize,
    /// Largest frame accepted from the hub.
    pub max_frame_bytes: usize,
    /// TLS for `wss://` URLs; `None`: rustls with the webpki root
    /// certificates (the public CAs).
    #[cfg(feature = "rustls")]
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        let mut core = self.core.clone();
        if core.token.is_some() {
            core.token = Some("<redacted>".to_owned());
        }
        f.debug_struct("ClientConfig")
            .field("core", &core)
            .field("token_provider", &self.token_provider.is_some())
            .field("event_capacity", &self.event_capacity)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("custom_tls", &self.has_custom_tls())
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::new()
    }
}

impl ClientConfig {
    /// Anonymous, the protocol's default timeouts, reconnect forever with
    /// jittered backoff (250 ms … 30 s).
    pub fn new() -> Self {
        let mut core =
            core::ClientConfig::new(concat!("promhub-native/", env!("CARGO_PKG_VERSION")));
        // A per-client seed: with the core's fixed default every client
        // would draw the same "random" reconnect delays, and a crowd
        // reconnecting to a restarted hub would stay in lockstep.
        core.seed = fastrand::u64(..);
        ClientConfig {
            core,
            token_provider: None,
            event_capacity: 32,
            max_frame_bytes: 16 * 1024 * 1024,
            #[cfg(feature = "rustls")]
            tls: None,
        }
    }

    fn has_custom_tls(&self) -> bool {
        #[cfg(feature = "rustls")]
        return self.tls.is_some();
        #[cfg(not(feature = "rustls"))]
        false
    }

    /// Trusts exactly these root certificates for `wss://` instead of the
    /// public CAs (webpki roots): for a hub whose certificate comes from a
    /// private CA. Load the CA's PEM file with
    /// [`rustls::pki_types::pem::PemObject`](crate::rustls::pki_types::pem::PemObject):
    ///
    /// ```no_run
    /// use promhub::rustls::RootCertStore;
    /// use promhub::rustls::pki_types::CertificateDer;
    /// use promhub::rustls::pki_types::pem::PemObject;
    ///
    /// # fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut roots = RootCertStore::empty();
    /// for cert in CertificateDer::pem_file_iter("ca.pem")? {
    ///     roots.add(cert?)?;
    /// }
    /// let config = promhub::ClientConfig::new().token("eyJ...").tls_roots(roots);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "rustls")]
    pub fn tls_roots(self, roots: rustls::RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports rustls' default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls_config(Arc::new(tls))
    }

    /// The complete rustls setup for `wss://` (roots, client certificates,
    /// protocol versions), replacing the default (the public CAs).
    #[cfg(feature = "rustls")]
    pub fn tls_config(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticates with this token (a JWT). To refresh it, call
    /// [`Client::set_token`](crate::Client::set_token), or use
    /// [`token_provider`](Self::token_provider) instead.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.core.token = Some(token.into());
        self.token_provider = None;
        self
    }

    /// Gets the token from `provider`, which is called before every
    /// connection attempt (in parallel with opening the socket) and when the
    /// token is about to expire (the hub's `EXPIRING`, or the refresh margin
    /// before `OK.expires_at`): the fresh token is then sent in-band, the
    /// connection and its subscriptions stay up. After the hub refused a
    /// token (close 4001/4003) the client waits for the provider to yield a
    /// new one before it reconnects; a failing provider is retried with the
    /// reconnect backoff (jittered; a connection attempt that waited for the
    /// token is given up and retried as a whole). `promhub-core` decides all
    /// of it, so the browser SDK's `getToken` follows the same rules.
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.core.token = None;
        self.token_provider = Some(Arc::new(move || -> TokenFuture {
            let fut = provider();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// Sent to the hub in `AUTH.client`.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.core.client_name = name.into();
        self
    }

    /// How long a publish, subscribe or unsubscribe may wait for its answer
    /// (for a publish: counted from the call, time in the outbound queue
    /// included). Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.core.request_timeout_ms = millis(timeout);
        self
    }

    /// How long opening the WebSocket may take. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.core.connect_timeout_ms = millis(timeout);
        self
    }

    /// The reconnect backoff: attempt `n` waits a random delay between
    /// `min / 2` and `min(max, min × 2^(n−1))`.
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.core.reconnect.min_delay_ms = millis(min);
        self.core.reconnect.max_delay_ms = millis(max);
        self
    }

    /// Turns automatic reconnection on (the default) or off.
    pub fn reconnect(mut self, enabled: bool) -> Self {
        self.core.reconnect.enabled = enabled;
        self
    }

    /// Gives up after this many failed reconnect attempts in a row
    /// (default: never).
    pub fn max_reconnect_attempts(mut self, attempts: Option<u32>) -> Self {
        self.core.reconnect.max_attempts = attempts;
        self
    }

    /// Sends a `PING` after this long without sending anything; `None`
    /// uses the interval the hub announces (the default),
    /// `Some(Duration::ZERO)` turns the heartbeat off.
    pub fn heartbeat(mut self, interval: Option<Duration>) -> Self {
        self.core.heartbeat.interval_ms = interval.map(millis);
        self
    }

    /// What a publish does while the client is not connected: wait in a
    /// queue of `capacity` publishes (the default, 1024) or fail at once.
    pub fn outbound_queue(mut self, capacity: usize, policy: QueuePolicy) -> Self {
        self.core.outbound_queue.capacity = capacity;
        self.core.outbound_queue.policy = policy;
        self
    }

    /// Asks for a fresh token this long before the current one expires.
    /// Default 30 s.
    pub fn token_refresh_margin(mut self, margin: Duration) -> Self {
        self.core.token_refresh_margin_ms = millis(margin);
        self
    }

    /// Fixes the seed of the reconnect jitter (reproducible runs).
    pub fn seed(mut self, seed: u64) -> Self {
        self.core.seed = seed;
        self
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
