//! Wiring: store → writer → broker → gateway, and an orderly shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower_http::services::ServeDir;

use crate::auth::Verifier;
use crate::authn::{Authenticator, DevAuthenticator};
use crate::broker::{self, BrokerSetup, HoldLimits};
use crate::config::{HubConfig, StoreLocation, SyncPolicy};
use crate::connection::{self, Shared};
use crate::error::HubError;
use crate::limits::TopicBuckets;
use crate::metrics::Metrics;
use crate::ops::{self, OpsState};
use crate::outbox_drain;
use crate::store::Store;
use crate::store::mongo::{MongoOptions, MongoStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::writer::{StoreWriter, WriterOptions};

/// WebSocket read buffer per connection: small, because idle connections
/// are the common case (a frame larger than this is read in several steps).
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames are written to the socket once this much is buffered, or on
/// flush (once per send queue drain).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Optional parts of a hub; `None` means the default (the store named by
/// `config.store`; the JWT verifier from `config.auth`, or development mode
/// when nothing is configured there).
#[derive(Debug, Default)]
pub struct HubParts {
    pub store: Option<Arc<dyn Store>>,
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// The hub's metrics (e.g. with outbox sources registered, see
    /// [`Metrics::register_outbox_source`]); `None`: a fresh set.
    pub metrics: Option<Arc<Metrics>>,
}

/// Runs a hub on `listener` with the default parts until `shutdown`
/// resolves, then closes every connection with 1001 and flushes the store.
pub async fn run(
    listener: TcpListener,
    config: HubConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    run_with(listener, config, HubParts::default(), shutdown).await
}

/// [`run`] with a chosen store and/or authenticator.
pub async fn run_with(
    listener: TcpListener,
    config: HubConfig,
    parts: HubParts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    config.validate().map_err(HubError::Config)?;
    if ops::PATHS.contains(&config.ws_path.as_str()) {
        return Err(HubError::Config(format!(
            "ws_path {:?} is taken by the ops API",
            config.ws_path
        )));
    }
    if crate::replay::PATHS.contains(&config.ws_path.as_str()) {
        return Err(HubError::Config(format!(
            "ws_path {:?} is taken by the replay API",
            config.ws_path
        )));
    }
    let config = Arc::new(config);
    let metrics = parts.metrics.unwrap_or_default();
    let authenticator = match parts.authenticator {
        Some(authenticator) => authenticator,
        None => configured_authenticator(&config).await?,
    };
    if authenticator.is_development() {
        tracing::warn!(
            scopes = config
                .dev_scopes
                .as_deref()
                .unwrap_or("publish:** subscribe:** (allow all)"),
            "DEVELOPMENT MODE: no token verifier is configured, every connection gets \
             the development policy whatever token it sends. Do not expose this hub."
        );
    }
    let store = match parts.store {
        Some(store) => store,
        None => open_store(&config).await?,
    };
    let head = store.last_seq().await?;
    let stored_groups = store.group_count().await?;
    let (writer, committed) = StoreWriter::with_options(
        Arc::clone(&store),
        WriterOptions {
            metrics: Some(Arc::clone(&metrics)),
            ..WriterOptions::default()
        },
    );
    let (broker, broker_task) = broker::spawn(BrokerSetup {
        store: Arc::clone(&store),
        writer: writer.clone(),
        committed,
        defaults: Arc::new(config.groups.clone()),
        hold_limits: HoldLimits {
            frames: config.ephemeral_buffer_frames,
            bytes: config.ephemeral_buffer_bytes,
        },
        head,
        metrics: Arc::clone(&metrics),
        group_buffer_bytes: config.limits.group_buffer_bytes,
        max_groups: config.limits.max_groups,
        stored_groups,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let drainers =
        outbox_drain::spawn_drainers(&config.outbox, &writer, &metrics, &shutdown_rx).await?;
    let retention = crate::retention::spawn(
        Arc::clone(&store),
        &config.retention,
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    )
    .map_err(HubError::Config)?;
    let tracker = Arc::new(ConnectionTracker::default());
    let replay = crate::replay::router(crate::replay::ReplayState {
        store: Arc::clone(&store),
        writer: writer.clone(),
        authenticator: Arc::clone(&authenticator),
    });
    let shared = Arc::new(Shared {
        config: Arc::clone(&config),
        authenticator,
        writer,
        broker: broker.clone(),
        shutdown: shutdown_rx.clone(),
        next_conn_id: AtomicU64::new(1),
        topic_quota: config.limits.topic_publish_limit().map(TopicBuckets::new),
        metrics: Arc::clone(&metrics),
    });
    let ops_state = OpsState {
        store: Arc::clone(&store),
        broker: broker.clone(),
        metrics,
        authenticator: Arc::clone(&shared.authenticator),
        admin_token: config.admin_token.clone(),
        shutdown: shutdown_rx.clone(),
    };
    if config.admin_token.is_none() && shared.authenticator.is_development() {
        tracing::warn!(
            "the ops API (/ops, /metrics, /lag, ...) is closed: development mode has no \
             JWT verifier; set --admin-token to use it"
        );
    }
    let mut app = Router::new()
        .route(&config.ws_path, get(upgrade))
        .with_state(GatewayState {
            shared,
            tracker: Arc::clone(&tracker),
        })
        .merge(replay)
        .merge(ops::router(ops_state));
    if let Some(dir) = &config.www {
        // Everything that is not the WebSocket path: files of `www`
        // (`/` is its index.html).
        tracing::info!(www = %dir.display(), "serving static files at /");
        app = app.fallback_service(ServeDir::new(dir));
    }
    let listener = listener.tap_io(|tcp| {
        // Frames are small and latency matters; batching happens in the
        // send queue, not in Nagle's algorithm.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let stop_accepting = {
        let shutdown_tx = shutdown_tx.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing connections");
            let _ = shutdown_tx.send(true);
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_accepting)
        .await?;

    // Connections were told to close with 1001; give them a moment.
    let _ = shutdown_tx.send(true);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    if tokio::time::timeout(grace, tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.open.load(Ordering::Relaxed),
            "connections still open after the shutdown grace period"
        );
    }
    // Outbox drainers finish the batch they are on (what they published is
    // committed before they mark it sent).
    for drainer in drainers {
        if tokio::time::timeout(grace, drainer).await.is_err() {
            tracing::warn!("an outbox drainer did not stop in time");
        }
    }
    if let Some(task) = retention
        && tokio::time::timeout(grace, task).await.is_err()
    {
        tracing::warn!("the retention pass did not stop in time");
    }
    // Cursor moves and dead letters still in memory become durable.
    if tokio::time::timeout(grace, broker.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the broker did not finish its last flush in time");
    }
    drop(broker);
    broker_task.abort();
    store.close().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Development mode when `config.auth` configures nothing, else the JWT
/// verifier. A JWKS URL is fetched once here so a wrong URL shows up in the
/// log at start; a failure is not fatal (the identity provider may be down
/// for a moment, and the verifier retries on use).
async fn configured_authenticator(config: &HubConfig) -> Result<Arc<dyn Authenticator>, HubError> {
    if config.auth.is_dev_mode() {
        let policy = config
            .dev_policy()
            .map_err(|e| HubError::Config(e.to_string()))?;
        return Ok(Arc::new(DevAuthenticator::new(policy)));
    }
    let auth = &config.auth;
    let verifier = Verifier::from_config(auth).map_err(|e| HubError::Config(e.to_string()))?;
    tracing::info!(
        hs_secret = auth.jwt_secret.is_some(),
        jwks_url = auth.jwks_url.is_some(),
        jwks_file = ?auth.jwks_file,
        audiences = ?auth.jwt_aud,
        issuer = ?auth.jwt_iss,
        leeway_secs = auth.jwt_leeway_secs,
        default_scopes = auth.default_scopes.as_deref().unwrap_or("(none: deny all)"),
        "JWT authentication enabled"
    );
    if auth.jwks_url.is_some() {
        match verifier.load_keys(crate::clock::now_ms()).await {
            Ok(Some(count)) => tracing::info!(keys = count, "JWKS fetched at start"),
            Ok(None) => {}
            Err(error) => tracing::warn!(
                %error,
                "JWKS could not be fetched at start; tokens signed with JWKS keys are \
                 refused (`internal`) until a fetch succeeds"
            ),
        }
    }
    Ok(Arc::new(verifier))
}

async fn open_store(config: &HubConfig) -> Result<Arc<dyn Store>, HubError> {
    match config.store_location().map_err(HubError::Config)? {
        StoreLocation::Embedded => open_sqlite(config).await,
        StoreLocation::Mongo(uri) => {
            let options = MongoOptions {
                dedup_window: Duration::from_millis(config.dedup_window_ms),
                ..MongoOptions::default()
            };
            let store = MongoStore::connect_with(&uri, options).await?;
            Ok(Arc::new(store))
        }
    }
}

async fn open_sqlite(config: &HubConfig) -> Result<Arc<dyn Store>, HubError> {
    let dir = config.data.clone();
    let options = SqliteOptions {
        dedup_window: Duration::from_millis(config.dedup_window_ms),
        pipelined_sync: config.sync == SyncPolicy::Pipelined,
        ..SqliteOptions::default()
    };
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir, options))
        .await
        .map_err(|e| HubError::Config(format!("opening the store panicked: {e}")))??;
    tracing::info!(path = %store.path().display(), "store opened");
    Ok(Arc::new(store))
}

#[derive(Debug, Clone)]
struct GatewayState {
    shared: Arc<Shared>,
    tracker: Arc<ConnectionTracker>,
}

async fn upgrade(State(state): State<GatewayState>, ws: WebSocketUpgrade) -> Response {
    if *state.shared.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "hub shutting down").into_response();
    }
    let config = &state.shared.config;
    let guard = state.tracker.enter();
    let shared = Arc::clone(&state.shared);
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(config.hard_frame_limit())
        .max_frame_size(config.hard_frame_limit())
        .on_upgrade(move |socket| async move {
            connection::serve(socket, shared).await;
            drop(guard);
        })
}

/// Counts open connections so shutdown can wait for them.
#[derive(Debug, Default)]
struct ConnectionTracker {
    open: AtomicUsize,
    idle: Notify,
}

struct TrackerGuard(Arc<ConnectionTracker>);

impl ConnectionTracker {
    fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(Arc::clone(self))
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
