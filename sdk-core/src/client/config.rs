//! Client settings. Every field has a default that matches protocol.md; the
//! machine sanitizes nonsensical values (see [`ClientConfig::sanitized`])
//! instead of panicking on them.

/// Everything [`ClientCore`](super::ClientCore) needs to know up front.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Sent in `AUTH.client`, e.g. `promhub-native/0.1.0`.
    pub client_name: String,
    /// The token for the first `AUTH`; [`ClientCore::set_token`](super::ClientCore::set_token)
    /// replaces it at any time.
    pub token: Option<String>,
    /// How long a request may stay unanswered: `PUBLISH`→`PUBACK`,
    /// `SUBSCRIBE`→`SUBACK`, `UNSUBSCRIBE`→`UNSUBACK`, `PING`→`PONG` and
    /// `AUTH`→`OK`. For a publish the clock starts when
    /// [`publish`](super::ClientCore::publish) is called, so time spent in the
    /// outbound queue counts.
    pub request_timeout_ms: u64,
    /// How long the driver may take to open the socket after
    /// [`Transmit::Connect`](super::Transmit::Connect).
    pub connect_timeout_ms: u64,
    pub heartbeat: HeartbeatConfig,
    pub reconnect: ReconnectConfig,
    pub outbound_queue: QueueConfig,
    /// Ask the application for a fresh token this long before it expires.
    pub token_refresh_margin_ms: u64,
    /// The driver has a token source (a function that yields tokens): the
    /// machine asks it with [`Transmit::FetchToken`](super::Transmit::FetchToken)
    /// before every connection attempt (unless a token arrived since the
    /// last one), whenever the token must be refreshed, and after the hub
    /// refused one; a failing source is asked again with the reconnect
    /// backoff. Without one, the application answers
    /// [`ClientEvent::TokenRefreshNeeded`](super::ClientEvent::TokenRefreshNeeded)
    /// with [`set_token`](super::ClientCore::set_token).
    pub token_source: bool,
    /// Seed of the reconnect and token-retry jitter (and of the order the
    /// hubs are tried in); fixed seeds make runs reproducible.
    pub seed: u64,
    /// How many hub URLs the driver holds (at least 1). With several, each
    /// connection attempt goes to [`ClientCore::endpoint`](super::ClientCore::endpoint):
    /// the hubs in a random order per client, the next one on every new
    /// attempt (after a failed attempt or a lost connection), with the
    /// same reconnect backoff.
    pub endpoints: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: concat!("promhub-core/", env!("CARGO_PKG_VERSION")).to_owned(),
            token: None,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            heartbeat: HeartbeatConfig::default(),
            reconnect: ReconnectConfig::default(),
            outbound_queue: QueueConfig::default(),
            token_refresh_margin_ms: 30_000,
            token_source: false,
            seed: 0x5eed,
            endpoints: 1,
        }
    }
}

impl ClientConfig {
    /// The defaults with this client name.
    pub fn new(client_name: impl Into<String>) -> Self {
        ClientConfig {
            client_name: client_name.into(),
            ..ClientConfig::default()
        }
    }

    /// A copy with every value the machine cannot work with replaced by the
    /// nearest one it can: zero timeouts become 1 ms (a zero deadline would
    /// fire before the request could be answered), a multiplier below 1 (or
    /// NaN) becomes 1, and a `max_delay_ms` below `min_delay_ms` is raised
    /// to it.
    pub fn sanitized(mut self) -> Self {
        self.request_timeout_ms = self.request_timeout_ms.max(1);
        self.connect_timeout_ms = self.connect_timeout_ms.max(1);
        self.endpoints = self.endpoints.max(1);
        self.heartbeat.pong_timeout_ms = self.heartbeat.pong_timeout_ms.max(1);
        let r = &mut self.reconnect;
        if r.multiplier.is_nan() || r.multiplier < 1.0 {
            r.multiplier = 1.0;
        }
        r.max_delay_ms = r.max_delay_ms.max(r.min_delay_ms);
        self
    }
}

/// Keep-alive of an authenticated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Send a `PING` after this long without sending anything. `None` (the
    /// default) uses the hub's `OK.heartbeat_ms`; `Some(0)` (or a hub value
    /// of 0) turns the heartbeat off.
    pub interval_ms: Option<u64>,
    /// After a heartbeat `PING`, the connection is declared dead when no
    /// frame at all arrives within this time.
    pub pong_timeout_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_ms: None,
            pong_timeout_ms: 10_000,
        }
    }
}

/// Automatic reconnection with exponential backoff and jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectConfig {
    pub enabled: bool,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    pub multiplier: f64,
    /// Give up (state `Closed`) after this many reconnect attempts without a
    /// successful `OK` in between. `None`: never give up.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            enabled: true,
            min_delay_ms: 250,
            max_delay_ms: 30_000,
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

impl ReconnectConfig {
    /// The range `[floor, cap]` the delay before reconnect attempt `attempt`
    /// (1-based) is drawn from, uniformly ("full jitter" with a floor):
    ///
    /// - `cap = min(max_delay_ms, min_delay_ms × multiplier^(attempt − 1))`
    /// - `floor = max(1, min_delay_ms / 2)`, never above `cap`
    ///
    /// The floor keeps a crowd of clients from hammering a hub that just
    /// restarted, and keeps the delay from ever being 0; the jitter spreads
    /// even the first attempt over `[min/2, min]`.
    pub fn delay_bounds(&self, attempt: u32) -> (u64, u64) {
        let min = self.min_delay_ms;
        let max = self.max_delay_ms.max(min);
        let multiplier = if self.multiplier.is_nan() || self.multiplier < 1.0 {
            1.0
        } else {
            self.multiplier
        };
        // Clamp the exponent: beyond a few hundred the product is infinite
        // anyway and `powi` takes an i32.
        let exponent = attempt.saturating_sub(1).min(1024) as i32;
        let scaled = min as f64 * multiplier.powi(exponent);
        let cap = if scaled.is_finite() && scaled < max as f64 {
            scaled as u64
        } else {
            max
        };
        let cap = cap.max(1);
        let floor = (min / 2).max(1).min(cap);
        (floor, cap)
    }
}

/// What happens to a publish while the client is not connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueuePolicy {
    /// Queue it (up to the capacity) and send it right after the next `OK`.
    #[default]
    Wait,
    /// Refuse it at once with [`ClientError::NotConnected`](super::ClientError::NotConnected).
    FailFast,
}

/// The outbound queue that holds publishes while the client is not connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most publishes held while not connected.
    pub capacity: usize,
    pub policy: QueuePolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 1024,
            policy: QueuePolicy::Wait,
        }
    }
}
