// Gapless resume of live subscriptions against a real hub, in headless
// Chromium (semantics.md §4): the hub is killed and restarted while events
// keep being published from another connection (which reconnects too); the
// live subscriber receives every event once, with no gap and no duplicate.
// When the hub's retention removed the events it missed, the handler's
// `ctx.gap` says so.
//
// The client side alone is covered by sdk-core/tests/client_resume.rs and
// the transcript test.
import assert from "node:assert/strict";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { openTestPage, startHub, tempDir, uniqueTopic, useBrowser } from "./harness.mjs";

const session = useBrowser();

/** SIGKILL: no close frames, no final flush. */
async function kill(hub) {
  hub.process.kill("SIGKILL");
  await hub.exited;
}

describe("live subscriptions resume where they stopped", () => {
  let dataDir;
  let hub;

  before(() => {
    dataDir = tempDir("resume");
  });

  after(async () => {
    await hub?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test("nothing missed, nothing repeated across a hub restart", async () => {
    hub = await startHub({ dataDir });
    const listen = `127.0.0.1:${hub.port}`;
    const page = await openTestPage(session.browser, session.files.origin);
    const topic = uniqueTopic("test.resume");
    await page.evaluate(
      async ({ url, topic }) => {
        // The subscriber comes back later than the publisher, so events
        // are published after the restart before it resubscribes.
        const subscriber = new promhub.PromClient(url, { reconnect: { minDelayMs: 600, maxDelayMs: 900 } });
        const publisher = new promhub.PromClient(url, {
          reconnect: { minDelayMs: 20, maxDelayMs: 60 },
          requestTimeoutMs: 120_000,
        });
        await subscriber.connect();
        await publisher.connect();
        const seen = [];
        await subscriber.subscribe(topic, null, (event, ctx) => {
          seen.push({ seq: event.seq, n: event.payload, gap: ctx.gap ?? null });
        });
        const acked = [];
        // One publish at a time, each with an id: one re-sent after a
        // reconnect is stored once.
        const publishing = (async () => {
          for (let n = 1; n <= 200; n += 1) {
            const ack = await publisher.publish(topic, n, { id: `${topic}-${n}` });
            acked.push(ack.seq);
          }
        })();
        window.resume = { subscriber, publisher, seen, acked, publishing };
        await waitUntil(() => acked.length >= 50 && seen.length >= 20, "the first events");
      },
      { url: hub.url, topic },
    );
    await kill(hub);
    hub = await startHub({ dataDir, listen });
    const result = await page.evaluate(async () => {
      const { subscriber, publisher, seen, acked, publishing } = window.resume;
      await publishing;
      const last = acked.at(-1);
      await waitUntil(() => seen.length > 0 && seen.at(-1).seq >= last, "every event", 60_000);
      subscriber.close();
      publisher.close();
      return { seen, acked };
    });
    assert.deepEqual(
      result.seen.filter((event) => event.gap !== null),
      [],
      "no gap",
    );
    const seqs = result.seen.map((event) => event.seq);
    assert.ok(
      seqs.every((seq, i) => i === 0 || seqs[i - 1] < seq),
      `in order, no duplicate: ${seqs.join(",")}`,
    );
    assert.deepEqual([...seqs].sort((a, b) => a - b), [...new Set(result.acked)].sort((a, b) => a - b));
    assert.deepEqual(
      result.seen.map((event) => event.n),
      Array.from({ length: 200 }, (_, i) => i + 1),
    );
  });
});

describe("a gap retention made is reported", () => {
  let dataDir;
  let hub;
  let configFile;

  before(() => {
    dataDir = tempDir("resume-gap");
    configFile = join(dataDir, "retention.toml");
    mkdirSync(join(dataDir, "store"));
    // Keep only the last three events of each topic, checked often.
    writeFileSync(configFile, "[retention]\nmax_events_per_topic = 3\ninterval_ms = 20\n");
  });

  after(async () => {
    await hub?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test("ctx.gap on the first event after a resume the hub could not fill", async () => {
    const args = ["--config", configFile];
    hub = await startHub({ dataDir: join(dataDir, "store"), args });
    const listen = `127.0.0.1:${hub.port}`;
    const page = await openTestPage(session.browser, session.files.origin);
    const topic = uniqueTopic("test.gap");
    await page.evaluate(
      async ({ url, topic }) => {
        // The subscriber reconnects only when told to (its delay is an hour).
        const subscriber = new promhub.PromClient(url, { reconnect: { minDelayMs: 3_600_000, maxDelayMs: 3_600_000 } });
        const publisher = new promhub.PromClient(url, { reconnect: { minDelayMs: 20, maxDelayMs: 60 } });
        await subscriber.connect();
        await publisher.connect();
        const seen = [];
        await subscriber.subscribe(topic, null, (event, ctx) => {
          seen.push({ seq: event.seq, gap: ctx.gap ?? null });
        });
        const before = [];
        for (let n = 1; n <= 2; n += 1) before.push((await publisher.publish(topic, n)).seq);
        await waitUntil(() => seen.length === 2, "the first two events");
        window.gap = { subscriber, publisher, seen, before };
      },
      { url: hub.url, topic },
    );
    await hub.stop();
    hub = await startHub({ dataDir: join(dataDir, "store"), listen, args });
    const result = await page.evaluate(
      async ({ topic }) => {
        const { subscriber, publisher, seen, before } = window.gap;
        // Ten events while the subscriber is away; retention keeps three.
        await publisher.connect();
        const away = [];
        for (let n = 3; n <= 12; n += 1) away.push((await publisher.publish(topic, n)).seq);
        // Until retention has run: a probe asking for the first missed seq
        // is told (ctx.gap) that it starts later.
        const firstMissed = away[0];
        let removed = false;
        while (!removed) {
          let first = null;
          const probe = await publisher.subscribe(topic, null, (event, ctx) => {
            first ??= ctx.gap ?? false;
          }, { from: firstMissed });
          await waitUntil(() => first !== null, "the probe's first event");
          removed = first !== false && first.to >= firstMissed;
          await probe.unsubscribe();
        }
        // Resume now.
        await subscriber.connect();
        const kept = away.slice(-3);
        await waitUntil(() => seen.at(-1).seq >= kept[2], "the kept events");
        subscriber.close();
        publisher.close();
        return { seen, before, away, kept };
      },
      { topic },
    );
    const after = result.seen.slice(2);
    const gap = after[0].gap;
    assert.ok(gap, "the first event after the resume carries the gap");
    assert.equal(gap.from, result.before[1] + 1, "from the seq after the last delivered");
    assert.ok(gap.to < after[0].seq, `${JSON.stringify(gap)} before ${after[0].seq}`);
    assert.ok(gap.to >= result.away[0], "the gap covers the removed events");
    assert.ok(after.slice(1).every((event) => event.gap === null));
    const delivered = new Set(after.map((event) => event.seq));
    assert.ok(
      result.kept.every((seq) => delivered.has(seq)),
      `what retention kept is delivered: ${JSON.stringify(after)}`,
    );
  });
});
