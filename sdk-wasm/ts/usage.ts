// Typed usage of the `promhub` package, checked by `tsc --noEmit` in the
// build (scripts/build-sdk.mjs). Correct use must compile; every
// `@ts-expect-error` line must be an error, or tsc fails ("unused
// directive"), which proves wrong payload types are rejected.
import {
  PromClient,
  type DeliveryContext,
  type PromEvent,
  type PromHubError,
  type PubAck,
  type StateEvent,
  type Subscription,
  type TopicEvent,
  type WebSocketConstructor,
} from "promhub";
import { IndexedDbDedupeStore, idempotent } from "promhub/idempotent";

interface ProcessState {
  host: string;
  name: string;
  pid: number;
  cpu: number;
  status: "running" | "exited";
}

export async function correctUse(): Promise<void> {
  const client = new PromClient("ws://127.0.0.1:8090/ws", {
    getToken: async () => "eyJ...",
    reconnect: { minDelayMs: 100, maxDelayMs: 5_000 },
    queue: { capacity: 100, policy: "wait" },
  });
  const noOptions = new PromClient("/ws");
  noOptions.free();

  const stopState = client.onState((event: StateEvent) => {
    if (event.reconnect) console.log(`reconnecting in ${event.reconnect.delayMs} ms`);
  });
  client.onError((error: PromHubError) => console.warn(error.code, error.message));
  await client.connect();

  const ack: PubAck = await client.publish<ProcessState>(
    "process.state",
    { host: "h", name: "sh", pid: 1, cpu: 0.5, status: "running" },
    { key: "h:sh:1", headers: { source: "usage" }, id: "event-1" },
  );
  const seq: number = ack.seq;
  void seq;

  const sub: Subscription = await client.subscribe<ProcessState>(
    "process.*",
    "ops",
    async (event: PromEvent<ProcessState>, ctx: DeliveryContext) => {
      const pid: number = event.payload.pid;
      const status: "running" | "exited" = event.payload.status;
      // Headers are a plain object, times are numbers (the generated
      // `Millis`), straight from the generated declarations.
      const source: string | undefined = event.headers?.["source"];
      const at: number = event.ts;
      void source;
      void at;
      if (ctx.attempt > 3) ctx.nack("too many attempts", { final: true });
      else if (pid < 0) ctx.nack("bad pid", { delay_ms: 1_000 });
      else ctx.working();
      void status;
    },
    { from: "earliest", max_inflight: 10, snapshot: false },
  );
  sub.ack("event-id", 42, 7);
  await sub.unsubscribe();

  // A live subscription; the handler's return value is free. A gap is
  // reported on the first event after a resume that could not deliver
  // everything.
  await client.subscribe(
    "process.state",
    null,
    (event, ctx) => {
      if (ctx.gap !== undefined) {
        const missed: number = ctx.gap.to - ctx.gap.from + 1;
        void missed;
      }
      return event.payload;
    },
    { snapshot: true },
  );
  stopState();
  client.close();
}

export async function wrongUse(client: PromClient): Promise<void> {
  // @ts-expect-error: pid must be a number
  await client.publish<ProcessState>("process.state", { host: "h", name: "sh", pid: "1", cpu: 0, status: "running" });

  // @ts-expect-error: status must be "running" | "exited"
  await client.publish<ProcessState>("process.state", { host: "h", name: "sh", pid: 1, cpu: 0, status: "gone" });

  await client.subscribe<ProcessState>("process.state", null, (event) => {
    // @ts-expect-error: the payload's pid is a number, not a string
    const pid: string = event.payload.pid;
    // @ts-expect-error: no such field in ProcessState
    void event.payload.memory;
    void pid;
  });

  // @ts-expect-error: the group is a string or null, not a number
  await client.subscribe("process.state", 42, () => {});

  // @ts-expect-error: headers are a string map
  await client.publish("a.b", 1, { headers: { n: 1 } });

  await client.subscribe("process.state", null, (event) => {
    // @ts-expect-error: headers are a plain object, not a Map
    void event.headers?.get("source");
  });

  // @ts-expect-error: unknown client option
  new PromClient("ws://h/ws", { reconect: true });
}

// Exactly-once-ish handlers keep the payload type.
export async function once(client: PromClient): Promise<void> {
  const store = new IndexedDbDedupeStore({ scope: "billing" });
  await client.subscribe<ProcessState>(
    "process.state",
    "billing",
    idempotent<ProcessState>(async (event) => {
      const pid: number = event.payload.pid;
      void pid;
    }, { store }),
  );
  idempotent<ProcessState>((event) => {
    // @ts-expect-error: pid is a number
    const pid: string = event.payload.pid;
    void pid;
  });
  // @ts-expect-error: the store must be a DedupeStore
  idempotent(() => {}, { store: new Map() });
}

// ---------------------------------------------------------------------------
// Typed topic maps: `new PromClient<Topics>()`.

interface Order {
  id: string;
  total: number;
}

interface Cancellation {
  id: string;
  reason: string;
}

interface Topics {
  "orders.created": Order;
  "orders.cancelled": Cancellation;
  "process.state": ProcessState;
  "audit.user.login": { user: string };
  // A family of topics with one payload type.
  [tenant: `tenant.${string}.usage`]: { bytes: number };
}

export async function typedTopics(): Promise<void> {
  const client = new PromClient<Topics>("ws://127.0.0.1:8090/ws");
  const ack: PubAck = await client.publish("orders.created", { id: "o1", total: 12 }, { key: "o1" });
  void ack;
  await client.publish("process.state", { host: "h", name: "sh", pid: 1, cpu: 0, status: "exited" });
  await client.publish("tenant.acme.usage", { bytes: 512 });

  // One topic: the payload is its type.
  await client.subscribe("orders.created", "billing", (event, ctx: DeliveryContext) => {
    const total: number = event.payload.total;
    const topic: "orders.created" = event.topic;
    void total;
    void topic;
    ctx.working();
  });

  // A pattern: the union of the matching topics, narrowed by the topic.
  await client.subscribe("orders.*", null, (event) => {
    const id: string = event.payload.id;
    if (event.topic === "orders.created") {
      const total: number = event.payload.total;
      void total;
    } else {
      const reason: string = event.payload.reason;
      void reason;
    }
    void id;
  });
  await client.subscribe("*.created", null, (event: TopicEvent<Topics, "orders.created">) => {
    void event.payload.total;
  });
  await client.subscribe("audit.**", null, (event) => {
    const user: string = event.payload.user;
    void user;
  });
  await client.subscribe("tenant.*.usage", null, (event) => {
    const bytes: number = event.payload.bytes;
    void bytes;
  });

  // A pattern known only at run time: every topic of the map.
  const pattern: string = "orders.created";
  await client.subscribe(pattern, null, (event) => {
    if (event.topic === "process.state") void event.payload.pid;
  });

  // Exactly-once-ish handlers take the topic's payload type.
  await client.subscribe(
    "orders.created",
    "billing",
    idempotent(async (event) => {
      const total: number = event.payload.total;
      void total;
    }),
  );
  client.close();
}

export async function typedTopicsWrongUse(client: PromClient<Topics>): Promise<void> {
  // @ts-expect-error: total must be a number
  await client.publish("orders.created", { id: "o1", total: "12" });

  // @ts-expect-error: a Cancellation is not an Order
  await client.publish("orders.created", { id: "o1", reason: "changed mind" });

  // @ts-expect-error: not a topic of the map
  await client.publish("orders.updated", { id: "o1", total: 1 });

  // @ts-expect-error: the family's payload is { bytes: number }
  await client.publish("tenant.acme.usage", { bytes: "many" });

  // @ts-expect-error: no topic of the map matches this pattern
  await client.subscribe("order.*", null, () => {});

  await client.subscribe("orders.*", null, (event) => {
    // @ts-expect-error: `total` is only on orders.created; narrow by topic first
    void event.payload.total;
  });

  await client.subscribe("orders.cancelled", null, (event) => {
    // @ts-expect-error: a Cancellation's reason is a string
    const reason: number = event.payload.reason;
    void reason;
  });

  // @ts-expect-error: the handler expects an Order, the topic carries a Cancellation
  await client.subscribe("orders.cancelled", null, (event: PromEvent<Order>) => {
    void event;
  });
}

// Untyped clients still take any topic and per-call payload types.
export async function untypedStillWorks(client: PromClient): Promise<void> {
  await client.publish("anything.at.all", { free: true });
  await client.publish<Order>("orders.created", { id: "o1", total: 1 });
  // @ts-expect-error: the explicit payload type still checks
  await client.publish<Order>("orders.created", { id: "o1", total: "1" });
  await client.subscribe<Order>("orders.*", null, (event) => {
    const total: number = event.payload.total;
    void total;
  });
}

// ---------------------------------------------------------------------------
// The WebSocket option: any constructor of the browser's WebSocket shape.

class FakeSocket {
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  constructor(readonly url: string) {}
  send(data: string): void {
    void data;
  }
  close(code?: number, reason?: string): void {
    void code;
    void reason;
  }
}

export function webSocketOption(): void {
  const browser: WebSocketConstructor = WebSocket;
  new PromClient("ws://h/ws", { WebSocket: browser }).free();
  new PromClient("ws://h/ws", { WebSocket: FakeSocket }).free();
  // @ts-expect-error: not a constructor
  new PromClient("ws://h/ws", { WebSocket: "ws" });
  // @ts-expect-error: a constructor of something that cannot send
  new PromClient("ws://h/ws", { WebSocket: class { close(): void {} } });
}
