//! Reading option objects from JavaScript, field by field.
//!
//! Hand-written rather than serde-derived on purpose: a derived
//! `Deserialize` costs a few KiB of wasm per struct, and the bundle has a
//! size budget. Unknown keys are refused, so a typo (or a field a newer
//! core added and this reader does not know yet) is an error, never a
//! silently ignored setting.

use std::collections::BTreeMap;

use js_sys::{Array, Object, Reflect};
use promhub_core::frames::{PublishOpts, StartFrom, SubscribeOpts};
use promhub_core::quoted::Quoted;
use wasm_bindgen::{JsCast, JsValue};

use crate::errors::bad_request;

/// The largest integer a JS number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// An options object: `undefined`/`null` reads as empty.
pub(crate) struct Fields<'a> {
    object: Option<&'a JsValue>,
    what: &'static str,
}

impl<'a> Fields<'a> {
    /// Checks that `value` is absent or an object with only `allowed` keys.
    pub(crate) fn new(
        value: &'a JsValue,
        what: &'static str,
        allowed: &[&str],
    ) -> Result<Self, JsValue> {
        if value.is_undefined() || value.is_null() {
            return Ok(Fields { object: None, what });
        }
        let Some(object) = value.dyn_ref::<Object>() else {
            return Err(bad_request(format!("{what} must be an object")));
        };
        for key in Object::keys(object) {
            let key = key.as_string().unwrap_or_default();
            if !allowed.contains(&key.as_str()) {
                return Err(bad_request(format!(
                    "{what}: unknown field {} (expected one of: {})",
                    Quoted(&key),
                    allowed.join(", ")
                )));
            }
        }
        Ok(Fields {
            object: Some(value),
            what,
        })
    }

    /// The raw value of `key`; `None` when absent, `undefined` or `null`.
    pub(crate) fn value(&self, key: &str) -> Option<JsValue> {
        let value = Reflect::get(self.object?, &JsValue::from_str(key)).ok()?;
        (!value.is_undefined() && !value.is_null()).then_some(value)
    }

    fn invalid(&self, key: &str, expected: &str) -> JsValue {
        bad_request(format!("{}.{key} must be {expected}", self.what))
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<String>, JsValue> {
        self.value(key)
            .map(|v| v.as_string().ok_or_else(|| self.invalid(key, "a string")))
            .transpose()
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, JsValue> {
        self.value(key)
            .map(|v| v.as_bool().ok_or_else(|| self.invalid(key, "a boolean")))
            .transpose()
    }

    pub(crate) fn number(&self, key: &str) -> Result<Option<f64>, JsValue> {
        self.value(key)
            .map(|v| {
                v.as_f64()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| self.invalid(key, "a finite number"))
            })
            .transpose()
    }

    /// A whole number in `0..=Number.MAX_SAFE_INTEGER`.
    pub(crate) fn u64(&self, key: &str) -> Result<Option<u64>, JsValue> {
        self.value(key)
            .map(|v| {
                v.as_f64()
                    .filter(|n| (0.0..=MAX_SAFE_INTEGER).contains(n) && n.fract() == 0.0)
                    .map(|n| n as u64)
                    .ok_or_else(|| self.invalid(key, "a whole number ≥ 0"))
            })
            .transpose()
    }

    pub(crate) fn u32(&self, key: &str) -> Result<Option<u32>, JsValue> {
        self.u64(key)?
            .map(|n| u32::try_from(n).map_err(|_| self.invalid(key, "at most 4294967295")))
            .transpose()
    }

    pub(crate) fn strings(&self, key: &str) -> Result<Option<Vec<String>>, JsValue> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        let Some(array) = value.dyn_ref::<Array>() else {
            return Err(self.invalid(key, "an array of strings"));
        };
        array
            .iter()
            .map(|item| {
                item.as_string()
                    .ok_or_else(|| self.invalid(key, "an array of strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub(crate) fn string_map(
        &self,
        key: &str,
    ) -> Result<Option<BTreeMap<String, String>>, JsValue> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        let Some(object) = value.dyn_ref::<Object>() else {
            return Err(self.invalid(key, "an object of strings"));
        };
        let mut map = BTreeMap::new();
        for entry in Object::entries(object) {
            let entry: Array = entry.unchecked_into();
            let (Some(name), Some(text)) = (entry.get(0).as_string(), entry.get(1).as_string())
            else {
                return Err(self.invalid(key, "an object of strings"));
            };
            map.insert(name, text);
        }
        Ok(Some(map))
    }
}

/// `publish(topic, payload, opts)` options: the `PUBLISH` frame's `opts`.
pub(crate) fn publish_opts(value: &JsValue) -> Result<PublishOpts, JsValue> {
    let fields = Fields::new(
        value,
        "publish options",
        &["headers", "key", "tags", "caused_by", "sid", "ts", "id"],
    )?;
    Ok(PublishOpts {
        headers: fields.string_map("headers")?,
        key: fields.string("key")?,
        tags: fields.strings("tags")?,
        caused_by: fields.strings("caused_by")?,
        sid: fields.string("sid")?,
        ts: fields.u64("ts")?,
        id: fields.string("id")?,
    })
}

/// `subscribe(pattern, group, handler, opts)` options: the `SUBSCRIBE`
/// frame's `opts`.
pub(crate) fn subscribe_opts(value: &JsValue) -> Result<SubscribeOpts, JsValue> {
    let fields = Fields::new(
        value,
        "subscribe options",
        &[
            "from",
            "max_inflight",
            "ack_timeout_ms",
            "max_deliver",
            "snapshot",
        ],
    )?;
    let from = match fields.value("from") {
        None => None,
        Some(from) => Some(match from.as_string().as_deref() {
            Some("latest") => StartFrom::Latest,
            Some("earliest") => StartFrom::Earliest,
            _ => StartFrom::Seq(fields.u64("from").map_err(|_| {
                bad_request("subscribe options.from must be \"latest\", \"earliest\" or a seq number")
            })?.unwrap_or_default()),
        }),
    };
    Ok(SubscribeOpts {
        from,
        max_inflight: fields.u32("max_inflight")?,
        ack_timeout_ms: fields.u64("ack_timeout_ms")?,
        max_deliver: fields.u32("max_deliver")?,
        snapshot: fields.bool("snapshot")?,
    })
}
