//! Reading option objects from JavaScript. `js/runtime.js` (`readOptions`)
//! checks them against a spec — their keys (a key not in it is refused, so
//! a typo, or a field a newer core added and this reader does not know
//! yet, is an error, never a silently ignored setting) and the kind of
//! every value — and hands the values back in the spec's order; this side
//! reads them by position. Checking is cheaper in JavaScript than in wasm
//! (the bundle has a size budget).

use std::collections::BTreeMap;

use js_sys::Array;
use promhub_core::frames::{PublishOpts, StartFrom, SubscribeOpts};
use wasm_bindgen::{JsCast, JsValue};

use crate::bindings::read_options;

/// The checked values of an options object, by position in its spec.
pub(crate) struct Values(Array);

impl Values {
    /// `value` checked against `spec` (`"name:kind …"`; see `readOptions`).
    pub(crate) fn read(value: &JsValue, what: &str, spec: &str) -> Result<Values, JsValue> {
        read_options(value, what, spec).map(Values)
    }

    /// The value at `at`; `None` when absent or `null`.
    pub(crate) fn value(&self, at: u32) -> Option<JsValue> {
        let value = self.0.get(at);
        (!value.is_undefined()).then_some(value)
    }

    pub(crate) fn string(&self, at: u32) -> Option<String> {
        self.0.get(at).as_string()
    }

    pub(crate) fn bool(&self, at: u32) -> Option<bool> {
        self.0.get(at).as_bool()
    }

    pub(crate) fn number(&self, at: u32) -> Option<f64> {
        self.0.get(at).as_f64()
    }

    /// A whole number ≥ 0 (checked: at most 2^53 − 1).
    pub(crate) fn u64(&self, at: u32) -> Option<u64> {
        self.number(at).map(|n| n as u64)
    }

    /// A whole number ≥ 0 the spec bounds to `u32` (kind `u`).
    pub(crate) fn u32(&self, at: u32) -> Option<u32> {
        self.number(at).map(|n| n as u32)
    }

    /// An array of strings (kind `a`).
    fn strings(&self, at: u32) -> Option<Vec<String>> {
        let array: Array = self.value(at)?.unchecked_into();
        Some(array.iter().filter_map(|item| item.as_string()).collect())
    }

    /// An object of strings (kind `m`), as its `[name, text]` pairs.
    fn string_map(&self, at: u32) -> Option<BTreeMap<String, String>> {
        let pairs: Array = self.value(at)?.unchecked_into();
        let mut map = BTreeMap::new();
        for pair in pairs.iter() {
            let pair: Array = pair.unchecked_into();
            // `insert`, not `collect`: that would sort, linking a sort.
            map.insert(pair.get(0).as_string()?, pair.get(1).as_string()?);
        }
        Some(map)
    }
}

/// `publish(topic, payload, opts)` options: the `PUBLISH` frame's `opts`.
pub(crate) fn publish_opts(value: &JsValue) -> Result<PublishOpts, JsValue> {
    let opts = Values::read(
        value,
        "publish options",
        "headers:m key:s tags:a caused_by:a sid:s ts:n id:s",
    )?;
    Ok(PublishOpts {
        headers: opts.string_map(0),
        key: opts.string(1),
        tags: opts.strings(2),
        caused_by: opts.strings(3),
        sid: opts.string(4),
        ts: opts.u64(5),
        id: opts.string(6),
    })
}

/// `subscribe(pattern, group, handler, opts)` options: the `SUBSCRIBE`
/// frame's `opts`.
pub(crate) fn subscribe_opts(value: &JsValue) -> Result<SubscribeOpts, JsValue> {
    let opts = Values::read(
        value,
        "subscribe options",
        "from:F max_inflight:u ack_timeout_ms:n max_deliver:u snapshot:b",
    )?;
    let from = opts.value(0).map(|from| match from.as_string().as_deref() {
        Some("latest") => StartFrom::Latest,
        Some("earliest") => StartFrom::Earliest,
        _ => StartFrom::Seq(from.as_f64().unwrap_or_default() as u64),
    });
    Ok(SubscribeOpts {
        from,
        max_inflight: opts.u32(1),
        ack_timeout_ms: opts.u64(2),
        max_deliver: opts.u32(3),
        snapshot: opts.bool(4),
    })
}
