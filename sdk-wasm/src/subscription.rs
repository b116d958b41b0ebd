//! `Subscription`: what `subscribe()` resolves with, and what a handler's
//! `ctx` acknowledges through.

use std::rc::{Rc, Weak};

use js_sys::Promise;
use promhub_core::client::{Delivered, DeliveryTag, SubscriptionId};
use promhub_core::frames::js::Js;
use wasm_bindgen::prelude::*;

use crate::bindings::{PENDING_UNSUBSCRIBE, now_ms};
use crate::convert::Values;
use crate::driver::Shared;

/// One subscription (a pattern, and a group for durable ones). It lives
/// across reconnects until `unsubscribe()`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Subscription {
    // Weak: a subscription does not keep its client alive.
    shared: Weak<Shared>,
    sub: SubscriptionId,
    topic: String,
    group: Option<String>,
}

impl Subscription {
    pub(crate) fn new(
        shared: Weak<Shared>,
        sub: SubscriptionId,
        topic: String,
        group: Option<String>,
    ) -> Self {
        Subscription {
            shared,
            sub,
            topic,
            group,
        }
    }

    /// Runs `f` on the machine and then drives it; `false` when the client
    /// is gone or `f` refused.
    fn with_core(
        &self,
        f: impl FnOnce(
            &mut promhub_core::ClientCore<Js>,
            u64,
        ) -> Result<(), promhub_core::client::ClientError>,
    ) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let result = f(&mut shared.driver.borrow_mut().core, now_ms());
        shared.drive();
        result.is_ok()
    }
}

#[wasm_bindgen]
impl Subscription {
    /// The pattern, as subscribed.
    #[wasm_bindgen(getter)]
    pub fn topic(&self) -> String {
        self.topic.clone()
    }

    /// The consumer group, or `undefined` for a live (ephemeral)
    /// subscription.
    #[wasm_bindgen(getter)]
    pub fn group(&self) -> Option<String> {
        self.group.clone()
    }

    /// Acknowledges an event of a durable group (handlers do this
    /// themselves when they return, and `ctx.ack()` is the usual way),
    /// named by its `id`, `seq` and the delivery's `tag` (`ctx.tag`).
    /// `false` when it was not sent — not connected, unsubscribed, or a
    /// delivery the current connection does not hold (it came on a
    /// connection that has closed, was answered already, or was delivered
    /// again since): the hub then redelivers the event if it must.
    pub fn ack(&self, event_id: &str, seq: f64, tag: f64) -> bool {
        let Some(delivered) = delivered(event_id, seq, tag) else {
            return false;
        };
        self.with_core(|core, now| core.ack(now, self.sub, delivered))
    }

    /// Refuses an event of a durable group: redelivered after
    /// `opts.delay_ms` (or the group's backoff), or dead-lettered now with
    /// `opts.final`.
    pub fn nack(
        &self,
        event_id: &str,
        seq: f64,
        tag: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "string")] reason: Option<String>,
        #[wasm_bindgen(unchecked_optional_param_type = "NackOptions")] opts: Option<JsValue>,
    ) -> Result<bool, JsValue> {
        let opts = opts.unwrap_or(JsValue::UNDEFINED);
        let opts = Values::read(&opts, "nack options", "delay_ms:n final:b")?;
        let delay_ms = opts.u64(0);
        let final_ = opts.bool(1).unwrap_or(false);
        let Some(delivered) = delivered(event_id, seq, tag) else {
            return Ok(false);
        };
        Ok(self
            .with_core(|core, now| core.nack(now, self.sub, delivered, reason, delay_ms, final_)))
    }

    /// Pushes the ack deadline of an event of a durable group back by the
    /// group's ack timeout, for handlers that take long.
    pub fn working(&self, event_id: &str, seq: f64, tag: f64) -> bool {
        let Some(delivered) = delivered(event_id, seq, tag) else {
            return false;
        };
        self.with_core(|core, now| core.working(now, self.sub, delivered))
    }

    /// Stops the subscription: its handler gets no more events at once.
    /// Resolves when the hub confirmed (at once when not connected, or when
    /// it was already gone).
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn unsubscribe(&self) -> Promise {
        let Some(shared) = self.shared.upgrade() else {
            return Promise::resolve(&JsValue::UNDEFINED);
        };
        unsubscribe(&shared, self.sub)
    }
}

fn unsubscribe(shared: &Rc<Shared>, sub: SubscriptionId) -> Promise {
    let id = sub.as_u64() as f64;
    if shared
        .driver
        .borrow_mut()
        .core
        .unsubscribe(now_ms(), sub)
        .is_err()
    {
        // Already gone (unsubscribed, or refused on a resubscribe).
        return Promise::resolve(&JsValue::UNDEFINED);
    }
    let promise = shared.runtime.track(PENDING_UNSUBSCRIBE, id);
    shared.runtime.unregister(id);
    shared.drive();
    promise
}

/// The delivery an answer names, from JavaScript numbers: `None` unless
/// `seq` and `tag` are whole numbers within the exactly representable
/// range.
fn delivered(id: &str, seq: f64, tag: f64) -> Option<Delivered<'_>> {
    Some(Delivered {
        id,
        seq: u64_from_js(seq)?,
        tag: DeliveryTag::from_u64(u64_from_js(tag)?),
    })
}

fn u64_from_js(value: f64) -> Option<u64> {
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    (value.fract() == 0.0 && (0.0..=MAX_SAFE).contains(&value)).then_some(value as u64)
}
