// Three hubs on one MongoDB-wire database (FerretDB, as the Rust cluster
// tests), in headless Chromium: a browser publisher and a browser live
// subscriber, both given every hub and both on hub A, keep going while A
// is killed with SIGKILL. Both move to the other hubs on their own; the
// subscriber's subscription resumes from its last seq there and it
// receives every acknowledged event once, in seq order. Prints the time
// from the kill to the reconnection and to the first event after it.
//
// The native SDK's counterpart: hub/tests/cluster.rs.
import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { ferretDbBinary, openTestPage, startFerretDb, startHub, tempDir, uniqueTopic, useBrowser } from "./harness.mjs";

const session = useBrowser();
const ferretdb = ferretDbBinary();
const CLUSTER_ENV = { PROMHUB_CLUSTER_LEASE_MS: "600", PROMHUB_CLUSTER_POLL_MS: "20" };

describe("browser clients of a killed hub in a cluster", { skip: ferretdb ? false : "no FerretDB (PROMHUB_SKIP_MONGO)" }, () => {
  let dir;
  let server;
  const hubs = [];

  before(async () => {
    dir = tempDir("cluster-failover");
    mkdirSync(join(dir, "ferretdb"));
    server = await startFerretDb(ferretdb, join(dir, "ferretdb"));
  });

  after(async () => {
    for (const hub of hubs) await hub.stop();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("resume on the other hubs with every acknowledged event once, in order", async () => {
    const store = server.uri("browser_cluster_failover");
    const hub = (name, listen) =>
      startHub({ dataDir: join(dir, name), listen, args: ["--store", store], env: CLUSTER_ENV });
    // B and C's addresses first, then only A is up while the clients
    // connect, so both start on A whatever order they draw.
    const b0 = await hub("b");
    const c0 = await hub("c");
    await b0.stop();
    await c0.stop();
    const a = await hub("a");
    hubs.push(a);
    const urls = [a.url, b0.url, c0.url];
    const page = await openTestPage(session.browser, session.files.origin);
    const topic = uniqueTopic("test.cluster");
    await page.evaluate(
      async ({ urls, topic }) => {
        const options = { reconnect: { minDelayMs: 20, maxDelayMs: 80 }, requestTimeoutMs: 120_000 };
        const subscriber = new promhub.PromClient(urls, options);
        const publisher = new promhub.PromClient(urls, options);
        const states = [];
        subscriber.onState((event) => states.push({ state: event.state, at: performance.now() }));
        await subscriber.connect();
        await publisher.connect();
        const seen = [];
        await subscriber.subscribe(topic, null, (event, ctx) => {
          seen.push({ seq: event.seq, n: event.payload, gap: ctx.gap ?? null, at: performance.now() });
        });
        const acked = [];
        let stop = false;
        // One publish at a time, each with an id: one sent again after the
        // failover is stored once (cluster-wide de-duplication).
        const publishing = (async () => {
          for (let n = 1; !stop; n += 1) {
            const ack = await publisher.publish(topic, n, { id: `${topic}-${n}` });
            acked.push(ack.seq);
            await new Promise((done) => setTimeout(done, 5));
          }
        })();
        window.cluster = { subscriber, publisher, seen, acked, states, publishing, stop: () => (stop = true) };
        await waitUntil(() => seen.length >= 50, "the first events", 60_000);
      },
      { urls, topic },
    );
    const b = await hub("b", `127.0.0.1:${b0.port}`);
    const c = await hub("c", `127.0.0.1:${c0.port}`);
    hubs.push(b, c);

    const killedAt = await page.evaluate(() => performance.now());
    a.process.kill("SIGKILL");
    await a.exited;
    const result = await page.evaluate(
      async ({ killedAt }) => {
        const { subscriber, publisher, seen, acked, states, publishing, stop } = window.cluster;
        const before = acked.length;
        await waitUntil(() => acked.length >= before + 100, "100 acknowledged publishes after the kill", 60_000);
        stop();
        await publishing;
        const last = Math.max(...acked);
        await waitUntil(() => seen.length > 0 && seen.at(-1).seq >= last, "every acknowledged event", 60_000);
        subscriber.close();
        publisher.close();
        const reconnected = states.find((s) => s.state === "connected" && s.at > killedAt);
        const firstAfter = seen.find((event) => event.at > killedAt);
        return {
          seen: seen.map(({ seq, n, gap }) => ({ seq, n, gap })),
          acked,
          reconnectMs: reconnected ? Math.round(reconnected.at - killedAt) : null,
          firstEventMs: firstAfter ? Math.round(firstAfter.at - killedAt) : null,
        };
      },
      { killedAt },
    );
    const seqs = result.seen.map((event) => event.seq);
    assert.ok(
      seqs.every((seq, i) => i === 0 || seqs[i - 1] < seq),
      `in order, no duplicate: ${seqs.join(",")}`,
    );
    const delivered = new Set(seqs);
    const missing = result.acked.filter((seq) => !delivered.has(seq));
    assert.deepEqual(missing, [], "every acknowledged event delivered");
    const payloads = result.seen.map((event) => event.n);
    assert.equal(new Set(payloads).size, payloads.length, "each event once");
    assert.notEqual(result.reconnectMs, null, "the subscriber reconnected after the kill");
    console.log(
      `SIGKILL of the browser clients' hub: reconnected after ${result.reconnectMs} ms, first event after ` +
        `${result.firstEventMs} ms; ${result.acked.length} acknowledged, ${result.seen.length} delivered in order`,
    );
  });
});
