//! Every failure reaches JavaScript as a `PromHubError` (an `Error` with a
//! `code`); this module picks the code and the words.

use promhub_core::client::{ClientError, RequestError};
use wasm_bindgen::JsValue;

use crate::bindings::make_error;

/// A `PromHubError` with this code and message.
pub(crate) fn error(code: &str, message: &str) -> JsValue {
    make_error(code, message, None)
}

/// A call refused on the spot by the state machine.
pub(crate) fn client_error(err: &ClientError) -> JsValue {
    let code = match err {
        ClientError::NotConnected => "not_connected",
        ClientError::Closed => "closed",
        ClientError::QueueFull { .. } => "queue_full",
        ClientError::AlreadySubscribed(_) => "already_subscribed",
        ClientError::UnknownSubscription(_) => "unknown_subscription",
        ClientError::NotHeld { .. } => "not_held",
    };
    error(code, &err.to_string())
}

/// A request that failed after it was made. A refusal by the hub carries
/// the hub's error code (`forbidden`, `rate_limited`, …).
pub(crate) fn request_error(err: &RequestError) -> JsValue {
    match err {
        RequestError::Refused(frame) => make_error(
            frame.code.as_str(),
            &err.to_string(),
            frame.retry_after_ms.map(|ms| ms as f64),
        ),
        RequestError::TimedOut => error("timeout", &err.to_string()),
        RequestError::Disconnected => error("disconnected", &err.to_string()),
        RequestError::Closed => error("closed", &err.to_string()),
        RequestError::QueueFull => error("queue_full", &err.to_string()),
    }
}

/// Bad arguments from the application.
pub(crate) fn bad_request(message: impl AsRef<str>) -> JsValue {
    error("bad_request", message.as_ref())
}
