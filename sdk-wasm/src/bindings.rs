//! Imports from JavaScript: the clock, timers, sockets and the JS half of
//! the client (`js/runtime.js`).

use js_sys::{Array, Function, Promise};
use wasm_bindgen::prelude::*;
use web_sys::WebSocket;

/// Kinds of pending promises kept by the runtime (`track`/`settle`).
pub(crate) const PENDING_PUBLISH: u32 = 0;
pub(crate) const PENDING_SUBSCRIBE: u32 = 1;
pub(crate) const PENDING_UNSUBSCRIBE: u32 = 2;

#[wasm_bindgen(module = "/js/runtime.js")]
extern "C" {
    /// Listener sets, subscription handlers, pending promises and the
    /// per-event dispatch.
    #[derive(Debug, Clone)]
    pub(crate) type Runtime;

    #[wasm_bindgen(constructor)]
    pub(crate) fn new() -> Runtime;

    #[wasm_bindgen(method)]
    pub(crate) fn track(this: &Runtime, kind: u32, id: f64) -> Promise;

    #[wasm_bindgen(method)]
    pub(crate) fn settle(this: &Runtime, kind: u32, id: f64, ok: bool, value: &JsValue) -> bool;

    #[wasm_bindgen(method, js_name = waitConnected)]
    pub(crate) fn wait_connected(this: &Runtime) -> Promise;

    #[wasm_bindgen(method, js_name = hasConnectWaiters)]
    pub(crate) fn has_connect_waiters(this: &Runtime) -> bool;

    #[wasm_bindgen(method, js_name = settleConnected)]
    pub(crate) fn settle_connected(this: &Runtime, ok: bool, value: &JsValue);

    #[wasm_bindgen(method)]
    pub(crate) fn register(
        this: &Runtime,
        id: f64,
        handler: &Function,
        subscription: &JsValue,
        durable: bool,
    );

    #[wasm_bindgen(method)]
    pub(crate) fn unregister(this: &Runtime, id: f64);

    /// The JS `Subscription` object registered under `id`, or `undefined`.
    #[wasm_bindgen(method)]
    pub(crate) fn subscription(this: &Runtime, id: f64) -> JsValue;

    #[wasm_bindgen(method, catch, js_name = onState)]
    pub(crate) fn on_state(this: &Runtime, listener: &JsValue) -> Result<Function, JsValue>;

    #[wasm_bindgen(method, catch, js_name = onError)]
    pub(crate) fn on_error(this: &Runtime, listener: &JsValue) -> Result<Function, JsValue>;

    /// A subscription the hub refused on a resubscribe, reported to the
    /// error listeners (`subscription_lost`, `failure` as its cause).
    #[wasm_bindgen(method, js_name = subscriptionLost)]
    pub(crate) fn subscription_lost(this: &Runtime, id: f64, failure: &JsValue);

    #[wasm_bindgen(method, js_name = emitState)]
    pub(crate) fn emit_state(this: &Runtime, event: &JsValue);

    #[wasm_bindgen(method, js_name = emitError)]
    pub(crate) fn emit_error(this: &Runtime, error: &JsValue, quiet: bool);

    /// One event to its handler, from the EVENT frame as `JSON.parse` made
    /// it. `tag` names the delivery in its answer (durable groups; 0
    /// otherwise); `gap_from..=gap_to`: seqs the hub could not deliver
    /// before it.
    #[wasm_bindgen(method, js_name = deliverFrame)]
    pub(crate) fn deliver_frame(
        this: &Runtime,
        id: f64,
        frame: &JsValue,
        tag: f64,
        gap_from: Option<f64>,
        gap_to: Option<f64>,
    );

    #[wasm_bindgen(js_name = makeError)]
    pub(crate) fn make_error(code: &str, message: &str, retry_after_ms: Option<f64>) -> JsValue;

    #[wasm_bindgen(js_name = makeStateEvent)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn make_state_event(
        state: &str,
        reason: &str,
        code: Option<u16>,
        attempt: Option<u32>,
        delay_ms: Option<f64>,
        at: Option<f64>,
        session: Option<String>,
        server: Option<String>,
        expires_at: Option<f64>,
    ) -> JsValue;

    #[wasm_bindgen(js_name = makePubAck)]
    pub(crate) fn make_pub_ack(rid: &str, id: &str, seq: f64, duplicate: bool) -> JsValue;

    /// The values of an options object in the order of `spec` (`"name:kind
    /// …"`), checked (`undefined` where absent); throws a `bad_request`
    /// `PromHubError` naming what is wrong.
    #[wasm_bindgen(catch, js_name = readOptions)]
    pub(crate) fn read_options(value: &JsValue, what: &str, spec: &str) -> Result<Array, JsValue>;

    #[wasm_bindgen(js_name = describeError)]
    pub(crate) fn describe_error(error: &JsValue) -> String;

    /// Calls `source` and reports `(4, token, undefined)` or
    /// `(4, undefined, message)` to `onevent`.
    #[wasm_bindgen(js_name = fetchToken)]
    pub(crate) fn fetch_token(source: &Function, onevent: &JsValue);

    /// `setTimeout` calling `onevent(3)` after `delay_ms`.
    #[wasm_bindgen(js_name = setTimer)]
    pub(crate) fn set_timer(onevent: &JsValue, delay_ms: f64) -> JsValue;

    /// `options.WebSocket` (`undefined` if absent), else the global
    /// `WebSocket`; throws a `PromHubError` naming the option when neither
    /// is a constructor.
    #[wasm_bindgen(catch, js_name = webSocketConstructor)]
    pub(crate) fn web_socket_constructor(option: &JsValue) -> Result<Function, JsValue>;

    /// The absolute `ws:`/`wss:` URLs of `urls` (one URL, or an array of
    /// several hubs'): paths and `http(s)` URLs are resolved against the
    /// page, the way `fetch` resolves them. Throws a `bad_request`
    /// `PromHubError` for anything else, or for no URL at all.
    #[wasm_bindgen(catch, js_name = hubUrls)]
    pub(crate) fn hub_urls(urls: &JsValue) -> Result<Array, JsValue>;

    /// `new constructor(urls[index])`, its `open`, `message` and `close` events
    /// reported to `onevent` as `(0, socket)`, `(1, socket, data)` and
    /// `(2, socket, closeEvent)`. Throws what the constructor throws.
    #[wasm_bindgen(catch, js_name = openSocket)]
    pub(crate) fn open_socket(
        constructor: &Function,
        urls: &Array,
        index: u32,
        onevent: &JsValue,
    ) -> Result<WebSocket, JsValue>;

    /// Detaches the callbacks, then closes with `code` and `reason` (or
    /// without them, if the socket refuses them).
    #[wasm_bindgen(js_name = closeSocket)]
    pub(crate) fn close_socket(socket: &WebSocket, code: u16, reason: &str);
}

#[wasm_bindgen]
extern "C" {
    // Globals rather than `window.*`, so the client also runs in workers.
    #[wasm_bindgen(js_name = clearTimeout)]
    pub(crate) fn clear_timeout(id: &JsValue);

    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// The driver's monotonic clock: whole ms since the page (or worker)
/// started.
pub(crate) fn now_ms() -> u64 {
    performance_now().max(0.0) as u64
}

/// Wall-clock Unix ms, for `ClientCore::set_unix_time`.
pub(crate) fn unix_ms() -> u64 {
    js_sys::Date::now().max(0.0) as u64
}
