// The live process.state page: subscribes with `snapshot` (the current
// table at once, from the hub's latest-by-key store), then applies live
// events. After a reconnect the subscription resumes where it stopped (the
// events published meanwhile come first); when the hub could no longer
// deliver all of them (`ctx.gap`), the page takes a fresh snapshot. Query parameters: `hub` (WebSocket URL; default: this origin's
// /ws) and `exitedTtlMs` (how long exited processes stay; default 60000).
import { PromClient, type DeliveryContext, type PromEvent, type Subscription } from "promhub";

import { ProcessTable, type ProcessState } from "./processes";
import { ConnectionView, TableView } from "./view";

const params = new URLSearchParams(location.search);
const hubUrl = params.get("hub") ?? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const exitedTtlMs = Number(params.get("exitedTtlMs") ?? 60_000);
const TOPIC = "process.state";

const table = new ProcessTable(Number.isFinite(exitedTtlMs) && exitedTtlMs >= 0 ? exitedTtlMs : 60_000);

let renderQueued = false;
function scheduleRender(): void {
  if (renderQueued) return;
  renderQueued = true;
  // At most one render per frame, however many events arrive.
  requestAnimationFrame(() => {
    renderQueued = false;
    view.render(Date.now());
  });
}

const view = new TableView(
  table,
  document.querySelector<HTMLTableSectionElement>("#processes tbody")!,
  document.querySelectorAll<HTMLTableCellElement>("#processes th[data-sort]"),
  document.querySelector<HTMLElement>("#empty")!,
  document.querySelector<HTMLElement>("#summary")!,
  scheduleRender,
);
const connection = new ConnectionView(document.querySelector<HTMLElement>("#connection")!);

document.querySelector<HTMLInputElement>("#filter")!.addEventListener("input", (event) => {
  view.setFilter((event.target as HTMLInputElement).value);
});

setInterval(() => {
  const now = Date.now();
  table.prune(now);
  connection.tick(now);
  scheduleRender();
}, 1000);

const client = new PromClient(hubUrl, { reconnect: { minDelayMs: 500, maxDelayMs: 10_000 } });
client.onState((event) => connection.update(event));
client.onError((error) => console.warn(`promhub: ${error.code}: ${error.message}`));

let subscription: Promise<Subscription> | null = null;

function subscribe(): Promise<Subscription> {
  subscription = client.subscribe<ProcessState>(TOPIC, null, onEvent, { snapshot: true });
  return subscription;
}

/** Events were lost for good: start over from the latest of every key. */
async function resnapshot(): Promise<void> {
  const old = await subscription;
  await old?.unsubscribe();
  await subscribe();
}

function onEvent(event: PromEvent<ProcessState>, ctx: DeliveryContext): void {
  if (ctx.gap !== undefined) {
    resnapshot().catch((error: unknown) => console.warn("promhub: cannot take a fresh snapshot", error));
  }
  if (table.apply(event.key, event.payload, event.ts, Date.now())) scheduleRender();
}

async function start(): Promise<void> {
  // Subscribed before connecting: the SUBSCRIBE goes out right after the
  // hub accepts the connection, and again after every reconnect (resuming
  // where it stopped).
  const subscribed = subscribe();
  await client.connect();
  await subscribed;
  document.body.dataset.subscribed = "true";
}

start().catch((error: unknown) => {
  console.error("promhub: cannot start", error);
  document.body.dataset.failed = String(error);
});

// For the end-to-end test and the console.
Object.assign(window, { promhubPage: { client, table } });
