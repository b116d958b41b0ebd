//! The ops API (semantics.md §6): JSON endpoints, Prometheus metrics and
//! the `/ops` dashboard, on the gateway's port.
//!
//! Every endpoint but the dashboard's static page needs an admin
//! credential ([`auth::Admin`]): 401 without a valid one, 403 for a valid
//! token without the `admin` scope. `/latest-by-key` also applies the
//! caller's own subscribe ACL (known bug 9).

mod auth;
mod status;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use promhub_core::{Group, Pattern, Topic};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use self::auth::Admin;
use self::status::{GroupStatus, HubGroupPart, lag, status};
use crate::auth::Secret;
use crate::authn::Authenticator;
use crate::broker::{BrokerHandle, BufferView, GroupView, ReplayRefused};
use crate::cluster::{HubLease, HubSnapshot, Registry};
use crate::metrics::{self, GroupLag, Metrics};
use crate::store::{DeadLetter, GroupKey, GroupRecord, Store, StoreError};

/// Most dead letters one `/dead-letters` page returns.
const MAX_DEAD_LETTER_PAGE: usize = 1000;
/// Groups one `/groups` page returns by default, and at most (each costs a
/// few index lookups).
const DEFAULT_GROUPS_PAGE: usize = 100;
const MAX_GROUPS_PAGE: usize = 1000;
/// Groups whose lag one `/metrics` scrape computes at most (each costs a
/// few index lookups).
const MAX_GROUPS_PER_SCRAPE: usize = 1000;

const DASHBOARD: &str = include_str!("dashboard.html");

/// What the ops handlers share.
#[derive(Debug, Clone)]
pub(crate) struct OpsState {
    pub store: Arc<dyn Store>,
    pub broker: BrokerHandle,
    pub metrics: Arc<Metrics>,
    pub authenticator: Arc<dyn Authenticator>,
    pub admin_token: Option<Secret>,
    pub shutdown: watch::Receiver<bool>,
    /// This hub's id (hub registry, outbox drain leases).
    pub hub_id: String,
    /// The hub registry, on a MongoDB store.
    pub registry: Option<Arc<Registry>>,
}

/// Paths the ops API serves (the WebSocket path must be another one).
pub(crate) const PATHS: [&str; 11] = [
    "/ops",
    "/cluster",
    "/healthz",
    "/readyz",
    "/metrics",
    "/cursors",
    "/lag",
    "/latest-by-key",
    "/groups",
    "/dead-letters",
    "/dead-letters/replay",
];

/// The ops routes, to merge into the gateway's router.
pub(crate) fn router(state: OpsState) -> Router {
    Router::new()
        .route("/ops", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/cursors", get(cursors))
        .route("/lag", get(lag_of_group))
        .route("/latest-by-key", get(latest_by_key))
        .route("/groups", get(groups))
        .route("/cluster", get(cluster))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/replay", post(replay))
        .with_state(state)
}

/// An ops API failure, answered as `{"error": CODE, "message": ...}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpsError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            OpsError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            OpsError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            OpsError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            OpsError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            OpsError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            OpsError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            OpsError::Store(e) => {
                tracing::warn!(error = %e, "ops API: store error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let body = Json(json!({ "error": code, "message": self.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

fn bad_query(rejection: QueryRejection) -> OpsError {
    OpsError::BadRequest(rejection.body_text())
}

fn parse_pattern(topic: &str) -> Result<Pattern, OpsError> {
    Pattern::parse(topic).map_err(|e| OpsError::BadRequest(format!("topic {topic:?}: {e}")))
}

fn group_key(topic: &str, group: &str) -> Result<GroupKey, OpsError> {
    let pattern = parse_pattern(topic)?;
    let group =
        Group::parse(group).map_err(|e| OpsError::BadRequest(format!("group {group:?}: {e}")))?;
    Ok(GroupKey::new(&pattern, &group))
}

/// The broker's live view of the loaded groups among `keys` (all when
/// `None`), by key.
async fn views(state: &OpsState, keys: Option<Vec<GroupKey>>) -> HashMap<GroupKey, GroupView> {
    state
        .broker
        .inspect(keys)
        .await
        .groups
        .into_iter()
        .map(|v| (v.key.clone(), v))
        .collect()
}

/// The other live hubs sharing this hub's database, with their snapshots
/// (empty on the embedded store, or when the registry cannot be read).
async fn other_hubs(state: &OpsState) -> Vec<HubLease> {
    let Some(registry) = &state.registry else {
        return Vec::new();
    };
    match registry.list(crate::clock::now_ms()).await {
        Ok(hubs) => hubs
            .into_iter()
            .filter(|hub| hub.alive && hub.id != state.hub_id)
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "ops: cannot list the other hubs; answering for this one");
            Vec::new()
        }
    }
}

/// The other hubs' parts of each group, by key.
fn parts_by_group(hubs: &[HubLease]) -> HashMap<GroupKey, Vec<HubGroupPart>> {
    let mut parts: HashMap<GroupKey, Vec<HubGroupPart>> = HashMap::new();
    for hub in hubs {
        let Some(snapshot) = &hub.snapshot else {
            continue;
        };
        for group in &snapshot.groups {
            let key = GroupKey {
                pattern: group.pattern.clone(),
                group: group.group.clone(),
            };
            parts.entry(key).or_default().push(HubGroupPart {
                hub: hub.id.clone(),
                members: group.members,
                inflight: group.inflight,
                held_elsewhere: group.held_elsewhere,
                acked: group.acked,
                delivered: group.delivered,
            });
        }
    }
    parts
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn healthz(_admin: Admin) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(_admin: Admin, State(state): State<OpsState>) -> Result<Response, OpsError> {
    if *state.shutdown.borrow() {
        return Err(OpsError::Unavailable("the hub is shutting down".into()));
    }
    let last_seq = state
        .store
        .last_seq()
        .await
        .map_err(|e| OpsError::Unavailable(format!("the store is not reachable: {e}")))?;
    Ok(Json(json!({ "status": "ready", "last_seq": last_seq })).into_response())
}

async fn metrics_text(_admin: Admin, State(state): State<OpsState>) -> Result<Response, OpsError> {
    let records = state.store.groups().await?;
    let views = views(&state, None).await;
    let now = crate::clock::now_ms();
    let mut lags = Vec::new();
    for record in records.iter().take(MAX_GROUPS_PER_SCRAPE) {
        let view = views.get(&record.key);
        match lag(state.store.as_ref(), &record.key, view, Some(record), now).await {
            Ok(lag) => lags.push(GroupLag {
                pattern: record.key.pattern.clone(),
                group: record.key.group.clone(),
                lag_events: lag.events,
                lag_secs: lag.ms as f64 / 1000.0,
            }),
            Err(e) => tracing::warn!(error = %e, group = %record.key.group, "lag for metrics"),
        }
    }
    // With other hubs on the database: every hub's counters, this one's now.
    let mut hubs: Vec<(String, HubSnapshot)> = Vec::new();
    if state.registry.is_some() {
        hubs.push((state.hub_id.clone(), HubSnapshot::counters(&state.metrics)));
        hubs.extend(
            other_hubs(&state)
                .await
                .into_iter()
                .filter_map(|hub| hub.snapshot.map(|snapshot| (hub.id, snapshot))),
        );
    }
    let text = state.metrics.encode(records.len(), lags, &hubs);
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

#[derive(Debug, Deserialize)]
struct TopicQuery {
    topic: String,
}

#[derive(Debug, Serialize)]
struct CursorsAnswer {
    topic: String,
    groups: Vec<GroupStatus>,
}

async fn cursors(
    _admin: Admin,
    State(state): State<OpsState>,
    query: Result<Query<TopicQuery>, QueryRejection>,
) -> Result<Json<CursorsAnswer>, OpsError> {
    let Query(query) = query.map_err(bad_query)?;
    let pattern = parse_pattern(&query.topic)?;
    // The groups of one pattern, page by page in key order: never every
    // group of the hub.
    let mut records = Vec::new();
    let mut after = GroupKey {
        pattern: pattern.as_str().to_owned(),
        group: String::new(),
    };
    loop {
        let page = state
            .store
            .groups_page(Some(&after), MAX_GROUPS_PAGE)
            .await?;
        let mut ended = page.len() < MAX_GROUPS_PAGE;
        for record in page {
            if record.key.pattern != pattern.as_str() {
                ended = true;
                break;
            }
            records.push(record);
        }
        match records.last() {
            Some(last) if !ended => after = last.key.clone(),
            _ => break,
        }
    }
    let views = views(
        &state,
        Some(records.iter().map(|r| r.key.clone()).collect()),
    )
    .await;
    let mut parts = parts_by_group(&other_hubs(&state).await);
    let now = crate::clock::now_ms();
    let mut groups = Vec::new();
    for record in records {
        let view = views.get(&record.key);
        let others = parts.remove(&record.key).unwrap_or_default();
        groups.push(
            status(
                state.store.as_ref(),
                &record.key,
                view,
                Some(&record),
                others,
                now,
            )
            .await?,
        );
    }
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(Json(CursorsAnswer {
        topic: query.topic,
        groups,
    }))
}

#[derive(Debug, Deserialize)]
struct GroupQuery {
    topic: String,
    group: String,
}

/// The stored record and live view of one group; 404 when neither exists.
async fn find_group(
    state: &OpsState,
    key: &GroupKey,
) -> Result<(Option<GroupRecord>, Option<GroupView>), OpsError> {
    let view = state
        .broker
        .inspect(Some(vec![key.clone()]))
        .await
        .groups
        .into_iter()
        .next();
    let record = state.store.load_group(key).await?;
    if record.is_none() && view.is_none() {
        return Err(OpsError::NotFound(format!(
            "no group {:?} on {:?}",
            key.group, key.pattern
        )));
    }
    Ok((record, view))
}

async fn lag_of_group(
    _admin: Admin,
    State(state): State<OpsState>,
    query: Result<Query<GroupQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, OpsError> {
    let Query(query) = query.map_err(bad_query)?;
    let key = group_key(&query.topic, &query.group)?;
    let (record, view) = find_group(&state, &key).await?;
    let now = crate::clock::now_ms();
    let lag = lag(
        state.store.as_ref(),
        &key,
        view.as_ref(),
        record.as_ref(),
        now,
    )
    .await?;
    let (cursor, _) = status::progress(view.as_ref(), record.as_ref());
    Ok(Json(json!({
        "topic": query.topic,
        "group": query.group,
        "cursor": cursor,
        "lag_events": lag.events,
        "lag_ms": lag.ms,
        "oldest_pending_seq": lag.oldest_pending_seq,
        "blocked": lag.blocked,
        "oldest_blocked_seq": lag.oldest_blocked_seq,
    })))
}

#[derive(Debug, Deserialize)]
struct KeyQuery {
    topic: String,
    key: String,
}

async fn latest_by_key(
    admin: Admin,
    State(state): State<OpsState>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, OpsError> {
    let Query(query) = query.map_err(bad_query)?;
    let topic = Topic::parse(&query.topic)
        .map_err(|e| OpsError::BadRequest(format!("topic {:?}: {e}", query.topic)))?;
    if !admin.may_read(&topic) {
        return Err(OpsError::Forbidden(format!(
            "the token may not subscribe to {:?}",
            query.topic
        )));
    }
    match state.store.latest_for_key(&topic, &query.key).await? {
        Some(event) => Ok(Json(json!({ "event": event }))),
        None => Err(OpsError::NotFound(format!(
            "no event with key {:?} on {:?}",
            query.key, query.topic
        ))),
    }
}

#[derive(Debug, Serialize)]
struct GroupsAnswer {
    /// Open WebSocket connections (this hub).
    connections: i64,
    /// Events stored since the hub started (this hub).
    publishes: u64,
    /// The same over every live hub of the database (this one alone on the
    /// embedded store), as of their last registry renewal.
    cluster: ClusterTotals,
    /// Stored groups (all pages).
    total: u64,
    /// One page of groups in (pattern, group) order.
    groups: Vec<GroupStatus>,
    /// `after` for the next page; `null` on the last one.
    next_after: Option<String>,
    /// The group buffer shared by every group.
    group_buffer: BufferView,
}

#[derive(Debug, Serialize)]
struct ClusterTotals {
    hubs: usize,
    connections: u64,
    publishes: u64,
}

#[derive(Debug, Deserialize)]
struct GroupsQuery {
    /// Groups per page (default 100, at most 1000).
    limit: Option<usize>,
    /// The page after this group, as `PATTERN GROUP` (the previous page's
    /// `next_after`; neither contains whitespace).
    after: Option<String>,
}

/// `PATTERN GROUP` → the group key.
fn parse_after(after: &str) -> Result<GroupKey, OpsError> {
    let (topic, group) = after.split_once(' ').ok_or_else(|| {
        OpsError::BadRequest(format!(
            "after {after:?}: expected \"PATTERN GROUP\" (a page's next_after)"
        ))
    })?;
    group_key(topic, group)
}

async fn groups(
    _admin: Admin,
    State(state): State<OpsState>,
    query: Result<Query<GroupsQuery>, QueryRejection>,
) -> Result<Json<GroupsAnswer>, OpsError> {
    let Query(query) = query.map_err(bad_query)?;
    let limit = query
        .limit
        .unwrap_or(DEFAULT_GROUPS_PAGE)
        .clamp(1, MAX_GROUPS_PAGE);
    let after = query.after.as_deref().map(parse_after).transpose()?;
    let records = state.store.groups_page(after.as_ref(), limit).await?;
    let inspection = state
        .broker
        .inspect(Some(records.iter().map(|r| r.key.clone()).collect()))
        .await;
    let mut views: HashMap<GroupKey, GroupView> = inspection
        .groups
        .into_iter()
        .map(|v| (v.key.clone(), v))
        .collect();
    let hubs = other_hubs(&state).await;
    let mut parts = parts_by_group(&hubs);
    let now = crate::clock::now_ms();
    let mut groups = Vec::with_capacity(records.len());
    for record in &records {
        let view = views.remove(&record.key);
        let others = parts.remove(&record.key).unwrap_or_default();
        groups.push(
            status(
                state.store.as_ref(),
                &record.key,
                view.as_ref(),
                Some(record),
                others,
                now,
            )
            .await?,
        );
    }
    let snapshots = || hubs.iter().filter_map(|hub| hub.snapshot.as_ref());
    let next_after = match records.last() {
        Some(last) if records.len() == limit => {
            Some(format!("{} {}", last.key.pattern, last.key.group))
        }
        _ => None,
    };
    let connections = state.metrics.connections_open.get();
    let publishes = state.metrics.publishes.get();
    Ok(Json(GroupsAnswer {
        connections,
        publishes,
        cluster: ClusterTotals {
            hubs: hubs.len() + 1,
            connections: snapshots()
                .map(|s| s.connections)
                .sum::<u64>()
                .saturating_add(u64::try_from(connections).unwrap_or(0)),
            publishes: snapshots()
                .map(|s| s.publishes)
                .sum::<u64>()
                .saturating_add(publishes),
        },
        total: state.store.group_count().await?,
        groups,
        next_after,
        group_buffer: inspection.buffer,
    }))
}

#[derive(Debug, Deserialize)]
struct DeadLetterQuery {
    topic: String,
    group: String,
    /// Page after this seq (the last one of the previous page).
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct DeadLetterInfo {
    seq: u64,
    event_id: String,
    reason: String,
    attempts: u32,
    dead_at: u64,
}

impl From<DeadLetter> for DeadLetterInfo {
    fn from(d: DeadLetter) -> Self {
        DeadLetterInfo {
            seq: d.seq,
            event_id: d.event_id,
            reason: d.reason,
            attempts: d.attempts,
            dead_at: d.dead_at,
        }
    }
}

async fn dead_letters(
    _admin: Admin,
    State(state): State<OpsState>,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, OpsError> {
    let Query(query) = query.map_err(bad_query)?;
    let key = group_key(&query.topic, &query.group)?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_DEAD_LETTER_PAGE);
    let page: Vec<DeadLetterInfo> = state
        .store
        .dead_letters(&key, query.after, limit)
        .await?
        .into_iter()
        .map(DeadLetterInfo::from)
        .collect();
    Ok(Json(json!({
        "topic": query.topic,
        "group": query.group,
        "count": state.store.dead_letter_count(&key).await?,
        "dead_letters": page,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    topic: String,
    group: String,
    seq: u64,
}

async fn replay(
    _admin: Admin,
    State(state): State<OpsState>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Result<Response, OpsError> {
    let Json(request) = body.map_err(|e| OpsError::BadRequest(e.body_text()))?;
    let key = group_key(&request.topic, &request.group)?;
    let seq = request.seq;
    let found = state
        .store
        .dead_letters(&key, seq.saturating_sub(1), 1)
        .await?;
    if seq == 0 || found.first().is_none_or(|d| d.seq != seq) {
        return Err(OpsError::NotFound(format!(
            "no dead letter {seq} in group {:?} on {:?}",
            request.group, request.topic
        )));
    }
    let event = state
        .store
        .get(seq)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("event {seq} is no longer retained")))?;
    match state.broker.replay(key, event).await {
        Some(Ok(())) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "replayed": seq, "topic": request.topic, "group": request.group })),
        )
            .into_response()),
        Some(Err(refused @ ReplayRefused::NoMembers)) => Err(OpsError::Conflict(format!(
            "{refused}: replay needs a connected member of the group"
        ))),
        Some(Err(refused @ ReplayRefused::AlreadyPending)) => {
            Err(OpsError::Conflict(refused.to_string()))
        }
        None => Err(OpsError::Unavailable("the hub is shutting down".into())),
    }
}

/// `GET /cluster`: the hubs registered in the store's database with their
/// leases (`alive`: the lease still runs); with the embedded store only
/// this hub, `clustered: false`.
async fn cluster(_admin: Admin, State(state): State<OpsState>) -> Result<Response, OpsError> {
    let Some(registry) = &state.registry else {
        return Ok(Json(json!({
            "clustered": false,
            "self": state.hub_id,
            "hubs": [],
        }))
        .into_response());
    };
    let hubs = registry
        .list(crate::clock::now_ms())
        .await
        .map_err(|e| OpsError::Unavailable(format!("cannot list the hubs: {e}")))?;
    Ok(Json(json!({
        "clustered": true,
        "self": state.hub_id,
        "lease_ms": u64::try_from(registry.lease().as_millis()).unwrap_or(u64::MAX),
        "hubs": hubs,
    }))
    .into_response())
}
