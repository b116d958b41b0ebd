//! `Subscription`: what `subscribe()` resolves with, and what a handler's
//! `ctx` acknowledges through.

use std::rc::{Rc, Weak};

use js_sys::Promise;
use promhub_core::client::{Delivered, SubscriptionId};
use wasm_bindgen::prelude::*;

use crate::bindings::{PENDING_UNSUBSCRIBE, now_ms};
use crate::convert::Fields;
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
            &mut promhub_core::ClientCore,
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
    /// themselves when they return), named by its `id` and `seq` (the hub
    /// settles only the delivery with that seq that this connection holds).
    /// `false` when it could not be sent (not connected, unsubscribed, or
    /// `seq` is not a seq): the hub then redelivers it.
    pub fn ack(&self, event_id: &str, seq: f64) -> bool {
        let Some(seq) = seq_from_js(seq) else {
            return false;
        };
        self.with_core(|core, now| core.ack(now, self.sub, Delivered { id: event_id, seq }))
    }

    /// Refuses an event of a durable group: redelivered after
    /// `opts.delay_ms` (or the group's backoff), or dead-lettered now with
    /// `opts.final`.
    pub fn nack(
        &self,
        event_id: &str,
        seq: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "string")] reason: Option<String>,
        #[wasm_bindgen(unchecked_optional_param_type = "NackOptions")] opts: Option<JsValue>,
    ) -> Result<bool, JsValue> {
        let opts = opts.unwrap_or(JsValue::UNDEFINED);
        let opts = Fields::new(&opts, "nack options", &["delay_ms", "final"])?;
        let delay_ms = opts.u64("delay_ms")?;
        let final_ = opts.bool("final")?.unwrap_or(false);
        let Some(seq) = seq_from_js(seq) else {
            return Ok(false);
        };
        Ok(self.with_core(|core, now| {
            core.nack(
                now,
                self.sub,
                Delivered { id: event_id, seq },
                reason,
                delay_ms,
                final_,
            )
        }))
    }

    /// Pushes the ack deadline of an event of a durable group back by the
    /// group's ack timeout, for handlers that take long.
    pub fn working(&self, event_id: &str, seq: f64) -> bool {
        let Some(seq) = seq_from_js(seq) else {
            return false;
        };
        self.with_core(|core, now| core.working(now, self.sub, Delivered { id: event_id, seq }))
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

/// An event's `seq` as JavaScript holds it (a number): a whole number
/// within the exactly representable range, else `None`.
fn seq_from_js(seq: f64) -> Option<u64> {
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    (seq.fract() == 0.0 && (0.0..=MAX_SAFE).contains(&seq)).then_some(seq as u64)
}
