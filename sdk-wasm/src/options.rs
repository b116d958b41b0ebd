//! `new PromClient(url, options)`: the options object, checked field by
//! field (a typo is an error, not a silently ignored setting).

use js_sys::Function;
use promhub_core::client::{ClientConfig, QueuePolicy};
use promhub_core::quoted::Quoted;
use wasm_bindgen::{JsCast, JsValue};

use crate::bindings::web_socket_constructor;
use crate::convert::Fields;
use crate::errors::bad_request;

/// What the application configured, ready for the driver.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) config: ClientConfig,
    pub(crate) get_token: Option<Function>,
    /// The WebSocket constructor sockets are made with.
    pub(crate) websocket: Function,
}

impl Options {
    /// Reads the options object (`undefined`/`null`: all defaults).
    pub(crate) fn parse(value: &JsValue) -> Result<Options, JsValue> {
        let fields = Fields::new(
            value,
            "options",
            &[
                "token",
                "getToken",
                "reconnect",
                "requestTimeoutMs",
                "connectTimeoutMs",
                "heartbeatMs",
                "pongTimeoutMs",
                "tokenRefreshMarginMs",
                "queue",
                "clientName",
                "seed",
                "WebSocket",
            ],
        )?;
        let websocket =
            web_socket_constructor(&fields.value("WebSocket").unwrap_or(JsValue::UNDEFINED))?;
        let get_token = fields
            .value("getToken")
            .map(|f| {
                f.dyn_into::<Function>()
                    .map_err(|_| bad_request("options.getToken must be a function"))
            })
            .transpose()?;
        let mut config = ClientConfig::new(concat!("promhub-wasm/", env!("CARGO_PKG_VERSION")));
        // A different jitter sequence per client, so a hub restart does not
        // see every open tab reconnect in lockstep.
        config.seed = js_sys::Math::random().to_bits();
        config.token = fields.string("token")?;
        if let Some(name) = fields.string("clientName")? {
            config.client_name = name;
        }
        if let Some(ms) = fields.u64("requestTimeoutMs")? {
            config.request_timeout_ms = ms;
        }
        if let Some(ms) = fields.u64("connectTimeoutMs")? {
            config.connect_timeout_ms = ms;
        }
        if let Some(ms) = fields.u64("heartbeatMs")? {
            config.heartbeat.interval_ms = Some(ms);
        }
        if let Some(ms) = fields.u64("pongTimeoutMs")? {
            config.heartbeat.pong_timeout_ms = ms;
        }
        if let Some(ms) = fields.u64("tokenRefreshMarginMs")? {
            config.token_refresh_margin_ms = ms;
        }
        if let Some(seed) = fields.u64("seed")? {
            config.seed = seed;
        }
        match fields.value("reconnect") {
            None => {}
            Some(enabled) if enabled.as_bool().is_some() => {
                config.reconnect.enabled = enabled.as_bool().unwrap_or(true);
            }
            Some(settings) => {
                let settings = Fields::new(
                    &settings,
                    "options.reconnect",
                    &["minDelayMs", "maxDelayMs", "multiplier", "maxAttempts"],
                )?;
                let reconnect = &mut config.reconnect;
                reconnect.enabled = true;
                if let Some(ms) = settings.u64("minDelayMs")? {
                    reconnect.min_delay_ms = ms;
                }
                if let Some(ms) = settings.u64("maxDelayMs")? {
                    reconnect.max_delay_ms = ms;
                }
                if let Some(multiplier) = settings.number("multiplier")? {
                    reconnect.multiplier = multiplier;
                }
                reconnect.max_attempts = settings.u32("maxAttempts")?;
            }
        }
        if let Some(queue) = fields.value("queue") {
            let queue = Fields::new(&queue, "options.queue", &["capacity", "policy"])?;
            if let Some(capacity) = queue.u64("capacity")? {
                config.outbound_queue.capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
            }
            match queue.string("policy")?.as_deref() {
                None => {}
                Some("wait") => config.outbound_queue.policy = QueuePolicy::Wait,
                Some("fail_fast") => config.outbound_queue.policy = QueuePolicy::FailFast,
                Some(other) => {
                    return Err(bad_request(format!(
                        "options.queue.policy must be \"wait\" or \"fail_fast\", not {}",
                        Quoted(other)
                    )));
                }
            }
        }
        // The machine asks `getToken` when it needs a token, and retries it.
        config.token_source = get_token.is_some();
        Ok(Options {
            config,
            get_token,
            websocket,
        })
    }
}
