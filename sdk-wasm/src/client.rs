//! `PromClient`, the class applications use.

use std::rc::Rc;

use js_sys::{Function, JSON, Promise};
use promhub_core::client::ConnectionState;
use promhub_core::frames::js::JsPayload;
use promhub_core::frames::{Group, PublishOpts, SubscribeOpts};
use promhub_core::quoted::Quoted;
use promhub_core::{Pattern, Topic};
use tsify::Ts;
use wasm_bindgen::prelude::*;

use crate::bindings::{PENDING_PUBLISH, PENDING_SUBSCRIBE, describe_error, hub_urls, now_ms};
use crate::convert::{publish_opts, subscribe_opts};
use crate::dispatch::state_name;
use crate::driver::Shared;
use crate::errors::{bad_request, client_error, error};
use crate::options::Options;
use crate::subscription::Subscription;

/// A promhub client: one WebSocket to the hub, reconnected as needed.
/// Its TypeScript declaration is written by hand in `ts/api.d.ts` (the
/// class is generic over a topic map, which generated declarations cannot
/// express); keep the two in step.
#[wasm_bindgen(skip_typescript)]
#[derive(Debug)]
pub struct PromClient {
    shared: Rc<Shared>,
}

#[wasm_bindgen]
impl PromClient {
    /// `url`: the hub's WebSocket endpoint, e.g. `ws://127.0.0.1:8090/ws`,
    /// or an array of several endpoints: the client
    /// fails over between them. A path (`/ws`) or an `http(s)` URL is
    /// resolved against the page.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "string | string[]")] url: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "ClientOptions")] options: Option<JsValue>,
    ) -> Result<PromClient, JsValue> {
        let urls = hub_urls(&url)?;
        let mut options = Options::parse(&options.unwrap_or(JsValue::UNDEFINED))?;
        options.config.endpoints = urls.length() as usize;
        Ok(PromClient {
            shared: Shared::new(urls, options),
        })
    }

    /// Connects (and keeps reconnecting). Resolves once the hub accepted
    /// the connection; rejects when the client stops for good before that
    /// (`close()`, a refused token without `getToken`, reconnecting
    /// disabled or exhausted).
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn connect(&self) -> Promise {
        {
            let mut driver = self.shared.driver.borrow_mut();
            if driver.core.state() == ConnectionState::Connected {
                return Promise::resolve(&JsValue::UNDEFINED);
            }
            driver.core.connect(now_ms());
        }
        let promise = self.shared.runtime.wait_connected();
        self.shared.drive();
        promise
    }

    /// Publishes `payload` (any JSON value) to `topic`. Resolves with the
    /// hub's `PUBACK` once the event is durable.
    #[wasm_bindgen(skip_typescript)]
    pub fn publish(
        &self,
        topic: &str,
        payload: &JsValue,
        opts: Option<Ts<PublishOpts>>,
    ) -> Promise {
        self.try_publish(topic, payload, opts)
            .unwrap_or_else(|error| Promise::reject(&error))
    }

    /// Subscribes `handler` to `pattern`; with `group`, as a durable
    /// consumer group whose deliveries are acknowledged when the handler
    /// returns (or its promise resolves) and refused with the error's text
    /// when it throws (or rejects). Resolves with a `Subscription` once
    /// the hub confirmed it.
    #[wasm_bindgen(skip_typescript)]
    pub fn subscribe(
        &self,
        pattern: &str,
        group: Option<String>,
        handler: &JsValue,
        opts: Option<Ts<SubscribeOpts>>,
    ) -> Promise {
        self.try_subscribe(pattern, group, handler, opts)
            .unwrap_or_else(|error| Promise::reject(&error))
    }

    /// Calls `listener` with every connection state change; returns a
    /// function that removes it.
    #[wasm_bindgen(js_name = onState, skip_typescript)]
    pub fn on_state(&self, listener: &JsValue) -> Result<Function, JsValue> {
        self.shared.runtime.on_state(listener)
    }

    /// Calls `listener` with errors that belong to no promise (a refused
    /// resubscribe, a failing handler of a live subscription, `getToken`
    /// failures, protocol errors); returns a function that removes it.
    /// Without a listener they go to `console.error`.
    #[wasm_bindgen(js_name = onError, skip_typescript)]
    pub fn on_error(&self, listener: &JsValue) -> Result<Function, JsValue> {
        self.shared.runtime.on_error(listener)
    }

    /// Replaces the token: re-authenticates an open connection in place, or
    /// is used by the next connection (reconnecting at once if the hub had
    /// refused the previous token).
    #[wasm_bindgen(js_name = setToken)]
    pub fn set_token(&self, token: Option<String>) {
        self.shared
            .driver
            .borrow_mut()
            .core
            .set_token(now_ms(), token);
        self.shared.drive();
    }

    /// Closes the connection for good (code 1000) until `connect()`.
    /// Pending publishes fail; confirmed subscriptions are kept and
    /// restored by `connect()`.
    pub fn close(&self) {
        self.shared.driver.borrow_mut().core.close(now_ms());
        self.shared.drive();
    }

    /// `"disconnected" | "connecting" | "authenticating" | "connected" | "closed"`.
    #[wasm_bindgen(getter, unchecked_return_type = "ConnectionState")]
    pub fn state(&self) -> String {
        state_name(self.shared.driver.borrow().core.state()).to_owned()
    }

    /// Publishes waiting for a connection.
    #[wasm_bindgen(getter, js_name = queuedPublishes)]
    pub fn queued_publishes(&self) -> usize {
        self.shared.driver.borrow().core.queued_publishes()
    }
}

impl PromClient {
    fn try_publish(
        &self,
        topic: &str,
        payload: &JsValue,
        opts: Option<Ts<PublishOpts>>,
    ) -> Result<Promise, JsValue> {
        let topic = Topic::parse(topic)
            .map_err(|e| bad_request(format!("invalid topic {}: {e}", Quoted(topic))))?;
        let json = JSON::stringify(payload).map_err(|e| {
            bad_request(format!(
                "payload is not JSON-serializable: {}",
                describe_error(&e)
            ))
        })?;
        let json = json.as_string().ok_or_else(|| {
            bad_request("payload must be a JSON value (not undefined, a function or a symbol)")
        })?;
        // Written into the PUBLISH frame as it is: stringified once.
        let payload = JsPayload::new(json);
        let opts = match opts {
            Some(opts) => publish_opts(&opts.js_value())?,
            None => PublishOpts::default(),
        };
        let request = self
            .shared
            .driver
            .borrow_mut()
            .core
            .publish(now_ms(), topic, payload, opts)
            .map_err(|e| client_error(&e))?;
        let promise = self
            .shared
            .runtime
            .track(PENDING_PUBLISH, request.as_u64() as f64);
        self.shared.drive();
        Ok(promise)
    }

    fn try_subscribe(
        &self,
        pattern: &str,
        group: Option<String>,
        handler: &JsValue,
        opts: Option<Ts<SubscribeOpts>>,
    ) -> Result<Promise, JsValue> {
        let parsed = Pattern::parse(pattern)
            .map_err(|e| bad_request(format!("invalid pattern {}: {e}", Quoted(pattern))))?;
        let group = group
            .map(|name| {
                Group::parse(&name)
                    .map_err(|e| bad_request(format!("invalid group {}: {e}", Quoted(&name))))
            })
            .transpose()?;
        let handler: &Function = handler
            .dyn_ref()
            .ok_or_else(|| bad_request("handler must be a function"))?;
        let opts = match opts {
            Some(opts) => subscribe_opts(&opts.js_value())?,
            None => SubscribeOpts::default(),
        };
        let promise = {
            let mut driver = self.shared.driver.borrow_mut();
            if driver.core.state() == ConnectionState::Closed {
                return Err(error(
                    "closed",
                    "client is closed: call connect() before subscribing",
                ));
            }
            let durable = group.is_some();
            let group_name = group.as_ref().map(|g| g.as_str().to_owned());
            let sub = driver
                .core
                .subscribe(now_ms(), parsed, group, opts)
                .map_err(|e| client_error(&e))?;
            let subscription = Subscription::new(
                Rc::downgrade(&self.shared),
                sub,
                pattern.to_owned(),
                group_name,
            );
            self.shared.runtime.register(
                sub.as_u64() as f64,
                handler,
                &JsValue::from(subscription),
                durable,
            );
            driver.unconfirmed.push(sub);
            self.shared
                .runtime
                .track(PENDING_SUBSCRIBE, sub.as_u64() as f64)
        };
        self.shared.drive();
        Ok(promise)
    }
}
