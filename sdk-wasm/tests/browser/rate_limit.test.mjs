// The browser SDK against a hub with a publish quota: a publish refused
// with `rate_limited` waits out `retry_after_ms` and is sent again (by the
// core it shares with the native SDK), so the caller sees its PUBACK; a
// wait past the request timeout is reported with `retryAfterMs`.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import { launchBrowser, openTestPage, startHub, startStaticServer, tempDir, uniqueTopic } from "./harness.mjs";

async function withHub(args, body) {
  const dataDir = tempDir("hub-quota");
  const hub = await startHub({ dataDir, args });
  try {
    return await body(hub);
  } finally {
    await hub.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

describe("PromClient against a rate-limited hub", () => {
  let files;
  let browser;

  before(async () => {
    files = await startStaticServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await files?.close();
  });

  test("publishes over the quota wait and succeed", async () => {
    await withHub(["--publish-rate", "20", "--publish-burst", "1"], async (hub) => {
      const page = await openTestPage(browser, files.origin);
      const topic = uniqueTopic("test.quota");
      const seqs = await page.evaluate(
        async ({ url, topic }) => {
          const client = new promhub.PromClient(url);
          await client.connect();
          // Six at once against one token per 50 ms.
          const acks = await Promise.all([0, 1, 2, 3, 4, 5].map((n) => client.publish(topic, n)));
          client.close();
          return acks.map((ack) => ack.seq);
        },
        { url: hub.url, topic },
      );
      assert.equal(new Set(seqs).size, 6, `six distinct events stored: ${seqs}`);
    });
  });

  test("a wait beyond the request timeout is a rate_limited error with retryAfterMs", async () => {
    await withHub(["--publish-rate", "0.01", "--publish-burst", "1"], async (hub) => {
      const page = await openTestPage(browser, files.origin);
      const topic = uniqueTopic("test.quota");
      const result = await page.evaluate(
        async ({ url, topic }) => {
          const client = new promhub.PromClient(url, { requestTimeoutMs: 5000 });
          await client.connect();
          await client.publish(topic, "the burst token");
          try {
            await client.publish(topic, "refused");
            return { outcome: "resolved" };
          } catch (error) {
            return { outcome: `${error.name}:${error.code}`, retryAfterMs: error.retryAfterMs };
          } finally {
            client.close();
          }
        },
        { url: hub.url, topic },
      );
      assert.equal(result.outcome, "PromHubError:rate_limited");
      assert.ok(result.retryAfterMs > 5000, `retryAfterMs ${result.retryAfterMs}`);
    });
  });
});
