//! The replay API (HTTP, same port as the gateway): stored events by `seq`
//! and time range, as JSON pages or as one streamed NDJSON export, and an
//! NDJSON import that publishes events again with de-duplication.
//!
//! - `GET /events?topic=PATTERN&from_seq=&to_seq=&from_ts=&to_ts=&limit=`:
//!   `{"events": [...], "next_from_seq": N | null}`; with
//!   `Accept: application/x-ndjson` the whole range streams instead.
//! - `GET /events.ndjson?…`: the whole range, one event per line.
//! - `POST /events/import` (NDJSON body, one event per line as exported):
//!   each line is published again with its `id` as `opts.id`, so importing
//!   twice within the dedup window stores nothing twice; under the
//!   caller's publish quotas (see [`import`]).
//!
//! Every request carries the caller's token (`Authorization: Bearer`),
//! verified like a WebSocket `AUTH`: reading needs `subscribe` permission
//! (checked on the pattern, then per event like a live delivery), importing
//! needs `publish` permission per event. Memory stays constant whatever the
//! range: the log is read in chunks and a chunk is only read once the
//! client took the previous one.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use promhub_core::acl::Action;
use promhub_core::frames::{Event, Millis};
use promhub_core::{Pattern, Policy};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::authn::{Authenticated, Authenticator};
use crate::store::Store;
use crate::store::writer::StoreWriter;

mod import;

pub use import::ImportLimits;

/// JSON pages hold at most this many events (`limit`), 100 by default.
pub const MAX_PAGE_EVENTS: usize = 1000;
const DEFAULT_PAGE_EVENTS: usize = 100;
/// Events read from the store per chunk of an export.
const CHUNK_EVENTS: usize = 1000;
/// Rows one store read may pass over for a sparse pattern; a JSON page
/// stops after this many and returns a cursor, so one request is bounded.
const SCAN_ROWS: usize = 10_000;
const PAGE_SCAN_ROWS: usize = 100_000;

pub const NDJSON: &str = "application/x-ndjson";

/// What the replay endpoints need from the hub.
#[derive(Debug, Clone)]
pub struct ReplayState {
    pub store: Arc<dyn Store>,
    pub writer: StoreWriter,
    pub authenticator: Arc<dyn Authenticator>,
    /// The import's publish quotas and line limit.
    pub import: Arc<ImportLimits>,
}

/// The paths of these routes (the WebSocket endpoint may not use them).
pub(crate) const PATHS: [&str; 3] = ["/events", "/events.ndjson", "/events/import"];

pub fn router(state: ReplayState) -> Router {
    Router::new()
        .route("/events", get(events))
        .route("/events.ndjson", get(events_ndjson))
        .route("/events/import", post(import::import))
        .with_state(state)
}

/// The range a request names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    topic: String,
    from_seq: Option<u64>,
    to_seq: Option<u64>,
    from_ts: Option<Millis>,
    to_ts: Option<Millis>,
    limit: Option<usize>,
}

/// A validated range over the log: `seq` in `[from_seq, to_seq]`, `ts` in
/// `[from_ts, to_ts]`, topic matching `pattern` and readable by `policy`.
#[derive(Debug, Clone)]
struct Range {
    pattern: Pattern,
    from_seq: u64,
    to_seq: u64,
    from_ts: Millis,
    to_ts: Millis,
    policy: Arc<Policy>,
}

impl Range {
    fn admits(&self, event: &Event) -> bool {
        (self.from_ts..=self.to_ts).contains(&event.ts)
            && self.policy.allows(Action::Subscribe, &event.topic, None)
    }

    /// Reads the next chunk after `after`: the admitted events and the
    /// last `seq` examined (`None` once the range is exhausted).
    async fn read_chunk(
        &self,
        store: &dyn Store,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Event>, Option<u64>), ApiError> {
        if after >= self.to_seq {
            return Ok((Vec::new(), None));
        }
        let (events, examined) = store
            .read_after(after, Some(&self.pattern), limit, SCAN_ROWS)
            .await
            .map_err(ApiError::store)?;
        let mut admitted = Vec::with_capacity(events.len());
        let mut last = examined.max(after);
        for event in events {
            if event.seq > self.to_seq {
                last = self.to_seq;
                break;
            }
            last = last.max(event.seq);
            if self.admits(&event) {
                admitted.push(event);
            }
        }
        // No progress means the log ends before `to_seq`.
        let next = (last > after && last < self.to_seq).then_some(last);
        Ok((admitted, next))
    }
}

#[derive(Debug, Serialize)]
struct Page {
    events: Vec<Event>,
    /// Pass as `from_seq` for the next page; `null` when the range is done.
    next_from_seq: Option<u64>,
}

async fn events(
    State(state): State<ReplayState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON));
    let result = async {
        let (range, limit) = authorized_range(&state, &headers, query.as_deref()).await?;
        if wants_ndjson {
            return Ok(ndjson_response(state.store, range));
        }
        json_page(&*state.store, &range, limit)
            .await
            .map(|page| axum::Json(page).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn events_ndjson(
    State(state): State<ReplayState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match authorized_range(&state, &headers, query.as_deref()).await {
        Ok((range, _)) => ndjson_response(state.store, range),
        Err(error) => error.into_response(),
    }
}

async fn json_page(store: &dyn Store, range: &Range, limit: usize) -> Result<Page, ApiError> {
    let mut events = Vec::new();
    let mut after = range.from_seq.saturating_sub(1);
    let mut scanned = 0usize;
    loop {
        let (chunk, next) = range.read_chunk(store, after, limit - events.len()).await?;
        events.extend(chunk);
        let Some(next) = next else {
            return Ok(Page {
                events,
                next_from_seq: None,
            });
        };
        scanned += usize::try_from(next - after).unwrap_or(usize::MAX);
        after = next;
        if events.len() >= limit || scanned >= PAGE_SCAN_ROWS {
            return Ok(Page {
                events,
                next_from_seq: Some(after + 1),
            });
        }
    }
}

fn ndjson_response(store: Arc<dyn Store>, range: Range) -> Response {
    let mut response = Body::from_stream(ndjson_lines(store, range)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

/// The export body: one chunk of lines per store read; the next read only
/// happens when the client has taken this chunk (the body is pulled).
fn ndjson_lines(
    store: Arc<dyn Store>,
    range: Range,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let start = Some(range.from_seq.saturating_sub(1));
    futures_util::stream::unfold(start, move |after| {
        let store = Arc::clone(&store);
        let range = range.clone();
        async move {
            let after = after?;
            match range.read_chunk(&*store, after, CHUNK_EVENTS).await {
                Ok((events, next)) => {
                    let mut lines = Vec::with_capacity(events.len() * 256);
                    for event in &events {
                        // Serializing an Event (raw JSON payload) cannot fail.
                        if serde_json::to_writer(&mut lines, event).is_ok() {
                            lines.push(b'\n');
                        }
                    }
                    Some((Ok(Bytes::from(lines)), next))
                }
                Err(error) => {
                    // Cut the body short: the client sees an incomplete
                    // transfer rather than a silently truncated export.
                    tracing::warn!(error = %error.message, "export stopped by a store error");
                    Some((Err(std::io::Error::other(error.message)), None))
                }
            }
        }
    })
    .filter(|chunk| futures_util::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())))
}

async fn authorized_range(
    state: &ReplayState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(Range, usize), ApiError> {
    let policy = caller_policy(&*state.authenticator, headers).await?;
    let query: RangeQuery = serde_urlencoded_query(query.unwrap_or_default())?;
    let pattern =
        Pattern::parse(&query.topic).map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    if !policy.may_subscribe(&pattern, None) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("reading {pattern} is not allowed"),
        ));
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_EVENTS);
    if limit == 0 || limit > MAX_PAGE_EVENTS {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE_EVENTS}"
        )));
    }
    // The range ends where the log ends now, so an export finishes even
    // while events keep arriving.
    let head = state.store.last_seq().await.map_err(ApiError::store)?;
    let range = Range {
        pattern,
        from_seq: query.from_seq.unwrap_or(1).max(1),
        to_seq: query.to_seq.unwrap_or(head).min(head),
        from_ts: query.from_ts.unwrap_or(0),
        to_ts: query.to_ts.unwrap_or(Millis::MAX),
        policy,
    };
    if query.to_seq.is_some_and(|to| to < range.from_seq)
        || query.to_ts.is_some_and(|to| to < range.from_ts)
    {
        return Err(ApiError::bad_request("the range ends before it starts"));
    }
    Ok((range, limit))
}

fn serde_urlencoded_query(query: &str) -> Result<RangeQuery, ApiError> {
    axum::extract::Query::<RangeQuery>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::bad_request("malformed query string"))?,
    )
    .map(|axum::extract::Query(query)| query)
    .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

/// The caller's permissions from `Authorization: Bearer TOKEN`, verified
/// like a WebSocket `AUTH` (development mode gives its configured policy).
pub async fn caller_policy(
    authenticator: &dyn Authenticator,
    headers: &HeaderMap,
) -> Result<Arc<Policy>, ApiError> {
    authenticate(authenticator, headers)
        .await
        .map(|(granted, _)| granted.policy)
}

/// What the caller's token grants, and the token itself.
async fn authenticate(
    authenticator: &dyn Authenticator,
    headers: &HeaderMap,
) -> Result<(Authenticated, Option<String>), ApiError> {
    let token = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer TOKEN"))?;
            Some(token.trim())
        }
    };
    authenticator
        .authenticate(token, crate::clock::now_ms())
        .await
        .map(|granted| (granted, token.map(str::to_owned)))
        .map_err(|failure| {
            ApiError::new(StatusCode::UNAUTHORIZED, failure.code.as_str(), failure.msg)
        })
}

// ---------------------------------------------------------------------------
// Errors

/// An error answer: the HTTP status and `{"error": code, "message": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn store(error: crate::store::StoreError) -> Self {
        tracing::warn!(%error, "replay API: store error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            error.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}
