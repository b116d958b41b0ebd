//! The hub's configuration: one typed struct with working defaults, readable
//! from TOML (every field optional) and overridden by flags / environment in
//! `main.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use promhub_core::Policy;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthConfig, Secret};
use crate::limits::RateLimit;
use crate::retention::RetentionConfig;

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
    /// How the embedded store makes commits durable (ignored by MongoDB).
    pub sync: SyncPolicy,
    /// The embedded store's WAL file is truncated once it grows past this
    /// (ignored by MongoDB); recovering from a full disk needs about this
    /// much free space.
    pub wal_limit_bytes: u64,
    /// Threads of the async runtime (connections, the broker). `None`: one
    /// per CPU, less one with the embedded store, whose commit thread keeps
    /// a CPU busy under load (see [`HubConfig::runtime_workers`]).
    pub worker_threads: Option<usize>,
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
    /// On a MongoDB store: the lease of this hub's registration in the
    /// `hubs` collection (renewed every third of it); another hub counts it
    /// gone this long after its last renewal.
    pub cluster_lease_ms: u64,
    /// On a MongoDB store without change streams (FerretDB, a standalone
    /// server): how often the log follower looks for other hubs' commits.
    /// On every MongoDB store: how often a group asks what became of the
    /// deliveries other hubs hold (their members' ACKs, a dead hub's).
    pub cluster_poll_ms: u64,
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
    /// Publishes of one connection waiting for their commit; more wait for
    /// room (back-pressure on a client that does not wait for PUBACKs).
    pub max_pending_publishes: usize,
    /// MongoDB outbox collections the hub drains into its own log (TOML
    /// `[[outbox]]`, CLI `--drain-outbox`): applications in any language
    /// then only insert outbox documents in their transactions.
    pub outbox: Vec<OutboxDrainConfig>,
    /// Publish quotas (TOML table `[limits]`); off by default.
    pub limits: LimitsConfig,
    /// How long the log keeps events (TOML table `[retention]`, see
    /// [`crate::retention`]); the default keeps everything.
    pub retention: RetentionConfig,
    /// Browser origins allowed to open a WebSocket (`https://app.example`),
    /// compared with the upgrade's `Origin` header; others get HTTP 403.
    /// Empty: any origin (and requests without one, e.g. native clients,
    /// are always allowed).
    pub allowed_origins: Vec<String>,
    /// PEM certificate chain and private key: the hub then speaks TLS
    /// (`wss://`, `https://`) itself. Both or neither; re-read on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Static bearer token of the ops API (`/ops`, `/metrics`, `/lag`, ...)
    /// besides JWTs with scope `admin`. `None`: only such JWTs, so a hub
    /// in development mode has no way into the ops API at all.
    pub admin_token: Option<Secret>,
}

/// One outbox collection the hub drains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxDrainConfig {
    /// `mongodb://HOST[:PORT]/DB/COLLECTION[?OPTIONS]`.
    pub uri: String,
    #[serde(default = "OutboxDrainConfig::default_batch_size")]
    pub batch_size: usize,
    /// Publish attempts before a record is `dead`.
    #[serde(default = "OutboxDrainConfig::default_max_attempts")]
    pub max_attempts: u32,
    /// Sent records are deleted this long after being sent.
    #[serde(default = "OutboxDrainConfig::default_retention_secs")]
    pub retention_secs: u64,
    /// Topics this collection may publish to, as token scopes
    /// (`"publish:orders.**"`); a record outside them is dead at once.
    /// `None`: any topic (the operator configured the collection).
    #[serde(default)]
    pub publish_scopes: Option<String>,
    /// One hub at a time drains the collection: it holds the collection's
    /// drain lease (`promhub_outbox_leases` in the outbox's database) for
    /// this long, renewed every third of it; when the holder dies another
    /// hub takes over after at most this long (at once when it stops).
    #[serde(default = "OutboxDrainConfig::default_lease_secs")]
    pub lease_secs: u64,
}

/// Where an outbox collection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxLocation {
    /// The connection string with the database (without the collection).
    pub client_uri: String,
    pub database: String,
    pub collection: String,
}

impl OutboxDrainConfig {
    pub fn new(uri: impl Into<String>) -> Self {
        OutboxDrainConfig {
            uri: uri.into(),
            batch_size: Self::default_batch_size(),
            max_attempts: Self::default_max_attempts(),
            retention_secs: Self::default_retention_secs(),
            publish_scopes: None,
            lease_secs: Self::default_lease_secs(),
        }
    }

    /// The policy of `publish_scopes`, if set.
    pub fn publish_policy(&self) -> Result<Option<Policy>, String> {
        self.publish_scopes
            .as_deref()
            .map(|scopes| {
                Policy::from_scope_str(scopes)
                    .map_err(|e| format!("outbox {:?}: publish_scopes: {e}", self.uri))
            })
            .transpose()
    }

    fn default_batch_size() -> usize {
        100
    }

    fn default_max_attempts() -> u32 {
        10
    }

    fn default_retention_secs() -> u64 {
        24 * 3600
    }

    fn default_lease_secs() -> u64 {
        15
    }

    /// Splits `mongodb://HOST/DB/COLLECTION?OPTIONS` into the client URI
    /// (`mongodb://HOST/DB?OPTIONS`), the database and the collection.
    pub fn location(&self) -> Result<OutboxLocation, String> {
        let bad = |why: &str| {
            format!(
                "outbox {:?}: {why}; expected mongodb://HOST[:PORT]/DB/COLLECTION[?OPTIONS]",
                self.uri
            )
        };
        let (scheme, rest) = self
            .uri
            .split_once("://")
            .filter(|(scheme, _)| *scheme == "mongodb" || *scheme == "mongodb+srv")
            .ok_or_else(|| bad("not a mongodb:// URI"))?;
        let (address, query) = match rest.split_once('?') {
            Some((address, query)) => (address, Some(query)),
            None => (rest, None),
        };
        let mut parts = address.splitn(3, '/');
        let hosts = parts.next().filter(|h| !h.is_empty());
        let database = parts.next().filter(|d| !d.is_empty());
        let collection = parts.next().filter(|c| !c.is_empty() && !c.contains('/'));
        let (Some(hosts), Some(database), Some(collection)) = (hosts, database, collection) else {
            return Err(bad("it must name a host, a database and a collection"));
        };
        let mut client_uri = format!("{scheme}://{hosts}/{database}");
        if let Some(query) = query {
            client_uri.push('?');
            client_uri.push_str(query);
        }
        Ok(OutboxLocation {
            client_uri,
            database: database.to_owned(),
            collection: collection.to_owned(),
        })
    }
}

/// Smallest `wal_limit_bytes`: below it the WAL would be truncated almost
/// every checkpoint, stalling writers each time.
pub const MIN_WAL_LIMIT_BYTES: u64 = 1024 * 1024;

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data: PathBuf::from("./data"),
            store: EMBEDDED_STORE.to_owned(),
            sync: SyncPolicy::default(),
            wal_limit_bytes: crate::store::sqlite::DEFAULT_WAL_LIMIT_BYTES,
            worker_threads: None,
            ws_path: "/ws".to_owned(),
            max_frame_bytes: promhub_core::frames::DEFAULT_MAX_FRAME_BYTES,
            heartbeat_ms: 15_000,
            dedup_window_ms: 2 * 60 * 1000,
            cluster_lease_ms: 10_000,
            cluster_poll_ms: 50,
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
            max_pending_publishes: 4096,
            outbox: Vec::new(),
            limits: LimitsConfig::default(),
            retention: RetentionConfig::default(),
            allowed_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            admin_token: None,
        }
    }
}

impl HubConfig {
    /// The largest frame the WebSocket layer reads at all. Frames between
    /// `max_frame_bytes` and this get `ERR too_large` and the connection
    /// lives on; larger ones are refused by the WebSocket codec, and the
    /// connection is closed with 1009 (reading them just to refuse them
    /// would let a client make the hub buffer arbitrary amounts).
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

    /// Threads of the async runtime: `worker_threads`, else one per CPU
    /// (`cpus`), less one with the embedded store, at least one. The
    /// embedded store commits on its own thread; a worker more than the
    /// CPUs left to it only adds wake-ups between workers (issue 15: at a
    /// steady 5,000 events/s on 2 CPUs, 2 workers cost 10% more CPU per
    /// event than 1, see docs/sizing.md).
    pub fn runtime_workers(&self, cpus: usize) -> usize {
        if let Some(workers) = self.worker_threads {
            return workers;
        }
        let reserved = usize::from(matches!(self.store_location(), Ok(StoreLocation::Embedded)));
        cpus.saturating_sub(reserved).max(1)
    }

    /// Checks values that would make the hub misbehave.
    pub fn validate(&self) -> Result<(), String> {
        self.store_location()?;
        if self.worker_threads == Some(0) {
            return Err("worker_threads must be at least 1".to_owned());
        }
        for outbox in &self.outbox {
            outbox.location()?;
            outbox.publish_policy()?;
            if outbox.batch_size == 0 || outbox.max_attempts == 0 || outbox.lease_secs == 0 {
                return Err(format!(
                    "outbox {:?}: batch_size, max_attempts and lease_secs must be positive",
                    outbox.uri
                ));
            }
        }
        if self.cluster_lease_ms < 100 {
            return Err("cluster_lease_ms must be at least 100".to_owned());
        }
        if self.cluster_poll_ms == 0 {
            return Err("cluster_poll_ms must be positive".to_owned());
        }
        if !self.ws_path.starts_with('/') {
            return Err(format!("ws_path {:?} must start with '/'", self.ws_path));
        }
        if self.wal_limit_bytes < MIN_WAL_LIMIT_BYTES {
            return Err(format!(
                "wal_limit_bytes must be at least {MIN_WAL_LIMIT_BYTES} (1 MiB)"
            ));
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
        if self.max_pending_publishes == 0 {
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
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key (--tls-cert, --tls-key) go together".to_owned());
        }
        for origin in &self.allowed_origins {
            if origin.trim().is_empty() || origin.ends_with('/') {
                return Err(format!(
                    "allowed_origins: {origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
        }
        self.groups.validate()?;
        self.limits.validate()?;
        self.retention.validate()?;
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

/// Publish quotas (token buckets, see `limits.rs`). Every quota is off by
/// default: a hub that limits nobody unless told to. A token's `rate`
/// claim replaces the per-connection quota for its connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// PUBLISHes per second one connection may send; `None`: unlimited.
    pub publish_rate: Option<f64>,
    /// Saved-up publishes a connection may send at once [default: one
    /// second's worth of `publish_rate`].
    pub publish_burst: Option<u32>,
    /// PUBLISHes per second to one topic, all connections together;
    /// `None`: unlimited.
    pub topic_publish_rate: Option<f64>,
    /// Burst of the per-topic quota [default: one second's worth].
    pub topic_publish_burst: Option<u32>,
    /// Refusals (`rate_limited`) a connection may collect within
    /// `rate_limited_window_ms` before it is closed with 4029. Generous:
    /// a client that pipelines W publishes gets up to W refusals per
    /// `retry_after_ms` even when it honours them (the SDKs space their
    /// retries); one that ignores them at full speed passes 1000 within a
    /// fraction of a second.
    pub max_rate_limited: u32,
    pub rate_limited_window_ms: u64,
    /// Open connections (TCP, TLS or WebSocket: every accepted socket
    /// counts); past it a new one gets HTTP 503 and is closed. `None`:
    /// derived at start from the file-descriptor limit (which the hub
    /// raises to its hard limit), leaving room for the store and logs.
    pub max_connections: Option<usize>,
    /// Open connections from one IP address; `None`: no per-address cap.
    pub max_connections_per_ip: Option<usize>,
    /// A socket must complete its HTTP request (the WebSocket upgrade, or
    /// any request's headers) within this many ms, or it is closed.
    pub upgrade_timeout_ms: u64,
    /// A WebSocket must send AUTH within this many ms of the upgrade, or it
    /// is closed with 4001.
    pub auth_timeout_ms: u64,
    /// Subscriptions (live and group) one connection may hold at once;
    /// one more gets `ERR limit_exceeded`.
    pub max_subscriptions_per_connection: usize,
    /// Durable groups the hub keeps (stored); a SUBSCRIBE that would
    /// create one more gets `ERR limit_exceeded`.
    pub max_groups: usize,
    /// Group subscriptions one connection may hold at once.
    pub max_groups_per_connection: usize,
    /// Bytes of event data all groups together may hold in memory: events
    /// read ahead from the store and deliveries not yet acknowledged. Past
    /// it groups wait (they lag; nothing is dropped).
    pub group_buffer_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            publish_rate: None,
            publish_burst: None,
            topic_publish_rate: None,
            topic_publish_burst: None,
            max_rate_limited: 1000,
            rate_limited_window_ms: 10_000,
            max_connections: None,
            max_connections_per_ip: None,
            upgrade_timeout_ms: 10_000,
            auth_timeout_ms: 10_000,
            max_subscriptions_per_connection: 1024,
            max_groups: 100_000,
            max_groups_per_connection: 128,
            group_buffer_bytes: 32 * 1024 * 1024,
        }
    }
}

impl LimitsConfig {
    /// The per-connection quota, if any.
    pub fn publish_limit(&self) -> Option<RateLimit> {
        quota(self.publish_rate, self.publish_burst)
    }

    /// The per-topic quota, if any.
    pub fn topic_publish_limit(&self) -> Option<RateLimit> {
        quota(self.topic_publish_rate, self.topic_publish_burst)
    }

    fn validate(&self) -> Result<(), String> {
        if self.publish_rate.is_none() && self.publish_burst.is_some() {
            return Err("limits.publish_burst needs limits.publish_rate".to_owned());
        }
        if self.topic_publish_rate.is_none() && self.topic_publish_burst.is_some() {
            return Err("limits.topic_publish_burst needs limits.topic_publish_rate".to_owned());
        }
        if let Some(limit) = self.publish_limit() {
            limit.validate("limits.publish_rate / publish_burst")?;
        }
        if let Some(limit) = self.topic_publish_limit() {
            limit.validate("limits.topic_publish_rate / topic_publish_burst")?;
        }
        if self.max_rate_limited == 0 || self.rate_limited_window_ms == 0 {
            return Err(
                "limits.max_rate_limited and limits.rate_limited_window_ms must be positive"
                    .to_owned(),
            );
        }
        let positive = [
            ("max_connections", self.max_connections.unwrap_or(1)),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip.unwrap_or(1),
            ),
            ("upgrade_timeout_ms", to_usize(self.upgrade_timeout_ms)),
            ("auth_timeout_ms", to_usize(self.auth_timeout_ms)),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
            ),
            ("max_groups", self.max_groups),
            ("max_groups_per_connection", self.max_groups_per_connection),
            ("group_buffer_bytes", self.group_buffer_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("limits.{name} must be positive"));
        }
        Ok(())
    }
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn quota(rate: Option<f64>, burst: Option<u32>) -> Option<RateLimit> {
    rate.map(|per_sec| RateLimit {
        per_sec,
        burst: burst.unwrap_or_else(|| crate::limits::default_burst(per_sec)),
    })
}

/// The embedded store's fsync policy: when a commit (and its PUBACK) is
/// safe.
///
/// `full` (the default) syncs every commit: a PUBACK survives a crash of
/// the hub, of the OS and a power loss. `normal` syncs only when the WAL is
/// checkpointed, like JetStream's default `sync_interval` or Kafka's
/// `flush.messages`: a PUBACK survives a crash of the hub (the commit is in
/// the OS's page cache), but an OS crash or power loss may lose the
/// newest acknowledged events, and their seqs may then be given to other
/// events. It saves the fsync's CPU and latency per commit (docs/sizing.md).
///
/// `pipelined` (a separate sync thread that fsynced the WAL while the next
/// batch was applied) was slower than `full` in issue 15's measurements
/// because of its thread hand-offs; it is still accepted as a name and
/// means `full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// `synchronous=FULL`: SQLite syncs the WAL inside each commit, on the
    /// commit thread; commits arriving meanwhile form the next batch.
    #[default]
    #[serde(alias = "pipelined")]
    #[value(alias = "pipelined")]
    Full,
    /// `synchronous=NORMAL`: the WAL is synced before each checkpoint, not
    /// per commit; acknowledged events survive a crash of the hub, not of
    /// the OS.
    Normal,
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
    /// Bytes of unacknowledged group deliveries one connection may hold,
    /// all its group subscriptions together (the per-connection outbound
    /// bound for groups, next to `max_inflight` per subscription): past it
    /// its groups wait for ACKs, i.e. a slow consumer makes its groups lag
    /// and nothing is dropped. A subscription with nothing in flight always
    /// gets one delivery, however large, so none can stall.
    pub max_inflight_bytes: usize,
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
            max_inflight_bytes: 8 * 1024 * 1024,
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
        if self.max_inflight_bytes == 0 {
            return Err("groups.max_inflight_bytes must be positive".to_owned());
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
    fn outbox_uris_name_a_database_and_a_collection() {
        let parsed: HubConfig = toml::from_str(
            "[[outbox]]\nuri = \"mongodb://db:27017/shop/outbox?replicaSet=rs0\"\nbatch_size = 7\n",
        )
        .unwrap();
        assert_eq!(parsed.outbox[0].batch_size, 7);
        assert_eq!(parsed.outbox[0].max_attempts, 10);
        assert_eq!(parsed.outbox[0].lease_secs, 15);
        assert_eq!(
            parsed.outbox[0].location(),
            Ok(OutboxLocation {
                client_uri: "mongodb://db:27017/shop?replicaSet=rs0".into(),
                database: "shop".into(),
                collection: "outbox".into(),
            })
        );
        for bad in [
            "mongodb://db/shop",
            "mongodb://db//x",
            "http://db/a/b",
            "mongodb:///a/b",
        ] {
            let config = HubConfig {
                outbox: vec![OutboxDrainConfig::new(bad)],
                ..HubConfig::default()
            };
            let err = config.validate().unwrap_err();
            assert!(err.contains("DB/COLLECTION"), "{bad}: {err}");
        }
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
    fn limits_are_off_by_default_and_checked() {
        let config = HubConfig::default();
        assert_eq!(config.limits.publish_limit(), None);
        assert_eq!(config.limits.topic_publish_limit(), None);
        let parsed: HubConfig = toml::from_str(
            "[limits]\npublish_rate = 2.5\ntopic_publish_rate = 100\ntopic_publish_burst = 7\n",
        )
        .unwrap();
        parsed.validate().unwrap();
        assert_eq!(
            parsed.limits.publish_limit(),
            Some(RateLimit {
                per_sec: 2.5,
                burst: 3
            })
        );
        assert_eq!(parsed.limits.topic_publish_limit().unwrap().burst, 7);
        for bad in [
            "[limits]\npublish_rate = 0",
            "[limits]\npublish_rate = -1",
            "[limits]\npublish_burst = 5",
            "[limits]\ntopic_publish_rate = 1\ntopic_publish_burst = 0",
            "[limits]\nmax_rate_limited = 0",
        ] {
            let parsed: HubConfig = toml::from_str(bad).unwrap();
            assert!(parsed.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<HubConfig>("[limits]\npublish_per_sec = 1").is_err());
    }

    #[test]
    fn runtime_workers_leave_a_cpu_to_the_embedded_store_commit_thread() {
        let embedded = HubConfig::default();
        assert_eq!(embedded.runtime_workers(8), 7);
        assert_eq!(embedded.runtime_workers(2), 1);
        assert_eq!(embedded.runtime_workers(1), 1);
        let mongo = HubConfig {
            store: "mongodb://127.0.0.1:27017/promhub".to_owned(),
            ..HubConfig::default()
        };
        assert_eq!(mongo.runtime_workers(2), 2);
        let set = HubConfig {
            worker_threads: Some(3),
            ..HubConfig::default()
        };
        assert_eq!(set.runtime_workers(2), 3);
        let zero = HubConfig {
            worker_threads: Some(0),
            ..HubConfig::default()
        };
        assert!(zero.validate().unwrap_err().contains("worker_threads"));
    }

    #[test]
    fn sync_policy_is_full_and_pipelined_is_its_old_name() {
        assert_eq!(HubConfig::default().sync, SyncPolicy::Full);
        let full: HubConfig = toml::from_str("sync = \"full\"").unwrap();
        assert_eq!(full.sync, SyncPolicy::Full);
        let old: HubConfig = toml::from_str("sync = \"pipelined\"").unwrap();
        assert_eq!(old.sync, SyncPolicy::Full);
        let normal: HubConfig = toml::from_str("sync = \"normal\"").unwrap();
        assert_eq!(normal.sync, SyncPolicy::Normal);
        assert!(toml::from_str::<HubConfig>("sync = \"never\"").is_err());
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
