// The JavaScript half of the promhub browser client: what is cheaper or only
// possible on the JS side of the boundary. Every EVENT passes through
// `deliverFrame` (one call per event), so it stays small and allocation-light.
// No protocol logic lives here: the Rust side (promhub-core's ClientCore)
// decides everything; this file calls handlers and listeners.

const MAX_REASON_CHARS = 1024;

/** The error type of every promhub failure: `code` says what happened. */
export class PromHubError extends Error {
  constructor(code, message, retryAfterMs) {
    super(message);
    this.name = "PromHubError";
    this.code = code;
    if (retryAfterMs !== undefined) this.retryAfterMs = retryAfterMs;
  }
}

export function makeError(code, message, retryAfterMs) {
  return new PromHubError(code, message, retryAfterMs);
}

/** The object `onState` listeners receive (absent fields left out). */
export function makeStateEvent(state, reason, code, attempt, delayMs, at, session, server, expiresAt) {
  const event = { state, reason };
  if (code !== undefined) event.code = code;
  if (attempt !== undefined) event.reconnect = { attempt, delayMs, at };
  if (session !== undefined) event.session = session;
  if (server !== undefined) event.server = server;
  if (expiresAt !== undefined) event.expiresAt = expiresAt;
  return event;
}

/** `PubAck`, as `publish()` resolves with it. */
export function makePubAck(rid, id, seq, duplicate) {
  const ack = { rid, id, seq };
  if (duplicate) ack.duplicate = true;
  return ack;
}

/** Human-readable text of anything thrown or rejected. */
export function describeError(error) {
  let text;
  if (error instanceof Error) text = error.message || error.name;
  else if (typeof error === "string") text = error;
  else {
    try {
      text = JSON.stringify(error) ?? String(error);
    } catch {
      text = String(error);
    }
  }
  return text.length > MAX_REASON_CHARS ? text.slice(0, MAX_REASON_CHARS) : text;
}

const isString = (value) => typeof value === "string";
const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
const isWhole = (value) => Number.isSafeInteger(value) && value >= 0;

/** What a value of each kind of option must be (see `readOptions`). */
const KINDS = {
  s: ["a string", isString],
  b: ["a boolean", (value) => typeof value === "boolean"],
  n: ["a whole number ≥ 0", isWhole],
  u: ["a whole number from 0 to 4294967295", (value) => isWhole(value) && value <= 0xffffffff],
  x: ["a finite number", Number.isFinite],
  f: ["a function", (value) => typeof value === "function"],
  a: ["an array of strings", (value) => Array.isArray(value) && value.every(isString)],
  m: ["an object of strings", (value) => isObject(value) && Object.values(value).every(isString)],
  o: ["an object", isObject],
  r: ["a boolean or an object", (value) => typeof value === "boolean" || isObject(value)],
  F: ['"latest", "earliest" or a seq number', (value) => value === "latest" || value === "earliest" || isWhole(value)],
  p: ['"wait" or "fail_fast"', (value) => value === "wait" || value === "fail_fast"],
  "*": ["anything", () => true],
};

/**
 * Checks an options object the application passed and returns its values
 * in the order of `spec` ("name:kind name:kind …", kinds in KINDS), absent
 * and null ones as undefined: the Rust side reads them by position, already
 * checked. `undefined`/`null` options are empty. Throws a bad_request
 * PromHubError for a key not in `spec` (a typo is an error, never a
 * silently ignored setting) or a value of the wrong kind.
 */
export function readOptions(value, what, spec) {
  const fields = spec.split(" ");
  const names = fields.map((field) => field.slice(0, -2));
  const values = new Array(fields.length);
  if (value === undefined || value === null) return values;
  if (!isObject(value)) throw new PromHubError("bad_request", `${what} must be an object`);
  for (const key of Object.keys(value)) {
    if (!names.includes(key)) {
      throw new PromHubError(
        "bad_request",
        `${what}: unknown field ${JSON.stringify(key)} (expected one of: ${names.join(", ")})`,
      );
    }
  }
  fields.forEach((field, at) => {
    const found = value[names[at]];
    if (found === undefined || found === null) return;
    const [expected, fits] = KINDS[field.at(-1)];
    if (!fits(found)) throw new PromHubError("bad_request", `${what}.${names[at]} must be ${expected}`);
    // An object of strings as its [name, text] pairs.
    values[at] = field.endsWith(":m") ? Object.entries(found) : found;
  });
  return values;
}

function isThenable(value) {
  return (
    value !== null &&
    (typeof value === "object" || typeof value === "function") &&
    typeof value.then === "function"
  );
}

/**
 * The `ctx` a handler receives: the delivery context of the EVENT frame
 * (`attempt`, `ack_deadline`, `snapshot`), the delivery's `tag`, a `gap`
 * the machine reported before this event, plus explicit acknowledgement.
 * The first of ack/nack wins; the automatic one after the handler settles
 * is skipped when the handler already chose. Whether an answer may go out
 * is the machine's call (promhub-core): false when it did not.
 */
class DeliveryContext {
  #eventId;
  #seq;
  #settled = false;

  constructor(subscription, eventId, seq, attempt, ackDeadline, snapshot, tag, gapFrom, gapTo) {
    this.subscription = subscription;
    this.attempt = attempt;
    if (ackDeadline !== undefined) this.ack_deadline = ackDeadline;
    if (snapshot) this.snapshot = true;
    this.tag = tag;
    if (gapFrom !== undefined) this.gap = { from: gapFrom, to: gapTo };
    this.#eventId = eventId;
    this.#seq = seq;
  }

  get settled() {
    return this.#settled;
  }

  ack() {
    if (this.#settled) return false;
    this.#settled = true;
    return this.subscription.ack(this.#eventId, this.#seq, this.tag);
  }

  nack(reason, opts) {
    if (this.#settled) return false;
    this.#settled = true;
    return this.subscription.nack(this.#eventId, this.#seq, this.tag, reason, opts);
  }

  working() {
    if (this.#settled) return false;
    return this.subscription.working(this.#eventId, this.#seq, this.tag);
  }
}

/**
 * Listener sets, subscription handlers, pending promises and the per-event
 * dispatch.
 */
export class Runtime {
  constructor() {
    this.stateListeners = new Set();
    this.errorListeners = new Set();
    /** subscription id → { handler, subscription, durable } */
    this.subscriptions = new Map();
    /** Pending promises by kind (PENDING_*), then by request or subscription id. */
    this.pending = [new Map(), new Map(), new Map()];
    /** `connect()` promises, settled together. */
    this.connectWaiters = [];
  }

  /** A new promise, settled later by `settle(kind, id, …)`. */
  track(kind, id) {
    return new Promise((resolve, reject) => {
      this.pending[kind].set(id, { resolve, reject });
    });
  }

  /** Settles the promise of (kind, id), if one is pending. */
  settle(kind, id, ok, value) {
    const map = this.pending[kind];
    const entry = map.get(id);
    if (entry === undefined) return false;
    map.delete(id);
    if (ok) entry.resolve(value);
    else entry.reject(value);
    return true;
  }

  waitConnected() {
    return new Promise((resolve, reject) => {
      this.connectWaiters.push({ resolve, reject });
    });
  }

  hasConnectWaiters() {
    return this.connectWaiters.length > 0;
  }

  settleConnected(ok, value) {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const waiter of waiters) {
      if (ok) waiter.resolve(value);
      else waiter.reject(value);
    }
  }

  register(id, handler, subscription, durable) {
    this.subscriptions.set(id, { handler, subscription, durable });
  }

  unregister(id) {
    this.subscriptions.delete(id);
  }

  subscription(id) {
    return this.subscriptions.get(id)?.subscription;
  }

  onState(listener) {
    return listen(this.stateListeners, listener);
  }

  onError(listener) {
    return listen(this.errorListeners, listener);
  }

  emitState(event) {
    for (const listener of this.stateListeners) callListener(listener, event);
  }

  /** A resubscribe the hub refused: the application holds a subscription that is gone. */
  subscriptionLost(id, failure) {
    const topic = this.subscription(id)?.topic ?? `subscription ${id}`;
    const lost = new PromHubError("subscription_lost", `subscription to ${topic} lost on resubscribe: ${failure.message}`);
    lost.cause = failure;
    this.emitError(lost, false);
  }

  /** `quiet`: nobody listening is fine (no console fallback). */
  emitError(error, quiet) {
    if (this.errorListeners.size === 0) {
      if (!quiet) console.error("promhub:", error);
      return;
    }
    for (const listener of this.errorListeners) callListener(listener, error);
  }

  /**
   * Hands one event to its subscription's handler, from the EVENT frame it
   * arrived in as JSON.parse made it (the value the Rust side decoded,
   * checked and routed: the event and its payload are passed on as they
   * are).
   */
  deliverFrame(id, frame, tag, gapFrom, gapTo) {
    const entry = this.subscriptions.get(id);
    if (entry === undefined) return;
    const ctx = frame.ctx;
    const context = new DeliveryContext(
      entry.subscription,
      frame.event.id,
      frame.event.seq,
      ctx.attempt,
      ctx.ack_deadline,
      ctx.snapshot === true,
      tag,
      gapFrom,
      gapTo,
    );
    this.#run(entry, frame.event, context);
  }

  /**
   * Durable groups: ACK when the handler returns or its promise resolves,
   * NACK with the error text when it throws or rejects. Ephemeral
   * subscriptions have nothing to acknowledge; a failing handler is
   * reported to the error listeners.
   */
  #run(entry, event, ctx) {
    let result;
    try {
      result = entry.handler(event, ctx);
    } catch (error) {
      this.#handlerFailed(entry, ctx, error);
      return;
    }
    if (isThenable(result)) {
      result.then(
        () => {
          if (entry.durable) ctx.ack();
        },
        (error) => this.#handlerFailed(entry, ctx, error),
      );
    } else if (entry.durable) {
      ctx.ack();
    }
  }

  #handlerFailed(entry, ctx, error) {
    if (entry.durable) {
      ctx.nack(describeError(error));
      return;
    }
    const failure = new PromHubError(
      "handler_failed",
      `handler for ${entry.subscription.topic} failed: ${describeError(error)}`,
    );
    failure.cause = error;
    this.emitError(failure, false);
  }
}

function listen(set, listener) {
  if (typeof listener !== "function") {
    throw new PromHubError("bad_request", "listener must be a function");
  }
  set.add(listener);
  return () => {
    set.delete(listener);
  };
}

function callListener(listener, value) {
  try {
    listener(value);
  } catch (error) {
    console.error("promhub: listener failed:", error);
  }
}

/**
 * The absolute ws:/wss: URL of the hub: a path (`/ws`) or an http(s) URL is
 * resolved against the page, the way `fetch` resolves it.
 */
export function hubUrls(urls) {
  const list = Array.isArray(urls) ? urls : [urls];
  if (list.length === 0) throw new PromHubError("bad_request", "no hub URL given");
  return list.map(hubUrl);
}

function hubUrl(url) {
  const quoted = JSON.stringify(url);
  let parsed;
  try {
    parsed = new URL(url, globalThis.location?.href);
  } catch {
    throw new PromHubError("bad_request", `invalid hub URL ${quoted}`);
  }
  const scheme = parsed.protocol;
  if (scheme === "http:" || scheme === "https:") parsed.protocol = scheme === "http:" ? "ws:" : "wss:";
  else if (scheme !== "ws:" && scheme !== "wss:") {
    throw new PromHubError("bad_request", `hub URL ${quoted} has scheme ${scheme}; expected ws:, wss:, http: or https:`);
  }
  return parsed.href;
}

/**
 * The WebSocket constructor of a new client: `option`, else the global one.
 * Node.js 20 and 21 have no global WebSocket (the package's Node.js entry
 * passes the `ws` package's, when it is installed).
 */
export function webSocketConstructor(option) {
  const WebSocket = option ?? globalThis.WebSocket;
  if (typeof WebSocket === "function") return WebSocket;
  throw new PromHubError(
    "bad_request",
    option === undefined
      ? "this runtime has no global WebSocket: pass options.WebSocket (on Node.js 20 and 21, install the `ws` package, which promhub then uses)"
      : "options.WebSocket must be a WebSocket constructor",
  );
}

/**
 * Opens a socket to `url` with `WebSocket` (the constructor the client was
 * given) and routes its events to the client's callback, with the socket:
 * `onevent(0, socket)` when it opens, `(1, socket, data)` for a message,
 * `(2, socket, closeEvent)` when it closes.
 */
export function openSocket(WebSocket, urls, index, onevent) {
  const url = urls[index];
  let socket;
  try {
    socket = new WebSocket(url);
  } catch (error) {
    throw new Error(`cannot open a WebSocket to ${url}: ${describeError(error)}`);
  }
  socket.onopen = () => onevent(0, socket);
  socket.onmessage = (event) => onevent(1, socket, event.data);
  socket.onclose = (event) => onevent(2, socket, event);
  // A close event follows every error. `ws` (Node.js) throws an error event
  // that nobody listens to, so one listener stays for the socket's life.
  socket.onerror = ignore;
  return socket;
}

/** Stops routing a socket's events to the client, then closes it. */
export function closeSocket(socket, code, reason) {
  socket.onopen = socket.onmessage = socket.onclose = null;
  try {
    socket.close(code, reason);
  } catch {
    // Refused code or reason (e.g. over 123 bytes): close without them.
    socket.close();
  }
}

function ignore() {}

/** The client's timer: `onevent(3)` after `delayMs`. */
export function setTimer(onevent, delayMs) {
  return setTimeout(onevent, delayMs, 3);
}

/**
 * Calls the application's token source and reports the outcome once, as
 * `onevent(4, token, undefined)` or `onevent(4, undefined, message)`.
 * Accepts a string, null/undefined (anonymous), or a promise of one.
 */
export function fetchToken(source, onevent) {
  const done = (token, failure) => onevent(4, token, failure);
  let result;
  try {
    result = source();
  } catch (error) {
    done(undefined, describeError(error));
    return;
  }
  Promise.resolve(result).then(
    (token) => {
      if (token === undefined || token === null) done(undefined, undefined);
      else if (typeof token === "string") done(token, undefined);
      else done(undefined, `getToken returned ${typeof token}; expected a string or null`);
    },
    (error) => done(undefined, describeError(error)),
  );
}
