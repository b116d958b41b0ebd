#!/usr/bin/env node
// Benchmark: EVENT frames decoded and dispatched to a JS handler per second,
// in headless Chromium, two ways:
//
// - "in-page": the page swaps `WebSocket` for a stand-in and feeds EVENT
//   frames to the client's message handler in a loop. This is the SDK's
//   own cost per event (JS string → wasm decode and routing → JS object →
//   handler), without a network.
// - "socket": a scripted peer (sdk-wasm/bench/scripted-hub.mjs) sends the
//   frames over a real WebSocket on 127.0.0.1. This adds the browser's
//   WebSocket receive path and the sender, and depends on the machine.
//
// Each runs live (no ACK) and in a durable group (an ACK sent per event).
// Reports the rate per run and the median; goal ≥ 100,000 events/s.
//
//   npm run bench:dispatch [-- --events 200000 --runs 5]
//
// Expects a built package (npm run build:sdk).
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { startScriptedHub } from "../sdk-wasm/bench/scripted-hub.mjs";
import { launchBrowser, openTestPage, startStaticServer } from "../sdk-wasm/tests/browser/harness.mjs";
import { ROOT } from "./lib.mjs";

const { values } = parseArgs({
  options: {
    events: { type: "string", default: "200000" },
    runs: { type: "string", default: "5" },
  },
});
const EVENTS = Number(values.events);
const RUNS = Number(values.runs);
const GOAL = 100_000;

/** An EVENT frame like the hub sends for a `process.state` publish. */
function eventFrame(topic, group, seq) {
  const frame = {
    op: "EVENT",
    topic,
    event: {
      id: `0193a0b1-7c2d-7e3f-8a9b-${seq.toString(16).padStart(12, "0")}`,
      seq,
      topic: "process.state",
      ts: 1_764_300_000_000 + seq,
      key: `host-1:worker:${seq % 500}`,
      payload: {
        host: "host-1",
        name: "worker",
        pid: seq % 500,
        cpu_percent: (seq % 1000) / 10,
        memory_bytes: 123_456_789,
        status: "alive",
        last_seen: 1_764_300_000_000 + seq,
      },
    },
    ctx: { attempt: 1 },
  };
  if (group) frame.group = group;
  return JSON.stringify(frame);
}

function report(label, rates, mode) {
  rates.sort((a, b) => a - b);
  const median = rates[Math.floor(rates.length / 2)];
  const note = mode === "group" ? " (durable group: every event also ACKed)" : "";
  console.log(
    `${label}: median ${Math.round(median).toLocaleString("en")} events/s${note} — goal ${GOAL.toLocaleString("en")}: ${
      median >= GOAL ? "met" : "NOT met"
    }`,
  );
}

/**
 * Runs in the page: a WebSocket stand-in that answers AUTH and SUBSCRIBE,
 * then the frames are handed to the client's `onmessage` in a loop.
 */
async function inPageRun({ events, mode, run, sample }) {
  const RealWebSocket = globalThis.WebSocket;
  let socket;
  class StandIn {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      socket = this;
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({ target: this });
      }, 0);
    }
    send(text) {
      const frame = JSON.parse(text);
      const reply = (answer) =>
        queueMicrotask(() => this.onmessage?.({ data: JSON.stringify(answer), target: this }));
      if (frame.op === "AUTH") reply({ op: "OK", v: 1, session: "bench", server: "stand-in", heartbeat_ms: 0 });
      if (frame.op === "SUBSCRIBE") {
        this.topic = frame.topic;
        this.group = frame.group;
        reply({ op: "SUBACK", rid: frame.rid, topic: frame.topic, group: frame.group, from_seq: 1 });
      }
    }
    close() {
      this.readyState = 3;
    }
  }
  globalThis.WebSocket = StandIn;
  try {
    const client = new promhub.PromClient("ws://stand-in/ws", { reconnect: false, heartbeatMs: 0 });
    await client.connect();
    let count = 0;
    let checksum = 0;
    await client.subscribe(`bench.p${run}.**`, mode === "group" ? "bench" : null, (event) => {
      count += 1;
      checksum += event.payload.pid;
    });
    // Frames as the hub would send them for this subscription.
    const template = JSON.parse(sample);
    template.topic = socket.topic;
    if (socket.group) template.group = socket.group;
    const frames = [];
    for (let i = 1; i <= events; i += 1) {
      template.event.seq = i;
      template.event.id = `ev-${i}`;
      template.event.payload.pid = i % 500;
      frames.push(JSON.stringify(template));
    }
    const start = performance.now();
    for (let i = 0; i < events; i += 1) socket.onmessage({ data: frames[i], target: socket });
    const seconds = (performance.now() - start) / 1000;
    client.close();
    client.free();
    if (count !== events) throw new Error(`handled ${count} of ${events}`);
    return { count, seconds, checksum };
  } finally {
    globalThis.WebSocket = RealWebSocket;
  }
}

async function main() {
  if (!existsSync(join(ROOT, "sdk-wasm", "pkg", "index.js"))) {
    throw new Error("no package in sdk-wasm/pkg: run `npm run build:sdk` first");
  }
  const peer = await startScriptedHub((topic, group) =>
    Array.from({ length: EVENTS }, (_, i) => eventFrame(topic, group, i + 1)),
  );
  const files = await startStaticServer();
  const browser = await launchBrowser();
  const sample = eventFrame("bench.**", null, 1);
  console.log(`${EVENTS} EVENT frames per run (~${sample.length} bytes each), ${RUNS} runs, Chromium headless`);
  try {
    const page = await openTestPage(browser, files.origin);
    for (const mode of ["live", "group"]) {
      const rates = [];
      for (let run = 0; run < RUNS; run += 1) {
        const result = await page.evaluate(inPageRun, { events: EVENTS, mode, run, sample });
        const rate = result.count / result.seconds;
        rates.push(rate);
        console.log(`  in-page ${mode.padEnd(5)} run ${run + 1}: ${Math.round(rate).toLocaleString("en")} events/s`);
      }
      report(`in-page ${mode}`, rates, mode);
    }
    for (const mode of ["live", "group"]) {
      const rates = [];
      for (let run = 0; run < RUNS; run += 1) {
        const result = await page.evaluate(
          async ({ url, events, mode, run }) => {
            const client = new promhub.PromClient(url, { reconnect: false, heartbeatMs: 0 });
            await client.connect();
            let count = 0;
            let checksum = 0;
            let first = 0;
            let last = 0;
            let resolveDone;
            const done = new Promise((resolve) => {
              resolveDone = resolve;
            });
            const handler = (event) => {
              if (count === 0) first = performance.now();
              count += 1;
              checksum += event.payload.pid;
              if (count === events) {
                last = performance.now();
                resolveDone();
              }
            };
            await client.subscribe(`bench.r${run}.**`, mode === "group" ? "bench" : null, handler);
            await Promise.race([
              done,
              new Promise((_, reject) => setTimeout(() => reject(new Error(`only ${count} events`)), 120_000)),
            ]);
            client.close();
            client.free();
            return { count, seconds: (last - first) / 1000, checksum };
          },
          { url: peer.url, events: EVENTS, mode, run },
        );
        // The first event starts the clock: count the ones after it.
        const rate = (result.count - 1) / result.seconds;
        rates.push(rate);
        console.log(`  socket  ${mode.padEnd(5)} run ${run + 1}: ${Math.round(rate).toLocaleString("en")} events/s`);
      }
      report(`socket ${mode}`, rates, mode);
    }
  } finally {
    await browser.close();
    await files.close();
    await peer.close();
  }
}

main().catch((error) => {
  console.error(`bench-dispatch: ${error.stack ?? error}`);
  process.exit(1);
});
