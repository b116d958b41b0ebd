//! The WebSocket path: checks the handshake and the `Origin`, answers 101
//! and runs the connection over tokio-tungstenite on the upgraded socket.
//!
//! The hub does the handshake itself (not axum's `WebSocketUpgrade`) to
//! keep the raw socket under the WebSocket: after a frame it cannot read
//! (too big, not UTF-8) the connection drains what the client still sends
//! while its close frame goes out, so the client gets 1009/1007 instead
//! of a reset (see `connection/`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::Accepted;
use crate::connection::{self, Shared};
use crate::refusals::{self, Refusal};

/// WebSocket read buffer per connection: small, because idle connections
/// are the common case (a frame larger than this is read in several steps).
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames are written to the socket once this much is buffered, or on
/// flush (once per send queue drain).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// A hub WebSocket: tungstenite over the upgraded HTTP connection.
pub(crate) type WsStream = WebSocketStream<TokioIo<Upgraded>>;

/// The handler of the WebSocket path.
pub(crate) async fn upgrade(State(shared): State<Arc<Shared>>, mut request: Request) -> Response {
    if *shared.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "hub shutting down").into_response();
    }
    let key = match handshake_key(request.headers()) {
        Ok(key) => key,
        Err(refusal) => return refusal,
    };
    let config = &shared.config;
    if !origin_allowed(&config.allowed_origins, request.headers()) {
        refusals::count(Refusal::Origin);
        tracing::debug!(
            origin = ?request.headers().get(header::ORIGIN),
            "WebSocket refused: origin not in allowed_origins"
        );
        return (
            StatusCode::FORBIDDEN,
            "this origin may not open a WebSocket to the hub (allowed_origins)\n",
        )
            .into_response();
    }
    let Some(accepted) = request.extensions().get::<Accepted>().cloned() else {
        // Only the gateway's accept loop serves this router.
        tracing::error!("WebSocket request without a connection slot");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(config.hard_frame_limit()))
        .max_frame_size(Some(config.hard_frame_limit()));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                // The slot stays taken until the WebSocket ends.
                connection::serve(socket, shared, accepted.slot).await;
            }
            Err(error) => tracing::debug!(peer = %accepted.peer, %error, "upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, key);
    response
}

/// `Sec-WebSocket-Accept` for a valid RFC 6455 handshake, or the refusal.
#[allow(clippy::result_large_err)]
fn handshake_key(headers: &HeaderMap) -> Result<HeaderValue, Response> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this path only takes WebSocket upgrades\n",
        )
            .into_response());
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "WebSocket version 13 only\n",
        )
            .into_response());
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing\n").into_response());
    };
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| {
        // A base64 digest is always a valid header value.
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    })
}

/// True when `allowed` is empty, the request has no `Origin` (native
/// clients send none; browsers always do), or its `Origin` is listed.
/// Scheme and host compare case-insensitively, a default port (`:443` for
/// https, `:80` for http) equals none.
pub(crate) fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let (Some(origin), None) = (origins.next(), origins.next()) else {
        // No Origin at all: not a browser. Several: not a browser either,
        // and ambiguous; refuse.
        return headers.get(header::ORIGIN).is_none();
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = normalize_origin(origin);
    allowed.iter().any(|a| normalize_origin(a) == origin)
}

fn normalize_origin(origin: &str) -> String {
    let origin = origin.trim().to_ascii_lowercase();
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        if origin.starts_with(scheme)
            && let Some(bare) = origin.strip_suffix(port)
        {
            return bare.to_owned();
        }
    }
    origin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origins(origins: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for origin in origins {
            headers.append(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn origins_are_compared_as_origins() {
        let allowed = vec![
            "https://App.example".to_owned(),
            "http://localhost:8080".to_owned(),
        ];
        assert!(origin_allowed(&allowed, &with_origins(&[])));
        assert!(origin_allowed(
            &allowed,
            &with_origins(&["https://app.example"])
        ));
        assert!(origin_allowed(
            &allowed,
            &with_origins(&["https://app.example:443"])
        ));
        assert!(origin_allowed(
            &allowed,
            &with_origins(&["http://localhost:8080"])
        ));
        for refused in [
            "http://app.example",
            "https://app.example:8443",
            "https://app.example.evil",
            "https://evil.example",
            "null",
            "http://localhost",
        ] {
            assert!(
                !origin_allowed(&allowed, &with_origins(&[refused])),
                "{refused} allowed"
            );
        }
        assert!(!origin_allowed(
            &allowed,
            &with_origins(&["https://app.example", "https://evil.example"])
        ));
        assert!(origin_allowed(
            &[],
            &with_origins(&["https://evil.example"])
        ));
    }
}
