//! `promhub`: the hub binary.
//!
//! `promhub serve [--listen ADDR] [--data DIR] [--store embedded|mongodb://HOST:PORT/DB] [--sync full] [--wal-limit-bytes N]
//! [--config FILE] [--jwt-secret S | --jwks-url URL | --jwks-file PATH] [--dev-scopes S] [--admin-token T]
//! [--publish-rate N [--publish-burst B]] [--topic-publish-rate N [--topic-publish-burst B]]`;
//! every flag can also come from `PROMHUB_*` environment variables, and a
//! TOML file gives the rest (flags and environment win over the file). The
//! store is opened (and the TLS certificate loaded) first; then the first
//! line on stdout is `listening on ws://ADDR/PATH` (`wss://` with
//! `--tls-cert`/`--tls-key`), for scripts (a store or certificate that
//! cannot be loaded exits non-zero with nothing on stdout). SIGHUP re-reads
//! the TLS certificate and key.
//! `--admin-token` opens the ops API (`/ops`, `/metrics`, `/lag`, ...) to
//! that bearer token besides JWTs with scope `admin`; without a JWT
//! verifier it is the only way in.
//!
//! `promhub token --secret S --scopes "publish:a.* subscribe:b.**"` prints a
//! development HS256 token (only the token) for a hub run with the same
//! `--jwt-secret`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use promhub_hub::auth::{AuthArgs, TokenArgs, run_token_command};
use promhub_hub::{HubConfig, SyncPolicy};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "promhub",
    version,
    about = "promhub event hub",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// `serve` when omitted.
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub.
    Serve(Box<ServeArgs>),
    /// Print a development token (HS256) for a hub run with the same
    /// --jwt-secret; only the token goes to stdout.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8090]
    #[arg(long, env = "PROMHUB_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory of the embedded store [default: ./data]
    #[arg(long, env = "PROMHUB_DATA")]
    data: Option<PathBuf>,
    /// Store: "embedded" (SQLite in --data) or mongodb://HOST:PORT/DB
    /// [default: embedded]
    #[arg(long, env = "PROMHUB_STORE")]
    store: Option<String>,
    /// fsync policy of the embedded store: full (every commit synced before
    /// its PUBACK; `pipelined` is an old name for it) or normal (synced
    /// before checkpoints: a PUBACK survives a crash of the hub, not of the
    /// OS) [default: full]
    #[arg(long, env = "PROMHUB_SYNC", value_enum)]
    sync: Option<SyncPolicy>,
    /// The embedded store's WAL is truncated once it grows past this many
    /// bytes; a full disk recovers once about this much is free
    /// [default: 67108864]
    #[arg(long, env = "PROMHUB_WAL_LIMIT_BYTES")]
    wal_limit_bytes: Option<u64>,
    /// Threads of the async runtime [default: one per CPU, less one with
    /// the embedded store (its commit thread)]
    #[arg(long, env = "PROMHUB_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// TOML configuration file (any field of the hub configuration)
    #[arg(long, env = "PROMHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Development-mode policy as space-separated scopes, e.g.
    /// "publish:** subscribe:**" [default: allow all]. Refused together with
    /// a JWT setting.
    #[arg(long, env = "PROMHUB_DEV_SCOPES")]
    dev_scopes: Option<String>,
    /// HTTP path of the WebSocket endpoint [default: /ws]
    #[arg(long, env = "PROMHUB_WS_PATH")]
    ws_path: Option<String>,
    /// Largest accepted frame in bytes [default: 1048576]
    #[arg(long, env = "PROMHUB_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Heartbeat interval announced to clients, in ms [default: 15000]
    #[arg(long, env = "PROMHUB_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// De-duplication window for `opts.id`, in ms [default: 120000]
    #[arg(long, env = "PROMHUB_DEDUP_WINDOW_MS")]
    dedup_window_ms: Option<u64>,
    /// On a MongoDB store: this hub's registration lease in the `hubs`
    /// collection, in ms (renewed every third of it) [default: 10000]
    #[arg(long, env = "PROMHUB_CLUSTER_LEASE_MS")]
    cluster_lease_ms: Option<u64>,
    /// On a MongoDB store: how often the log follower looks for other
    /// hubs' commits (without change streams) and groups check the
    /// deliveries other hubs hold, in ms [default: 50]
    #[arg(long, env = "PROMHUB_CLUSTER_POLL_MS")]
    cluster_poll_ms: Option<u64>,
    /// How long before a token's exp the hub sends EXPIRING, in ms
    /// [default: 30000]
    #[arg(long, env = "PROMHUB_EXPIRING_NOTICE_MS")]
    expiring_notice_ms: Option<u64>,
    /// Serve the static files of this folder at `/` (e.g. www/dist, the
    /// process.state page) [default: none]
    #[arg(long, env = "PROMHUB_WWW")]
    www: Option<PathBuf>,
    /// Drain this MongoDB outbox collection into the hub's log,
    /// mongodb://HOST[:PORT]/DB/COLLECTION (repeatable; adds to the
    /// config file's [[outbox]] tables)
    #[arg(long = "drain-outbox", value_name = "URI")]
    drain_outbox: Vec<String>,
    /// PUBLISHes per second per connection (token bucket); a token's `rate`
    /// claim overrides it [default: unlimited]
    #[arg(long, env = "PROMHUB_PUBLISH_RATE")]
    publish_rate: Option<f64>,
    /// Burst of the per-connection quota [default: one second's worth]
    #[arg(long, env = "PROMHUB_PUBLISH_BURST", requires = "publish_rate")]
    publish_burst: Option<u32>,
    /// PUBLISHes per second per topic, all connections together
    /// [default: unlimited]
    #[arg(long, env = "PROMHUB_TOPIC_PUBLISH_RATE")]
    topic_publish_rate: Option<f64>,
    /// Burst of the per-topic quota [default: one second's worth]
    #[arg(
        long,
        env = "PROMHUB_TOPIC_PUBLISH_BURST",
        requires = "topic_publish_rate"
    )]
    topic_publish_burst: Option<u32>,
    /// Remove events older than this many seconds (by their ts), every
    /// topic; the config file's [retention] table has per-topic rules
    /// [default: keep everything]
    #[arg(long, env = "PROMHUB_RETENTION_MAX_AGE_SECS")]
    retention_max_age_secs: Option<u64>,
    /// Keep at most this many of each topic's newest events
    /// [default: keep everything]
    #[arg(long, env = "PROMHUB_RETENTION_MAX_EVENTS")]
    retention_max_events: Option<u64>,
    /// Open connections at most; past it new ones get HTTP 503
    /// [default: derived from the file-descriptor limit]
    #[arg(long, env = "PROMHUB_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open connections per client IP address at most [default: no cap]
    #[arg(long, env = "PROMHUB_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// A socket must complete its HTTP request (the WebSocket upgrade)
    /// within this many ms [default: 10000]
    #[arg(long, env = "PROMHUB_UPGRADE_TIMEOUT_MS")]
    upgrade_timeout_ms: Option<u64>,
    /// A WebSocket must send AUTH within this many ms [default: 10000]
    #[arg(long, env = "PROMHUB_AUTH_TIMEOUT_MS")]
    auth_timeout_ms: Option<u64>,
    /// Durable groups the hub keeps at most [default: 100000]
    #[arg(long, env = "PROMHUB_MAX_GROUPS")]
    max_groups: Option<usize>,
    /// Bytes of event data all groups together hold in memory (read-ahead
    /// and unacknowledged deliveries) [default: 33554432]
    #[arg(long, env = "PROMHUB_GROUP_BUFFER_BYTES")]
    group_buffer_bytes: Option<usize>,
    /// Browser origins allowed to open a WebSocket, comma-separated
    /// (https://app.example,https://ops.example) [default: any]
    #[arg(long, env = "PROMHUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// PEM certificate chain: serve TLS (wss://) with --tls-key; both are
    /// re-read on SIGHUP [default: plain TCP]
    #[arg(long, env = "PROMHUB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "PROMHUB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Static admin token for the ops API (/ops, /metrics, /lag, ...; at
    /// least 16 characters). Without it only JWTs with scope `admin` are
    /// admitted, so in development mode the ops API is closed [default: none]
    #[arg(long, env = "PROMHUB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Token verification; none of these set means development mode.
    #[command(flatten)]
    auth: AuthArgs,
}

impl ServeArgs {
    /// File (if any) under flags/environment.
    fn into_config(self) -> anyhow::Result<HubConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<HubConfig>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => HubConfig::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(data) = self.data {
            config.data = data;
        }
        if let Some(store) = self.store {
            config.store = store;
        }
        if let Some(sync) = self.sync {
            config.sync = sync;
        }
        if let Some(bytes) = self.wal_limit_bytes {
            config.wal_limit_bytes = bytes;
        }
        if let Some(workers) = self.worker_threads {
            config.worker_threads = Some(workers);
        }
        if let Some(scopes) = self.dev_scopes {
            config.dev_scopes = Some(scopes);
        }
        if let Some(path) = self.ws_path {
            config.ws_path = path;
        }
        if let Some(bytes) = self.max_frame_bytes {
            config.max_frame_bytes = bytes;
        }
        if let Some(ms) = self.heartbeat_ms {
            config.heartbeat_ms = ms;
        }
        if let Some(ms) = self.dedup_window_ms {
            config.dedup_window_ms = ms;
        }
        if let Some(ms) = self.cluster_lease_ms {
            config.cluster_lease_ms = ms;
        }
        if let Some(ms) = self.cluster_poll_ms {
            config.cluster_poll_ms = ms;
        }
        if let Some(ms) = self.expiring_notice_ms {
            config.expiring_notice_ms = ms;
        }
        if let Some(token) = self.admin_token {
            config.admin_token = Some(promhub_hub::auth::Secret::new(token));
        }
        if let Some(dir) = self.www {
            config.www = Some(dir);
        }
        config.outbox.extend(
            self.drain_outbox
                .into_iter()
                .map(promhub_hub::config::OutboxDrainConfig::new),
        );
        if let Some(rate) = self.publish_rate {
            config.limits.publish_rate = Some(rate);
            config.limits.publish_burst = self.publish_burst;
        }
        if let Some(rate) = self.topic_publish_rate {
            config.limits.topic_publish_rate = Some(rate);
            config.limits.topic_publish_burst = self.topic_publish_burst;
        }
        if let Some(secs) = self.retention_max_age_secs {
            config.retention.max_age_secs = Some(secs);
        }
        if let Some(count) = self.retention_max_events {
            config.retention.max_events_per_topic = Some(count);
        }
        let limits = &mut config.limits;
        if self.max_connections.is_some() {
            limits.max_connections = self.max_connections;
        }
        if self.max_connections_per_ip.is_some() {
            limits.max_connections_per_ip = self.max_connections_per_ip;
        }
        if let Some(ms) = self.upgrade_timeout_ms {
            limits.upgrade_timeout_ms = ms;
        }
        if let Some(ms) = self.auth_timeout_ms {
            limits.auth_timeout_ms = ms;
        }
        if let Some(count) = self.max_groups {
            limits.max_groups = count;
        }
        if let Some(bytes) = self.group_buffer_bytes {
            limits.group_buffer_bytes = bytes;
        }
        if !self.allowed_origins.is_empty() {
            config.allowed_origins = self.allowed_origins;
        }
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert;
            config.tls_key = self.tls_key;
        }
        self.auth.apply(&mut config.auth);
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Token(args)) => return print_token(args),
        Some(Command::Serve(args)) => *args,
        None => cli.serve,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // stdout is for the `listening on` line; logs go to stderr.
        .with_writer(std::io::stderr)
        .init();
    serve(args.into_config()?)
}

/// `promhub token`: only the token on stdout, so `TOKEN=$(promhub token ...)`
/// works; errors go to stderr with a non-zero exit (anyhow from `main`).
fn print_token(args: TokenArgs) -> anyhow::Result<()> {
    // The error's own message already names its cause; one line is enough.
    let token = run_token_command(args).map_err(|e| anyhow::anyhow!("cannot mint a token: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{token}")?;
    stdout.flush()?;
    Ok(())
}

fn serve(config: HubConfig) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = config.runtime_workers(cpus);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("promhub")
        .build()
        .context("starting the tokio runtime")?;
    // A certificate that does not load fails the start before anything is
    // announced.
    promhub_hub::check_tls(&config).map_err(anyhow::Error::msg)?;
    let scheme = if config.tls_cert.is_some() {
        "wss"
    } else {
        "ws"
    };
    runtime.block_on(async move {
        // The store first: one that cannot be opened (a full disk, a data
        // dir in use, an unreachable MongoDB) fails the start before
        // anything is announced on stdout.
        let store = promhub_hub::open_store(&config)
            .await
            .context("cannot open the store")?;
        let listener = match listen(config.listen) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = store.close().await;
                return Err(e).with_context(|| format!("binding {}", config.listen));
            }
        };
        let addr = listener.local_addr()?;
        {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "listening on {scheme}://{addr}{}", config.ws_path)?;
            stdout.flush()?;
        }
        tracing::info!(%addr, data = %config.data.display(), workers, sync = ?config.sync, "hub started");
        let parts = promhub_hub::HubParts {
            store: Some(store),
            ..promhub_hub::HubParts::default()
        };
        promhub_hub::run_with(listener, config, parts, shutdown_signal()).await?;
        Ok(())
    })
}

/// Pending connections the kernel queues for the accept loop (capped by
/// `net.core.somaxconn`); tokio's default of 1024 overflows under a burst
/// of connects, and the overflow is dropped (the client retries later).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted hub binds again while old connections linger in
    // TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
