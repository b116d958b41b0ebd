//! Wiring: store → writer → broker → gateway, and an orderly shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::services::ServeDir;

use crate::auth::Verifier;
use crate::authn::{Authenticator, DevAuthenticator};
use crate::broker::{self, BrokerSetup, HoldLimits};
use crate::cluster;
use crate::config::{HubConfig, StoreLocation, SyncPolicy};
use crate::connection::Shared;
use crate::error::HubError;
use crate::follower;
use crate::gateway::{self, Gateway, caps, tls};
use crate::limits::TopicBuckets;
use crate::metrics::Metrics;
use crate::ops::{self, OpsState};
use crate::outbox_drain;
use crate::store::Store;
use crate::store::mongo::{MongoOptions, MongoStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::writer::{StoreWriter, WriterOptions};

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
    // Before the store opens: a wrong certificate path fails the start
    // at once.
    let tls = tls::acceptor(&config).map_err(HubError::Config)?;
    let caps = connection_caps(&config);
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
    // On a MongoDB store the broker is fed from the log up to the
    // visibility horizon: every hub's commits, in one seq order.
    let other_hubs = cluster::OtherHubs::default();
    let (committed, follower) = match store.cluster_database() {
        Some(db) => {
            let (feed, task) = follower::spawn(follower::FollowerSetup {
                store: Arc::clone(&store),
                own: committed,
                head,
                poll: Duration::from_millis(config.cluster_poll_ms),
                db,
                other_hubs: other_hubs.clone(),
            });
            (feed, Some(task))
        }
        None => (committed, None),
    };
    // This hub's name in the hub registry, the group delivery claims and
    // the outbox drain leases.
    let hub_id = cluster::new_hub_id();
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
        claims: store.group_claims(&hub_id),
        claim_check_every: Duration::from_millis(config.cluster_poll_ms),
        other_hubs: other_hubs.clone(),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let drainers =
        outbox_drain::spawn_drainers(&config.outbox, &writer, &metrics, &shutdown_rx, &hub_id)
            .await?;
    // On a MongoDB store: register in the `hubs` collection (the first
    // heartbeat before serving, so `/cluster` lists this hub at once).
    let registry = match store.cluster_database() {
        Some(db) => {
            let scheme = if tls.is_some() { "wss" } else { "ws" };
            let address = match listener.local_addr() {
                Ok(addr) => format!("{scheme}://{addr}{}", config.ws_path),
                Err(_) => String::new(),
            };
            let registry = Arc::new(cluster::Registry::new(
                &db,
                hub_id.clone(),
                address,
                Duration::from_millis(config.cluster_lease_ms),
                crate::clock::now_ms(),
            ));
            if let Err(error) = registry.heartbeat(crate::clock::now_ms(), None).await {
                tracing::warn!(%error, "cluster: cannot register this hub; retrying in the background");
            }
            tracing::info!(hub = %hub_id, "cluster: this hub registered");
            let source = cluster::SnapshotSource {
                metrics: Arc::clone(&metrics),
                broker: broker.clone(),
            };
            let task = cluster::spawn(
                Arc::clone(&registry),
                other_hubs,
                source,
                shutdown_rx.clone(),
            );
            Some((registry, task))
        }
        None => None,
    };
    let retention = crate::retention::spawn(
        Arc::clone(&store),
        &config.retention,
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    )
    .map_err(HubError::Config)?;
    // One per-topic quota for every publish path (WebSocket and import).
    let topic_quota = config
        .limits
        .topic_publish_limit()
        .map(|limit| Arc::new(TopicBuckets::new(limit)));
    let replay = crate::replay::router(crate::replay::ReplayState {
        store: Arc::clone(&store),
        writer: writer.clone(),
        authenticator: Arc::clone(&authenticator),
        import: Arc::new(crate::replay::ImportLimits::new(
            &config.limits,
            topic_quota.clone(),
            config.max_frame_bytes,
        )),
    });
    let shared = Arc::new(Shared {
        config: Arc::clone(&config),
        authenticator,
        writer,
        broker: broker.clone(),
        shutdown: shutdown_rx.clone(),
        next_conn_id: AtomicU64::new(1),
        topic_quota,
        metrics: Arc::clone(&metrics),
    });
    let ops_state = OpsState {
        store: Arc::clone(&store),
        broker: broker.clone(),
        metrics,
        authenticator: Arc::clone(&shared.authenticator),
        admin_token: config.admin_token.clone(),
        shutdown: shutdown_rx.clone(),
        hub_id: hub_id.clone(),
        registry: registry.as_ref().map(|(registry, _)| Arc::clone(registry)),
    };
    if config.admin_token.is_none() && shared.authenticator.is_development() {
        tracing::warn!(
            "the ops API (/ops, /metrics, /lag, ...) is closed: development mode has no \
             JWT verifier; set --admin-token to use it"
        );
    }
    let mut app = Router::new()
        .route(&config.ws_path, get(gateway::upgrade::upgrade))
        .with_state(shared)
        .merge(replay)
        .merge(ops::router(ops_state));
    if let Some(dir) = &config.www {
        // Everything that is not the WebSocket path: files of `www`
        // (`/` is its index.html).
        tracing::info!(www = %dir.display(), "serving static files at /");
        app = app.fallback_service(ServeDir::new(dir));
    }
    let tls = match tls {
        Some((acceptor, resolver)) => {
            tls::reload_on_sighup(resolver, shutdown_rx.clone()).map_err(HubError::Config)?;
            Some(acceptor)
        }
        None => None,
    };
    tokio::spawn({
        let shutdown_tx = shutdown_tx.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing connections");
            let _ = shutdown_tx.send(true);
        }
    });
    gateway::serve(Gateway {
        listener,
        app,
        caps: Arc::clone(&caps),
        tls,
        upgrade_timeout: Duration::from_millis(config.limits.upgrade_timeout_ms),
        shutdown: shutdown_rx.clone(),
    })
    .await;

    // WebSockets were told to close with 1001, HTTP connections to end
    // after their response; give them a moment.
    let _ = shutdown_tx.send(true);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    if tokio::time::timeout(grace, caps.wait_idle()).await.is_err() {
        tracing::warn!(
            open = caps.open(),
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
    // The registration goes (another hub logs this one leaving).
    if let Some((_, task)) = registry
        && tokio::time::timeout(grace, task).await.is_err()
    {
        tracing::warn!("cluster: the registration was not removed in time");
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
    if let Some(follower) = follower {
        follower.abort();
    }
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

/// Opens the store `config` names (what [`run`] does when
/// [`HubParts::store`] is `None`). The binary opens it before announcing
/// anything, so a store that cannot open fails the start cleanly.
pub async fn open_store(config: &HubConfig) -> Result<Arc<dyn Store>, HubError> {
    match config.store_location().map_err(HubError::Config)? {
        StoreLocation::Embedded => open_sqlite(config).await,
        StoreLocation::Mongo(uri) => {
            let options = MongoOptions {
                dedup_window: Duration::from_millis(config.dedup_window_ms),
                range_lease: Duration::from_millis(config.cluster_lease_ms),
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
        wal_limit_bytes: config.wal_limit_bytes,
        sync_each_commit: config.sync == SyncPolicy::Full,
        ..SqliteOptions::default()
    };
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir, options))
        .await
        .map_err(|e| HubError::Config(format!("opening the store panicked: {e}")))??;
    tracing::info!(path = %store.path().display(), "store opened");
    Ok(Arc::new(store))
}

/// The connection caps: `limits.max_connections`, or the default derived
/// from the file-descriptor limit (raised to the hard limit either way).
fn connection_caps(config: &HubConfig) -> Arc<caps::Caps> {
    let (derived, fd_limit) = caps::from_fd_limit();
    let limits = &config.limits;
    let max = match limits.max_connections {
        Some(max) => {
            if max > derived {
                tracing::warn!(
                    max_connections = max,
                    fd_limit,
                    fits = derived,
                    "limits.max_connections is more than the file-descriptor limit leaves \
                     room for; past it accepts fail (EMFILE) and wait"
                );
            }
            max
        }
        None => derived,
    };
    tracing::info!(
        max_connections = max,
        max_connections_per_ip = ?limits.max_connections_per_ip,
        fd_limit,
        "connection caps"
    );
    caps::Caps::new(max, limits.max_connections_per_ip)
}
