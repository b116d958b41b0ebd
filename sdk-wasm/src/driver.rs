//! The driver: moves bytes and time between a `WebSocket` (made by the
//! constructor the client was given), one `setTimeout` timer and
//! [`ClientCore`], following the contract in
//! `promhub_core::client`: feed an input with the current time, then
//! execute every `Transmit`, hand every `ClientEvent` on, and re-arm the
//! timer at `poll_timeout()`.
//!
//! JavaScript code (handlers, listeners, promise callbacks) may call back
//! into the client at any moment, so the state lives in a `RefCell` that is
//! never borrowed while JavaScript runs. Events are handed out one at a
//! time by the outermost [`Shared::drive`]; a nested call (e.g. a handler
//! that acknowledges or publishes) only executes transmits, so events reach
//! the application in the order the machine produced them.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use js_sys::{Array, Function};
use promhub_core::client::{ClientCore, ConnectionState, SubscriptionId, Transmit};
use promhub_core::frames::js::{self, Js};
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, WebSocket};

use crate::bindings::{self, PENDING_SUBSCRIBE, Runtime, clear_timeout, now_ms, unix_ms};
use crate::options::Options;

/// Close codes a browser reports for a connection that ended without a
/// close frame (1006) or with one that carried no code (1005).
const ABNORMAL_CLOSURE: u16 = 1006;
const NO_STATUS: u16 = 1005;
/// What the client's callback is called for (`js/runtime.js` calls it
/// with these numbers).
const SOCKET_OPEN: u32 = 0;
const SOCKET_MESSAGE: u32 = 1;
const SOCKET_CLOSE: u32 = 2;
const TIMER: u32 = 3;
/// `setTimeout` takes a signed 32-bit delay.
const MAX_TIMER_DELAY_MS: u64 = i32::MAX as u64;

#[derive(Debug)]
struct Timer {
    deadline: u64,
    handle: JsValue,
}

/// Everything mutable. Only borrowed for short stretches with no
/// JavaScript callback inside.
#[derive(Debug)]
pub(crate) struct Driver {
    /// Writes frames with the browser codec; frames are read from the
    /// values `JSON.parse` makes, payloads left there.
    pub(crate) core: ClientCore<Js>,
    /// The hubs' URLs; the core says which one each attempt goes to.
    urls: Array,
    /// Makes the sockets: `options.WebSocket` or the global `WebSocket`.
    websocket: Function,
    socket: Option<WebSocket>,
    timer: Option<Timer>,
    /// Subscriptions whose `subscribe()` promise waits for the first
    /// `SUBACK` (the promises themselves are kept by the runtime).
    pub(crate) unconfirmed: Vec<SubscriptionId>,
    /// The application's token source; the machine says when to call it.
    pub(crate) get_token: Option<Function>,
    /// Why the client last entered `closed`, for promises that end there.
    pub(crate) last_close_reason: String,
}

/// The one JS callback of a client, made once and shared by every socket,
/// timer and token fetch: `(kind, a, b)` with the kind of what happened
/// ([`SOCKET_OPEN`], …) and its values. It holds a weak reference: the
/// client is owned by its JS object alone.
#[derive(Debug)]
struct Callbacks {
    event: Closure<dyn Fn(u32, JsValue, JsValue)>,
}

impl Callbacks {
    fn new(weak: &Weak<Shared>) -> Callbacks {
        let weak = weak.clone();
        Callbacks {
            event: Closure::new(move |kind: u32, a: JsValue, b: JsValue| {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                // Socket events: `(kind, socket, data or close event)`.
                match kind {
                    SOCKET_OPEN => shared.on_socket_open(&a),
                    SOCKET_MESSAGE => shared.on_socket_message(&a, b),
                    SOCKET_CLOSE => shared.on_socket_close(&a, b.unchecked_into()),
                    TIMER => shared.on_timer(),
                    // TOKEN: `(token, undefined)` or `(undefined, message)`.
                    _ => match b.as_string() {
                        Some(message) => shared.on_token_failed(message),
                        None => shared.on_token(a.as_string()),
                    },
                }
            }),
        }
    }
}

/// One client: its state, its JS runtime and its callbacks.
#[derive(Debug)]
pub(crate) struct Shared {
    // Dropped first: closes the socket and clears the timer before the
    // callbacks they point to go away.
    pub(crate) driver: RefCell<Driver>,
    pub(crate) runtime: Runtime,
    dispatching: Cell<bool>,
    /// The frame being handled, as `JSON.parse` made it, while its events
    /// are handed out: an EVENT frame yields at most one delivery, and its
    /// handler gets the event and its payload from this value.
    pub(crate) current_frame: RefCell<Option<JsValue>>,
    callbacks: Callbacks,
}

impl Shared {
    pub(crate) fn new(urls: Array, options: Options) -> Rc<Shared> {
        let mut core = ClientCore::with_codec(options.config);
        core.set_unix_time(now_ms(), unix_ms());
        Rc::new_cyclic(|weak| Shared {
            driver: RefCell::new(Driver {
                core,
                urls,
                websocket: options.websocket,
                socket: None,
                timer: None,
                unconfirmed: Vec::new(),
                get_token: options.get_token,
                last_close_reason: String::new(),
            }),
            runtime: Runtime::new(),
            dispatching: Cell::new(false),
            current_frame: RefCell::new(None),
            callbacks: Callbacks::new(weak),
        })
    }

    /// Runs the machine's outputs after an input: transmits, then events
    /// (outermost call only), then the timer.
    pub(crate) fn drive(self: &Rc<Self>) {
        self.flush_transmits();
        if self.dispatch_events() {
            self.settle_if_stopped();
        }
        self.arm_timer();
    }

    /// Hands every queued event out, one at a time; `false` (and nothing
    /// done) when called from inside an event callback, where the outer
    /// loop hands them out, in order.
    fn dispatch_events(self: &Rc<Self>) -> bool {
        if self.dispatching.replace(true) {
            return false;
        }
        loop {
            let event = self.driver.borrow_mut().core.poll_event();
            let Some(event) = event else { break };
            self.dispatch(event);
            self.flush_transmits();
        }
        self.dispatching.set(false);
        true
    }

    fn flush_transmits(&self) {
        loop {
            // `getToken` is application code: called with nothing borrowed.
            let fetch_from = {
                let mut driver = self.driver.borrow_mut();
                let mut fetch_from = None;
                while let Some(transmit) = driver.core.poll_transmit() {
                    match transmit {
                        Transmit::Connect => driver.open_socket(&self.callbacks),
                        Transmit::Text(text) => driver.send(&text),
                        Transmit::Close { code, reason } => {
                            if let Some(socket) = driver.socket.take() {
                                bindings::close_socket(&socket, code, &reason);
                            }
                        }
                        Transmit::FetchToken => {
                            fetch_from = Some(driver.get_token.clone());
                            break;
                        }
                    }
                }
                fetch_from
            };
            match fetch_from {
                None => return,
                Some(Some(source)) => bindings::fetch_token(&source, self.callbacks.event.as_ref()),
                Some(None) => self
                    .driver
                    .borrow_mut()
                    .core
                    .handle_token_error(now_ms(), "no getToken option"),
            }
        }
    }

    /// Arms the one timer for the earliest deadline. A timer that fires
    /// early is harmless (the machine ignores early timeouts), so a later
    /// deadline keeps the armed timer: no `clearTimeout`/`setTimeout` pair
    /// for every frame that moves the heartbeat deadline.
    fn arm_timer(&self) {
        let mut driver = self.driver.borrow_mut();
        let Some(deadline) = driver.core.poll_timeout() else {
            // Nothing to wait for (closed): no timer left behind, which on
            // Node.js would keep the process alive until it fired.
            if let Some(timer) = driver.timer.take() {
                clear_timeout(&timer.handle);
            }
            return;
        };
        if let Some(timer) = &driver.timer {
            if timer.deadline <= deadline {
                return;
            }
            clear_timeout(&timer.handle);
        }
        // +1: `now_ms` rounds down, so a timer set for exactly the
        // remaining whole ms could fire a fraction of a ms early.
        let delay = deadline
            .saturating_sub(now_ms())
            .saturating_add(1)
            .min(MAX_TIMER_DELAY_MS);
        let handle = bindings::set_timer(self.callbacks.event.as_ref(), delay as f64);
        driver.timer = Some(Timer { deadline, handle });
    }

    fn on_timer(self: &Rc<Self>) {
        {
            let mut driver = self.driver.borrow_mut();
            driver.timer = None;
            driver.core.handle_timeout(now_ms());
        }
        self.drive();
    }

    // ------------------------------------------------------------------
    // Socket events

    fn on_socket_open(self: &Rc<Self>, socket: &JsValue) {
        {
            let mut driver = self.driver.borrow_mut();
            if !driver.is_current(socket) {
                return;
            }
            driver.core.handle_socket_open(now_ms());
        }
        self.drive();
    }

    fn on_socket_message(self: &Rc<Self>, socket: &JsValue, data: JsValue) {
        let parsed = {
            let mut driver = self.driver.borrow_mut();
            if !driver.is_current(socket) {
                return;
            }
            if !data.is_string() {
                drop(driver);
                let error = crate::errors::error(
                    "protocol_error",
                    "binary WebSocket message from the hub ignored (the protocol uses text frames)",
                );
                self.runtime.emit_error(&error, false);
                return;
            }
            // Parsed once, by the engine's JSON.parse; read from there.
            let (parsed, frame) = js::decode_hub_frame(&data);
            driver.core.handle_frame(now_ms(), frame);
            parsed
        };
        // Events queued before this frame were all handed out by earlier
        // drives; any delivery now comes from this frame.
        let outer = self.current_frame.replace(Some(parsed));
        self.drive();
        self.current_frame.replace(outer);
    }

    fn on_socket_close(self: &Rc<Self>, socket: &JsValue, event: CloseEvent) {
        {
            let mut driver = self.driver.borrow_mut();
            if !driver.is_current(socket) {
                return;
            }
            if let Some(socket) = driver.socket.take() {
                // Closed already: this only stops its callbacks.
                bindings::close_socket(&socket, promhub_core::client::close_code::NORMAL, "");
            }
            let now = now_ms();
            match event.code() {
                ABNORMAL_CLOSURE => driver.core.handle_socket_error(
                    now,
                    "connection failed or lost without a close frame (1006)",
                ),
                NO_STATUS => driver.core.handle_socket_closed(now, None, &event.reason()),
                code => driver
                    .core
                    .handle_socket_closed(now, Some(code), &event.reason()),
            }
        }
        self.drive();
    }

    // ------------------------------------------------------------------
    // Tokens: the machine asks (`Transmit::FetchToken`) and retries.

    fn on_token(self: &Rc<Self>, token: Option<String>) {
        self.driver.borrow_mut().core.handle_token(now_ms(), token);
        self.drive();
    }

    fn on_token_failed(self: &Rc<Self>, message: String) {
        self.driver
            .borrow_mut()
            .core
            .handle_token_error(now_ms(), &message);
        self.drive();
    }

    // ------------------------------------------------------------------
    // Promises that end when the client stops

    /// Once the client is `closed` for good (no token on its way that
    /// would reconnect it), `connect()` promises and subscriptions the hub
    /// never confirmed fail with the reason.
    fn settle_if_stopped(self: &Rc<Self>) {
        let (unconfirmed, reason) = {
            let mut driver = self.driver.borrow_mut();
            if driver.core.state() != ConnectionState::Closed || driver.core.waiting_for_token() {
                return;
            }
            if driver.unconfirmed.is_empty() && !self.runtime.has_connect_waiters() {
                return;
            }
            (
                std::mem::take(&mut driver.unconfirmed),
                driver.last_close_reason.clone(),
            )
        };
        let error = crate::errors::error("closed", &format!("client closed: {reason}"));
        self.runtime.settle_connected(false, &error);
        for sub in unconfirmed {
            self.forget_subscription(sub);
            self.runtime
                .settle(PENDING_SUBSCRIBE, sub.as_u64() as f64, false, &error);
        }
        // Forgetting subscriptions queued events (no new settling needed).
        self.dispatch_events();
    }

    /// Drops a subscription the application never received.
    fn forget_subscription(&self, sub: SubscriptionId) {
        self.runtime.unregister(sub.as_u64() as f64);
        let _ = self.driver.borrow_mut().core.unsubscribe(now_ms(), sub);
    }
}

impl Driver {
    fn open_socket(&mut self, callbacks: &Callbacks) {
        let now = now_ms();
        // Correct for wall-clock jumps before the hub's `expires_at` is
        // placed on the monotonic clock.
        self.core.set_unix_time(now, unix_ms());
        if let Some(old) = self.socket.take() {
            bindings::close_socket(&old, promhub_core::client::close_code::NORMAL, "replaced");
        }
        let endpoint = self.core.endpoint() as u32;
        let events = callbacks.event.as_ref();
        match bindings::open_socket(&self.websocket, &self.urls, endpoint, events) {
            Ok(socket) => self.socket = Some(socket),
            // The error names the URL (runtime.js).
            Err(error) => self
                .core
                .handle_socket_error(now, &bindings::describe_error(&error)),
        }
    }

    fn send(&mut self, text: &str) {
        let Some(socket) = &self.socket else {
            return;
        };
        if let Err(error) = socket.send_with_str(text) {
            let message = format!(
                "WebSocket send failed: {}",
                bindings::describe_error(&error)
            );
            if let Some(socket) = self.socket.take() {
                bindings::close_socket(
                    &socket,
                    promhub_core::client::close_code::NORMAL,
                    "send failed",
                );
            }
            self.core.handle_socket_error(now_ms(), &message);
        }
    }

    /// Is an event of `socket` one of the socket the machine currently
    /// knows? Events of an abandoned socket are dropped (the driver
    /// contract).
    fn is_current(&self, socket: &JsValue) -> bool {
        self.socket
            .as_ref()
            .is_some_and(|current| *AsRef::<JsValue>::as_ref(current) == *socket)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            clear_timeout(&timer.handle);
        }
        if let Some(socket) = self.socket.take() {
            bindings::close_socket(
                &socket,
                promhub_core::client::close_code::NORMAL,
                "client dropped",
            );
        }
    }
}
