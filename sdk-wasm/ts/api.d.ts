// ---------------------------------------------------------------------------
// promhub browser client: the typed API (appended to the generated
// declarations by wasm-bindgen; see sdk-wasm/src/lib.rs).
//
// Names that mirror a wire frame keep the protocol's spelling (`caused_by`,
// `max_inflight`, `delay_ms`); the client's own options are camelCase.

/** Where the connection stands. */
export type ConnectionState =
  | "disconnected"
  | "connecting"
  | "authenticating"
  | "connected"
  | "closed";

/** Automatic reconnection: exponential backoff with jitter. */
export interface ReconnectOptions {
  /** First delay (the jitter spreads it over [min/2, min]). Default 250. */
  minDelayMs?: number;
  /** Largest delay. Default 30000. */
  maxDelayMs?: number;
  /** Growth per attempt (≥ 1). Default 2. */
  multiplier?: number;
  /** Stop (state `closed`) after this many failed attempts in a row. Default: never. */
  maxAttempts?: number;
}

/** What `getToken` may return. */
export type TokenResult = string | null | undefined;

/** Options of `new PromClient(url, options)`. */
export interface ClientOptions {
  /** JWT for `AUTH`; absent means anonymous (or ask `getToken`). */
  token?: string | null;
  /**
   * Where fresh tokens come from: called before every connection attempt
   * (unless a token arrived since the last one: `token`, `setToken`, or an
   * earlier answer), before the token expires (`tokenRefreshMarginMs`), on
   * the hub's `EXPIRING`, and after the hub refused a token. A failure is
   * reported to `onError` (`token_failed`) and retried: a connection
   * attempt that waited for the token is given up and retried with the
   * reconnect backoff; a refresh is asked again after that same jittered
   * backoff.
   */
  getToken?: () => TokenResult | Promise<TokenResult>;
  /** `false`: never reconnect on its own. Default: on, with the defaults below. */
  reconnect?: boolean | ReconnectOptions;
  /** How long a publish, subscribe or AUTH may wait for its answer. Default 10000. */
  requestTimeoutMs?: number;
  /** How long opening the socket may take. Default 10000. */
  connectTimeoutMs?: number;
  /** PING after this long without sending; 0 turns it off. Default: the hub's value. */
  heartbeatMs?: number;
  /** After a heartbeat PING, give up on the connection after this long. Default 10000. */
  pongTimeoutMs?: number;
  /** Ask `getToken` this long before the token expires. Default 30000. */
  tokenRefreshMarginMs?: number;
  /** Publishes held while not connected. Default: wait, up to 1024. */
  queue?: { capacity?: number; policy?: "wait" | "fail_fast" };
  /** Sent in `AUTH.client`. Default `promhub-wasm/VERSION`. */
  clientName?: string;
  /** Seed of the reconnect jitter (tests). Default: random. */
  seed?: number;
  /**
   * The WebSocket constructor the client opens its sockets with, e.g.
   * `WebSocket` from the `ws` package. Default: the global `WebSocket`;
   * on Node.js 20 and 21, which have none, the `ws` package when it is
   * installed. Without either, `new PromClient` throws a `bad_request`
   * `PromHubError` that names this option.
   */
  WebSocket?: WebSocketConstructor;
}

/**
 * What the client needs of a WebSocket constructor: the browser's, Node.js
 * 22's global one and the `ws` package's all fit. Text frames must arrive
 * as strings (`event.data`), close events carry `code` and `reason`.
 */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The parts of a WebSocket the client uses. */
export interface WebSocketLike {
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** What `onState` listeners receive. */
export interface StateEvent {
  state: ConnectionState;
  /** Why, in words. */
  reason: string;
  /** The WebSocket close code behind the change, if any. */
  code?: number;
  /** Set while waiting to reconnect: `at` is the Unix ms of the attempt. */
  reconnect?: { attempt: number; delayMs: number; at: Millis };
  /** With `connected`: the hub's session id and name. */
  session?: string;
  server?: string;
  /** When the token expires (Unix ms), if it does. */
  expiresAt?: Millis;
}

/**
 * Every promhub failure: an `Error` named `PromHubError` with a `code`:
 * a hub error code (`forbidden`, `too_large`, `rate_limited`, …) or one of
 * the client's own (`bad_request`, `timeout`, `disconnected`, `closed`,
 * `queue_full`, `not_connected`, `already_subscribed`, `handler_failed`,
 * `subscription_lost`, `token_failed`, `token_refresh_needed`,
 * `protocol_error`, `unmatched`).
 */
export interface PromHubError extends Error {
  name: "PromHubError";
  code: string;
  /**
   * With `rate_limited`: when to try again. A refused `publish` is sent
   * again after this wait on its own; it only fails with `rate_limited`
   * when the wait would end after its request timeout.
   */
  retryAfterMs?: number;
}

/** Options of `publish` (the `PUBLISH` frame's `opts`). */
export type PublishOptions = PublishOpts;

/** Options of `subscribe` (the `SUBSCRIBE` frame's `opts`). */
export type SubscribeOptions = SubscribeOpts;

/** Options of `nack`. */
export interface NackOptions {
  /** Redeliver after this long (default: the group's backoff). */
  delay_ms?: number;
  /** Dead-letter now, do not retry. */
  final?: boolean;
}

/**
 * Seqs a live subscription may have missed (inclusive): after a reconnect
 * the client resumes from the seq after the last one it delivered, and the
 * hub's retention had removed these. The range counts every seq in the
 * hub's log, so some of them may be events of other topics.
 */
export interface Gap {
  from: number;
  to: number;
}

/** An event as a handler receives it, with a typed payload. */
export type PromEvent<T = unknown> = Omit<Event, "payload"> & {
  payload: T;
};

/**
 * The second argument of a handler: the delivery context of the `EVENT`
 * and explicit acknowledgement. Durable groups are acknowledged
 * automatically when the handler returns (or its promise resolves) and
 * refused with the error's message when it throws (or rejects); calling
 * `ack`/`nack` first decides instead (the first call wins).
 */
export interface DeliveryContext extends DeliveryCtx {
  readonly subscription: Subscription;
  /** Names this delivery in `subscription.ack/nack/working` (durable groups; 0 for live ones). */
  readonly tag: number;
  /**
   * Live subscriptions: set on the first event after a resume that could
   * not deliver everything published while the client was away (the hub's
   * retention removed `gap`). Events are otherwise never missed or
   * repeated across reconnects.
   */
  readonly gap?: Gap;
  /** True once `ack` or `nack` was called (by you or automatically). */
  readonly settled: boolean;
  /**
   * `false` if it was not sent: not connected, or a delivery of a
   * connection that has closed (or delivered again since) — the hub
   * redelivers it.
   */
  ack(): boolean;
  nack(reason?: string, opts?: NackOptions): boolean;
  /** Pushes the ack deadline back by the group's ack timeout. */
  working(): boolean;
}

export type Handler<T = unknown> = (event: PromEvent<T>, ctx: DeliveryContext) => unknown;

/**
 * A promhub client: one WebSocket to the hub, reconnected as needed.
 *
 * `Topics` (optional) maps topic names to payload types, e.g.
 * `{ "orders.created": Order; "process.state": ProcessState }`: `publish`
 * then accepts only those topics with their payload type, and a
 * subscription's handler gets the events of the topics its pattern matches
 * (see `TopicEvent`). Without it (`new PromClient(url)`), any topic is
 * accepted and payload types are given per call (`publish<T>`,
 * `subscribe<T>`).
 */
export class PromClient<Topics extends object = AnyTopics> {
  /**
   * `url`: the hub's WebSocket endpoint, e.g. `ws://127.0.0.1:8090/ws`,
   * or an array of several endpoints:
   * the client tries them in a random order of its own, moves to the next
   * on every new attempt (a failed attempt or a lost connection) with the
   * usual backoff, and resumes its subscriptions on the hub it reaches.
   * A path (`/ws`) or an `http(s)` URL is resolved against the page.
   * Throws a `PromHubError` (`bad_request`) for a bad URL or option, and
   * when there is no WebSocket constructor (see `ClientOptions.WebSocket`).
   */
  constructor(url: string | string[], options?: ClientOptions);

  /** Frees the client (closes its socket); the object is unusable after. */
  free(): void;
  [Symbol.dispose](): void;

  /**
   * Connects (and keeps reconnecting). Resolves once the hub accepted
   * the connection; rejects when the client stops for good before that
   * (`close()`, a refused token without `getToken`, reconnecting
   * disabled or exhausted).
   */
  connect(): Promise<void>;

  /**
   * Closes the connection for good (code 1000) until `connect()`.
   * Pending publishes fail; confirmed subscriptions are kept and
   * restored by `connect()`.
   */
  close(): void;

  /**
   * Replaces the token: re-authenticates an open connection in place, or
   * is used by the next connection (reconnecting at once if the hub had
   * refused the previous token).
   */
  setToken(token?: string | null): void;

  /** Where the connection stands. */
  readonly state: ConnectionState;

  /** Publishes waiting for a connection. */
  readonly queuedPublishes: number;

  /**
   * Publishes `payload` (any JSON value) to `topic` (no wildcards).
   * Resolves with the hub's `PUBACK` once the event is durable; rejects
   * with a `PromHubError` (`forbidden`, `timeout`, …). With a topic map,
   * `topic` is one of its topics and `payload` that topic's type.
   */
  publish: [Topics] extends [AnyTopics]
    ? <T = unknown>(topic: string, payload: T, opts?: PublishOptions) => Promise<PubAck>
    : <K extends TopicName<Topics>>(
        topic: K,
        payload: Topics[K],
        opts?: PublishOptions,
      ) => Promise<PubAck>;

  /**
   * Subscribes `handler` to `pattern` (`*` one segment, `**` any). With a
   * `group`: a durable consumer group (at-least-once, acknowledged as
   * described on `DeliveryContext`); with `null`: a live subscription for
   * this connection. Resolves once the hub confirmed it; it then survives
   * reconnects until `unsubscribe()`. With a topic map, the pattern must
   * match one of its topics, and the handler's event is a `TopicEvent`:
   * its payload is the union of the matching topics' types, narrowed by
   * `event.topic`.
   */
  subscribe: [Topics] extends [AnyTopics]
    ? <T = unknown>(
        pattern: string,
        group: string | null,
        handler: Handler<T>,
        opts?: SubscribeOptions,
      ) => Promise<Subscription>
    : <P extends string>(
        pattern: CheckedPattern<Topics, P>,
        group: string | null,
        handler: TopicHandler<Topics, P>,
        opts?: SubscribeOptions,
      ) => Promise<Subscription>;

  /** Calls `listener` on every connection change; returns its remover. */
  onState(listener: (event: StateEvent) => void): () => void;

  /**
   * Calls `listener` with failures that belong to no promise (a failing
   * live-subscription handler, a subscription refused on resubscribe,
   * `getToken` failures, protocol errors); returns its remover. Without
   * listeners they go to `console.error`.
   */
  onError(listener: (error: PromHubError) => void): () => void;
}
