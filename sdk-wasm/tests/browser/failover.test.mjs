// Several hub URLs in headless Chromium: `new PromClient([a, b])` reaches
// the hub that is up, and when that hub goes away the client fails over to
// the other one and its subscription follows (the order each client tries
// the hubs in is its own random one: this test makes only one hub reachable
// at a time, so it holds whatever order is drawn). Each hub has its own
// store here: the point is the client's failover, not the cluster.
//
// The choice of hub per attempt is covered by sdk-core/tests/client_failover.rs.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { openTestPage, startHub, tempDir, uniqueTopic, useBrowser } from "./harness.mjs";

const session = useBrowser();

describe("a client given several hubs", () => {
  let dataDir;
  const hubs = [];

  before(() => {
    dataDir = tempDir("failover");
  });

  after(async () => {
    for (const hub of hubs) await hub.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test("connects to the hub that is up, and fails over when it goes away", async () => {
    // Hub A's address, with nothing listening on it yet.
    const first = await startHub({ dataDir: join(dataDir, "a") });
    const listenA = `127.0.0.1:${first.port}`;
    const urlA = first.url;
    await first.stop();
    const b = await startHub({ dataDir: join(dataDir, "b") });
    hubs.push(b);

    const page = await openTestPage(session.browser, session.files.origin);
    const topic = uniqueTopic("test.failover");
    await page.evaluate(
      async ({ urls, topic }) => {
        const client = new promhub.PromClient(urls, { reconnect: { minDelayMs: 20, maxDelayMs: 80 } });
        const states = [];
        client.onState((event) => states.push(event.state));
        await client.connect();
        const seen = [];
        await client.subscribe(topic, null, (event) => seen.push(event.payload));
        window.failover = { client, seen, states };
      },
      { urls: [urlA, b.url], topic },
    );

    // A comes up, B goes away: the client can only be on A now.
    const a = await startHub({ dataDir: join(dataDir, "a"), listen: listenA });
    hubs.push(a);
    await b.stop();
    const result = await page.evaluate(
      async ({ url, topic }) => {
        const { client, seen, states } = window.failover;
        // Once the subscription is back on A, a publish there reaches it.
        const publisher = new promhub.PromClient(url);
        await publisher.connect();
        await waitUntil(() => states.filter((state) => state === "connected").length >= 2, "the failover");
        for (let n = 1; seen.length === 0 && n <= 50; n += 1) {
          await publisher.publish(topic, n);
          await new Promise((done) => setTimeout(done, 100));
        }
        await waitUntil(() => seen.length > 0, "an event from the hub it failed over to");
        publisher.close();
        client.close();
        return { seen, states };
      },
      { url: a.url, topic },
    );
    assert.ok(result.seen.length >= 1, JSON.stringify(result));
    assert.ok(result.states.filter((state) => state === "connected").length >= 2, JSON.stringify(result.states));
  });

  test("refuses an empty list of hubs", async () => {
    const page = await openTestPage(session.browser, session.files.origin);
    const error = await page.evaluate(() => {
      try {
        new promhub.PromClient([]);
        return null;
      } catch (error) {
        return { name: error.name, code: error.code, message: error.message };
      }
    });
    assert.deepEqual(error, { name: "PromHubError", code: "bad_request", message: "no hub URL given" });
  });
});
