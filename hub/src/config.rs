//! The hub's configuration: one typed struct with working defaults, readable
//! from TOML (every field optional) and overridden by flags / environment in
//! `main.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use promhub_core::Policy;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthConfig, Secret};

/// Everything the hub can be told. `HubConfig::default()` is a working
/// development setup: listen on 127.0.0.1:8090, data in `./data`, every
/// connection allowed everything (with a loud warning).
///
/// Deserialize only: the `[auth]` table may hold a secret, and nothing needs
/// the configuration written back out.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Address `main` binds; `run` takes an already bound listener.
    pub listen: SocketAddr,
    /// Folder of the embedded store.
    pub data: PathBuf,
    /// Where events and group state live: `embedded` (SQLite in `data`) or
    /// a MongoDB URI naming the database, `mongodb://HOST:PORT/DB`.
    pub store: String,
    /// HTTP path of the WebSocket endpoint.
    pub ws_path: String,
    /// Largest text frame the protocol accepts; larger ones get
    /// `ERR too_large` (up to [`HubConfig::hard_frame_limit`], beyond which
    /// the socket is closed because the frame is not even read).
    pub max_frame_bytes: usize,
    /// Interval the hub announces in `OK`; the hub pings a connection that
    /// was silent this long and drops one silent for three intervals.
    pub heartbeat_ms: u64,
    /// How long a publisher-chosen `opts.id` is remembered for
    /// de-duplication.
    pub dedup_window_ms: u64,
    /// Bound on frames queued for one connection's live (ephemeral)
    /// deliveries before it is closed with 4009.
    pub ephemeral_buffer_frames: usize,
    /// Bound on bytes queued for one connection before live deliveries
    /// overflow it (4009).
    pub ephemeral_buffer_bytes: usize,
    /// Defaults of durable consumer groups (a SUBSCRIBE may override them).
    pub groups: GroupDefaults,
    /// Token verification (TOML table `[auth]`). Nothing configured means
    /// development mode.
    pub auth: AuthConfig,
    /// Development mode policy, as space-separated scopes
    /// (`publish:** subscribe:**`). Only valid while no token verifier is
    /// configured; `None` means allow everything.
    pub dev_scopes: Option<String>,
    /// A folder of static files served at `/` (e.g. the built
    /// process.state page, `www/dist`). `None`: no HTTP files, only the
    /// WebSocket endpoint.
    pub www: Option<PathBuf>,
    /// Bad frames tolerated within `bad_frame_window_ms` before the
    /// connection is closed with 4008.
    pub max_bad_frames: u32,
    pub bad_frame_window_ms: u64,
    /// How long shutdown waits for connections to close before giving up on
    /// them.
    pub shutdown_grace_ms: u64,
    /// `EXPIRING` is sent this long before a token's `exp` (at once when a
    /// token arrives with less time left). The close comes at `exp` plus the
    /// authenticator's leeway (`auth.jwt_leeway_secs`).
    pub expiring_notice_ms: u64,
    /// Subscriptions one connection may hold at once.
    pub max_subscriptions_per_connection: usize,
    /// Publishes of one connection waiting for their commit; more wait for
    /// room (back-pressure on a client that does not wait for PUBACKs).
    pub max_pending_publishes: usize,
    /// Static bearer token of the ops API (`/ops`, `/metrics`, `/lag`, ...)
    /// besides JWTs with scope `admin`. `None`: only such JWTs, so a hub
    /// in development mode has no way into the ops API at all.
    pub admin_token: Option<Secret>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data: PathBuf::from("./data"),
            store: EMBEDDED_STORE.to_owned(),
            ws_path: "/ws".to_owned(),
            max_frame_bytes: promhub_core::frames::DEFAULT_MAX_FRAME_BYTES,
            heartbeat_ms: 15_000,
            dedup_window_ms: 2 * 60 * 1000,
            ephemeral_buffer_frames: 4096,
            ephemeral_buffer_bytes: 4 * 1024 * 1024,
            groups: GroupDefaults::default(),
            auth: AuthConfig::default(),
            dev_scopes: None,
            www: None,
            max_bad_frames: 10,
            bad_frame_window_ms: 60_000,
            shutdown_grace_ms: 5_000,
            expiring_notice_ms: 30_000,
            max_subscriptions_per_connection: 1024,
            max_pending_publishes: 4096,
            admin_token: None,
        }
    }
}

impl HubConfig {
    /// The largest frame the WebSocket layer reads at all. Frames between
    /// `max_frame_bytes` and this get `ERR too_large` and the connection
    /// lives on; larger ones are refused by the WebSocket codec, which
    /// closes the connection (reading them just to refuse them would let a
    /// client make the hub buffer arbitrary amounts).
    pub fn hard_frame_limit(&self) -> usize {
        self.max_frame_bytes
            .saturating_mul(2)
            .saturating_add(64 * 1024)
    }

    /// The development-mode policy: `dev_scopes` parsed, or allow-all.
    pub fn dev_policy(&self) -> Result<Policy, promhub_core::AclError> {
        match &self.dev_scopes {
            Some(scopes) => Policy::from_scope_str(scopes),
            None => Ok(Policy::allow_all()),
        }
    }

    /// Which store `store` names.
    pub fn store_location(&self) -> Result<StoreLocation, String> {
        let store = self.store.trim();
        if store == EMBEDDED_STORE {
            Ok(StoreLocation::Embedded)
        } else if store.starts_with("mongodb://") || store.starts_with("mongodb+srv://") {
            Ok(StoreLocation::Mongo(store.to_owned()))
        } else {
            Err(format!(
                "store must be \"{EMBEDDED_STORE}\" or a mongodb:// URI, got {:?}",
                self.store
            ))
        }
    }

    /// Checks values that would make the hub misbehave.
    pub fn validate(&self) -> Result<(), String> {
        self.store_location()?;
        if !self.ws_path.starts_with('/') {
            return Err(format!("ws_path {:?} must start with '/'", self.ws_path));
        }
        if self.max_frame_bytes < 1024 {
            return Err("max_frame_bytes must be at least 1024".to_owned());
        }
        if self.heartbeat_ms < 100 {
            return Err("heartbeat_ms must be at least 100".to_owned());
        }
        if self.ephemeral_buffer_frames == 0 || self.ephemeral_buffer_bytes == 0 {
            return Err("ephemeral buffer limits must be positive".to_owned());
        }
        if self.max_subscriptions_per_connection == 0 || self.max_pending_publishes == 0 {
            return Err("per-connection limits must be positive".to_owned());
        }
        if self.max_bad_frames == 0 {
            return Err("max_bad_frames must be positive".to_owned());
        }
        if let Some(dir) = &self.www
            && !dir.is_dir()
        {
            return Err(format!("www {} is not a directory", dir.display()));
        }
        self.groups.validate()?;
        if let Some(token) = &self.admin_token
            && token.expose().trim().chars().count() < MIN_ADMIN_TOKEN_CHARS
        {
            return Err(format!(
                "admin_token (--admin-token) must be at least {MIN_ADMIN_TOKEN_CHARS} characters"
            ));
        }
        if self.auth.is_dev_mode() {
            self.dev_policy()
                .map_err(|e| format!("dev_scopes is invalid: {e}"))?;
        } else {
            if self.dev_scopes.is_some() {
                // Refused rather than ignored: someone who set both expects
                // one of them to apply, and silently picking one would
                // either drop the token checks or the intended policy.
                return Err(
                    "dev_scopes (--dev-scopes) only applies in development mode; \
                     remove it, or remove the JWT settings (jwt_secret, jwks_url, jwks_file)"
                        .to_owned(),
                );
            }
            self.auth.validate().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Shortest static admin token accepted (a guessable one would open the ops
/// API).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// `store` value selecting the embedded SQLite store in `data`.
pub const EMBEDDED_STORE: &str = "embedded";

/// The store a [`HubConfig`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// SQLite in the data dir.
    Embedded,
    /// MongoDB at this URI (`mongodb://HOST:PORT/DB`).
    Mongo(String),
}

/// Defaults of durable consumer groups (semantics.md §4).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupDefaults {
    pub ack_timeout_ms: u64,
    pub max_deliver: u32,
    pub max_inflight: u32,
    /// Redelivery delay after a NACK without `delay_ms`:
    /// `nack_backoff_base_ms * 2^(attempt-1)`, capped at `nack_backoff_max_ms`.
    pub nack_backoff_base_ms: u64,
    pub nack_backoff_max_ms: u64,
    /// Most events one group holds in memory past its cursor (head-of-line
    /// bound: a stuck first event stops delivery once this many later events
    /// are done or pending).
    pub window: usize,
    /// How often cursor moves are made durable. ACKs have no answer, so the
    /// delay is invisible to clients (PING forces a flush when a client
    /// needs a sync point); each flush costs a commit, so not every ms.
    pub progress_flush_ms: u64,
}

impl Default for GroupDefaults {
    fn default() -> Self {
        GroupDefaults {
            ack_timeout_ms: 30_000,
            max_deliver: 5,
            max_inflight: 100,
            nack_backoff_base_ms: 200,
            nack_backoff_max_ms: 60_000,
            window: 10_000,
            progress_flush_ms: 20,
        }
    }
}

/// Upper bounds on what a SUBSCRIBE may ask for.
pub const MAX_INFLIGHT_LIMIT: u32 = 10_000;
pub const MAX_ACK_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
pub const MAX_DELIVER_LIMIT: u32 = 1_000;

impl GroupDefaults {
    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ACK_TIMEOUT_MS).contains(&self.ack_timeout_ms) {
            return Err(format!(
                "groups.ack_timeout_ms must be within 1..={MAX_ACK_TIMEOUT_MS}"
            ));
        }
        if !(1..=MAX_DELIVER_LIMIT).contains(&self.max_deliver) {
            return Err(format!(
                "groups.max_deliver must be within 1..={MAX_DELIVER_LIMIT}"
            ));
        }
        if !(1..=MAX_INFLIGHT_LIMIT).contains(&self.max_inflight) {
            return Err(format!(
                "groups.max_inflight must be within 1..={MAX_INFLIGHT_LIMIT}"
            ));
        }
        if self.window < self.max_inflight as usize {
            return Err("groups.window must be at least groups.max_inflight".to_owned());
        }
        if self.progress_flush_ms == 0 {
            return Err("groups.progress_flush_ms must be positive".to_owned());
        }
        Ok(())
    }

    /// Redelivery delay after the `attempt`-th delivery was NACKed without
    /// an explicit delay.
    pub fn nack_backoff_ms(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(32);
        self.nack_backoff_base_ms
            .saturating_mul(1u64 << shift)
            .min(self.nack_backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_parse_from_empty_toml() {
        HubConfig::default().validate().unwrap();
        let parsed: HubConfig = toml::from_str("").unwrap();
        assert_eq!(parsed.ws_path, "/ws");
        assert_eq!(parsed.groups.max_deliver, 5);
    }

    #[test]
    fn toml_overrides_nested_fields_and_refuses_unknown_ones() {
        let parsed: HubConfig =
            toml::from_str("heartbeat_ms = 500\n[groups]\nmax_inflight = 7\n").unwrap();
        assert_eq!(parsed.heartbeat_ms, 500);
        assert_eq!(parsed.groups.max_inflight, 7);
        assert_eq!(parsed.groups.ack_timeout_ms, 30_000);
        assert!(toml::from_str::<HubConfig>("heartbeat = 1").is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let groups = GroupDefaults::default();
        assert_eq!(groups.nack_backoff_ms(1), 200);
        assert_eq!(groups.nack_backoff_ms(2), 400);
        assert_eq!(groups.nack_backoff_ms(100), 60_000);
    }

    #[test]
    fn auth_is_its_own_table_and_dev_scopes_need_dev_mode() {
        let parsed: HubConfig = toml::from_str(
            "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\njwt_leeway_secs = 2\n",
        )
        .unwrap();
        assert!(!parsed.auth.is_dev_mode());
        assert_eq!(parsed.auth.jwt_leeway_secs, 2);
        parsed.validate().unwrap();
        // Auth settings belong in [auth], not at the top level.
        assert!(toml::from_str::<HubConfig>("jwt_secret = \"x\"").is_err());
        assert!(toml::from_str::<HubConfig>("[auth]\njwt_secrett = \"x\"").is_err());

        let both = HubConfig {
            dev_scopes: Some("publish:**".to_owned()),
            ..parsed.clone()
        };
        let err = both.validate().unwrap_err();
        assert!(err.contains("development mode"), "{err}");

        let mut short = parsed;
        short.auth.jwt_secret = Some(Secret::new("short"));
        let err = short.validate().unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        assert!(!err.contains("short"), "{err}");
    }

    #[test]
    fn store_is_embedded_or_a_mongodb_uri() {
        let with_store = |store: &str| HubConfig {
            store: store.to_owned(),
            ..HubConfig::default()
        };
        assert_eq!(
            HubConfig::default().store_location(),
            Ok(StoreLocation::Embedded)
        );
        assert_eq!(
            with_store("mongodb://127.0.0.1:27017/hub").store_location(),
            Ok(StoreLocation::Mongo("mongodb://127.0.0.1:27017/hub".into()))
        );
        let parsed: HubConfig = toml::from_str("store = \"mongodb://db:27017/x\"").unwrap();
        assert!(matches!(
            parsed.store_location(),
            Ok(StoreLocation::Mongo(_))
        ));
        for bad in ["", "sqlite", "postgres://x/y", "mongodb:/x"] {
            let err = with_store(bad).validate().unwrap_err();
            assert!(err.contains("mongodb://"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_dev_scopes_are_refused() {
        let config = HubConfig {
            dev_scopes: Some("publish".to_owned()),
            ..HubConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
