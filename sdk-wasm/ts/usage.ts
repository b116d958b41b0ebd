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
