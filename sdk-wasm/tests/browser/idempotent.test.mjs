// `idempotent(handler)` in headless Chromium: a handler runs once per event
// id, in memory and with IndexedDB across a page that dies after the work
// but before its ACK (the hub delivers the event again to the next page).
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import { launchBrowser, openTestPage, startHub, startStaticServer, tempDir, uniqueTopic } from "./harness.mjs";

const CLIENT_OPTIONS = { reconnect: { minDelayMs: 50, maxDelayMs: 500 } };

describe("idempotent handlers", () => {
  let hub;
  let dataDir;
  let files;
  let browser;

  before(async () => {
    dataDir = tempDir("hub");
    hub = await startHub({ dataDir });
    files = await startStaticServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await files?.close();
    await hub?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test("the memory store runs a handler once per id; a rejection records nothing", async () => {
    const page = await openTestPage(browser, files.origin);
    const result = await page.evaluate(async () => {
      const { idempotent, MemoryDedupeStore } = await import("/sdk-wasm/pkg/idempotent.js");
      const runs = [];
      let failNext = true;
      const handler = idempotent(async (event) => {
        runs.push(event.id);
        if (event.id === "b" && failNext) {
          failNext = false;
          throw new Error("boom");
        }
      });
      const ctx = { attempt: 1 };
      await handler({ id: "a" }, ctx);
      await handler({ id: "a" }, ctx);
      let rejected = null;
      await handler({ id: "b" }, ctx).catch((error) => {
        rejected = error.message;
      });
      await handler({ id: "b" }, ctx);
      await handler({ id: "b" }, ctx);
      // Two deliveries of one id at once: the second waits for the first.
      await Promise.all([handler({ id: "c" }, ctx), handler({ id: "c" }, ctx)]);
      const store = new MemoryDedupeStore({ ttlMs: 20 });
      await store.add("x");
      await store.add("y");
      const fresh = await store.has("y");
      await sleep(50);
      // Looking up an expired id drops it; purging drops the rest.
      const expired = await store.has("x");
      return { runs, rejected, fresh, expired, purged: await store.purgeExpired() };
    });
    assert.deepEqual(result.runs, ["a", "b", "b", "c"]);
    assert.equal(result.rejected, "boom");
    assert.equal(result.fresh, true);
    assert.equal(result.expired, false);
    assert.equal(result.purged, 1);
  });

  test("with IndexedDB, an event redelivered after the page died before its ACK is not processed again", async () => {
    const topic = uniqueTopic("test.once");
    const first = await openTestPage(browser, files.origin);
    const ids = await first.evaluate(
      async ({ url, topic, options }) => {
        const { idempotent, IndexedDbDedupeStore } = await import("/sdk-wasm/pkg/idempotent.js");
        const client = new promhub.PromClient(url, options);
        await client.connect();
        const ids = [];
        for (let n = 1; n <= 5; n += 1) ids.push((await client.publish(topic, { n })).id);
        // Work done by the handler: a run counter per event id.
        const work = async (event) => {
          const key = `runs:${event.id}`;
          localStorage.setItem(key, String(Number(localStorage.getItem(key) ?? 0) + 1));
        };
        const handler = idempotent(work, {
          store: new IndexedDbDedupeStore({ scope: topic }),
        });
        window.processed = [];
        await client.subscribe(
          topic,
          "billing",
          async (event, ctx) => {
            await handler(event, ctx);
            window.processed.push(event.payload.n);
            // The page "crashes" after processing n=3, before its ACK.
            if (event.payload.n === 3) await new Promise(() => {});
          },
          { from: "earliest", max_inflight: 1 },
        );
        return ids;
      },
      { url: hub.url, topic, options: CLIENT_OPTIONS },
    );
    await first.waitForFunction(() => window.processed.includes(3), null, { timeout: 30_000 });
    await first.close();

    const second = await openTestPage(browser, files.origin);
    const result = await second.evaluate(
      async ({ url, topic, ids, options }) => {
        const { idempotent, IndexedDbDedupeStore } = await import("/sdk-wasm/pkg/idempotent.js");
        const client = new promhub.PromClient(url, options);
        await client.connect();
        const delivered = [];
        const handler = idempotent(
          async (event) => {
            const key = `runs:${event.id}`;
            localStorage.setItem(key, String(Number(localStorage.getItem(key) ?? 0) + 1));
          },
          { store: new IndexedDbDedupeStore({ scope: topic }) },
        );
        await client.subscribe(
          topic,
          "billing",
          async (event, ctx) => {
            delivered.push({ n: event.payload.n, attempt: ctx.attempt });
            await handler(event, ctx);
          },
          { from: "earliest" },
        );
        await waitUntil(() => delivered.some((d) => d.n === 5), "the last event");
        client.close();
        return { delivered, runs: ids.map((id) => Number(localStorage.getItem(`runs:${id}`))) };
      },
      { url: hub.url, topic, ids, options: CLIENT_OPTIONS },
    );
    const again = result.delivered.find((d) => d.n === 3);
    assert.ok(again, `event 3 is delivered again: ${JSON.stringify(result.delivered)}`);
    assert.ok(again.attempt >= 2, `as a redelivery: ${JSON.stringify(again)}`);
    assert.ok(!result.delivered.some((d) => d.n < 3), "acknowledged events do not come back");
    assert.deepEqual(result.runs, [1, 1, 1, 1, 1], "each event processed exactly once");
  });
});
