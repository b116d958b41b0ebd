//! `new PromClient(url, options)`: the options object, checked (a typo is
//! an error, not a silently ignored setting; see `convert`).

use js_sys::Function;
use promhub_core::client::{ClientConfig, QueuePolicy};
use wasm_bindgen::{JsCast, JsValue};

use crate::bindings::web_socket_constructor;
use crate::convert::Values;

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
        let options = Values::read(
            value,
            "options",
            "token:s getToken:f reconnect:r requestTimeoutMs:n connectTimeoutMs:n \
             heartbeatMs:n pongTimeoutMs:n tokenRefreshMarginMs:n queue:o clientName:s seed:n \
             WebSocket:*",
        )?;
        let websocket = web_socket_constructor(&options.value(11).unwrap_or(JsValue::UNDEFINED))?;
        let get_token = options.value(1).map(|f| f.unchecked_into::<Function>());
        let mut config = ClientConfig::new(concat!("promhub-wasm/", env!("CARGO_PKG_VERSION")));
        // A different jitter sequence per client, so a hub restart does not
        // see every open tab reconnect in lockstep.
        config.seed = js_sys::Math::random().to_bits();
        config.token = options.string(0);
        if let Some(name) = options.string(9) {
            config.client_name = name;
        }
        if let Some(ms) = options.u64(3) {
            config.request_timeout_ms = ms;
        }
        if let Some(ms) = options.u64(4) {
            config.connect_timeout_ms = ms;
        }
        if let Some(ms) = options.u64(5) {
            config.heartbeat.interval_ms = Some(ms);
        }
        if let Some(ms) = options.u64(6) {
            config.heartbeat.pong_timeout_ms = ms;
        }
        if let Some(ms) = options.u64(7) {
            config.token_refresh_margin_ms = ms;
        }
        if let Some(seed) = options.u64(10) {
            config.seed = seed;
        }
        match options.value(2) {
            None => {}
            Some(enabled) if enabled.as_bool().is_some() => {
                config.reconnect.enabled = enabled.as_bool().unwrap_or(true);
            }
            Some(settings) => {
                let settings = Values::read(
                    &settings,
                    "options.reconnect",
                    "minDelayMs:n maxDelayMs:n multiplier:x maxAttempts:u",
                )?;
                let reconnect = &mut config.reconnect;
                reconnect.enabled = true;
                if let Some(ms) = settings.u64(0) {
                    reconnect.min_delay_ms = ms;
                }
                if let Some(ms) = settings.u64(1) {
                    reconnect.max_delay_ms = ms;
                }
                if let Some(multiplier) = settings.number(2) {
                    reconnect.multiplier = multiplier;
                }
                reconnect.max_attempts = settings.u32(3);
            }
        }
        if let Some(queue) = options.value(8) {
            let queue = Values::read(&queue, "options.queue", "capacity:n policy:p")?;
            if let Some(capacity) = queue.u64(0) {
                config.outbound_queue.capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
            }
            match queue.string(1).as_deref() {
                Some("wait") => config.outbound_queue.policy = QueuePolicy::Wait,
                Some("fail_fast") => config.outbound_queue.policy = QueuePolicy::FailFast,
                _ => {}
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
