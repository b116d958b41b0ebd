// The browser SDK against a real hub, in headless Chromium: connect,
// publish/subscribe with ACK, NACK and redelivery, reconnect after a hub
// restart, argument errors and ACL refusals.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import {
  launchBrowser,
  openTestPage,
  startHub,
  startStaticServer,
  tempDir,
  uniqueTopic,
} from "./harness.mjs";

/** Fast reconnects so the tests do not wait on backoff. */
const CLIENT_OPTIONS = { reconnect: { minDelayMs: 50, maxDelayMs: 500 } };

describe("PromClient against a hub", () => {
  let hub;
  let dataDir;
  let files;
  let browser;

  before(async () => {
    dataDir = tempDir("hub");
    // Publishing to `denied.**` is refused, so ACL errors can be checked.
    hub = await startHub({
      dataDir,
      args: ["--dev-scopes", "publish:test.** publish:process.** subscribe:**"],
    });
    files = await startStaticServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await files?.close();
    await hub?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test("connects and reports the state changes", async () => {
    const page = await openTestPage(browser, files.origin);
    const result = await page.evaluate(
      async ({ url, options }) => {
        const client = new promhub.PromClient(url, options);
        const states = [];
        client.onState((event) => states.push(event));
        const before = client.state;
        await client.connect();
        const connected = client.state;
        client.close();
        return { before, connected, after: client.state, states };
      },
      { url: hub.url, options: CLIENT_OPTIONS },
    );
    assert.equal(result.before, "disconnected");
    assert.equal(result.connected, "connected");
    assert.equal(result.after, "closed");
    const names = result.states.map((event) => event.state);
    assert.deepEqual(names, ["connecting", "authenticating", "connected", "closed"]);
    const welcome = result.states[2];
    assert.equal(typeof welcome.session, "string");
    assert.ok(welcome.session.length > 0, "the hub's session id");
    assert.equal(result.states[3].reason, "requested by the application");
  });

  test("publish/subscribe round trip in a durable group, acknowledged when the handler resolves", async () => {
    const page = await openTestPage(browser, files.origin);
    const topic = uniqueTopic("test.rt");
    const result = await page.evaluate(
      async ({ url, topic, options }) => {
        const client = new promhub.PromClient(url, options);
        await client.connect();
        const received = [];
        const subscription = await client.subscribe(topic, "rt", async (event, ctx) => {
          received.push({ event, attempt: ctx.attempt, settledBefore: ctx.settled });
        });
        const ack = await client.publish(
          topic,
          { text: "héllo ✓", n: 1, nested: { list: [1, 2, 3] } },
          { key: "k1", headers: { source: "test" }, tags: ["a"] },
        );
        await waitUntil(() => received.length >= 1, "the delivery");
        // The handler resolved, so the client sent ACK. A second client in
        // the same group must not get that event again: the first thing it
        // receives is a marker published after it subscribed (unacked
        // events would be redelivered first, in seq order).
        client.close();
        const second = new promhub.PromClient(url, options);
        await second.connect();
        const later = [];
        await second.subscribe(topic, "rt", (event) => {
          later.push(event);
        });
        await second.publish(topic, { marker: true });
        await waitUntil(() => later.length >= 1, "the marker");
        second.close();
        return {
          ack,
          received,
          later: later.map((event) => ({ id: event.id, payload: event.payload })),
          subscription: { topic: subscription.topic, group: subscription.group },
        };
      },
      { url: hub.url, topic, options: CLIENT_OPTIONS },
    );
    assert.equal(typeof result.ack.id, "string");
    assert.equal(typeof result.ack.seq, "number");
    assert.equal(result.received.length, 1);
    const [{ event, attempt, settledBefore }] = result.received;
    assert.equal(event.id, result.ack.id);
    assert.equal(event.seq, result.ack.seq);
    assert.equal(event.topic, topic);
    assert.equal(event.key, "k1");
    assert.deepEqual(event.headers, { source: "test" });
    assert.deepEqual(event.tags, ["a"]);
    assert.deepEqual(event.payload, { text: "héllo ✓", n: 1, nested: { list: [1, 2, 3] } });
    assert.equal(attempt, 1);
    assert.equal(settledBefore, false);
    assert.deepEqual(result.subscription, { topic, group: "rt" });
    assert.deepEqual(result.later[0].payload, { marker: true });
    assert.ok(
      result.later.every((later) => later.id !== result.ack.id),
      "the acknowledged event was delivered again",
    );
  });

  test("a rejecting handler NACKs and the event comes back with attempt 2", async () => {
    const page = await openTestPage(browser, files.origin);
    const topic = uniqueTopic("test.nack");
    const result = await page.evaluate(
      async ({ url, topic, options }) => {
        const client = new promhub.PromClient(url, options);
        await client.connect();
        const deliveries = [];
        await client.subscribe(topic, "workers", async (event, ctx) => {
          deliveries.push({ id: event.id, attempt: ctx.attempt });
          if (ctx.attempt === 1) throw new Error("boom on the first try");
        });
        const ack = await client.publish(topic, { job: 7 });
        await waitUntil(() => deliveries.length >= 2, "the redelivery");
        client.close();
        return { ack, deliveries };
      },
      { url: hub.url, topic, options: CLIENT_OPTIONS },
    );
    assert.deepEqual(
      result.deliveries.slice(0, 2),
      [
        { id: result.ack.id, attempt: 1 },
        { id: result.ack.id, attempt: 2 },
      ],
    );
  });

  test("a throwing handler and an explicit ctx.nack are refused too; ctx.ack wins over a later rejection", async () => {
    const page = await openTestPage(browser, files.origin);
    const topic = uniqueTopic("test.explicit");
    const result = await page.evaluate(
      async ({ url, topic, options }) => {
        const client = new promhub.PromClient(url, options);
        await client.connect();
        const seen = [];
        await client.subscribe(topic, "explicit", async (event, ctx) => {
          seen.push({ kind: event.payload.kind, attempt: ctx.attempt });
          if (event.payload.kind === "sync-throw" && ctx.attempt === 1) {
            throw new Error("sync failure");
          }
          if (event.payload.kind === "explicit-nack" && ctx.attempt === 1) {
            ctx.nack("not now", { delay_ms: 10 });
            return;
          }
          if (event.payload.kind === "ack-then-reject") {
            ctx.ack();
            throw new Error("ignored: already acknowledged");
          }
        });
        await client.publish(topic, { kind: "sync-throw" });
        await client.publish(topic, { kind: "explicit-nack" });
        await client.publish(topic, { kind: "ack-then-reject" });
        await waitUntil(
          () =>
            seen.filter((s) => s.attempt === 2).length >= 2 &&
            seen.some((s) => s.kind === "ack-then-reject"),
          "both redeliveries",
        );
        // A marker in the same group shows whether ack-then-reject came back.
        await client.publish(topic, { kind: "marker" });
        await waitUntil(() => seen.some((s) => s.kind === "marker"), "the marker");
        client.close();
        return seen;
      },
      { url: hub.url, topic, options: CLIENT_OPTIONS },
    );
    const attempts = (kind) => result.filter((s) => s.kind === kind).map((s) => s.attempt);
    assert.deepEqual(attempts("sync-throw"), [1, 2]);
    assert.deepEqual(attempts("explicit-nack"), [1, 2]);
    assert.deepEqual(attempts("ack-then-reject"), [1]);
  });

  test("reconnects after the hub restarts, resubscribes, and sends what was queued meanwhile", async () => {
    const restartDir = tempDir("restart");
    let restartHub = await startHub({ dataDir: restartDir });
    const page = await openTestPage(browser, files.origin);
    const topic = uniqueTopic("test.restart");
    try {
      await page.evaluate(
        async ({ url, topic, options }) => {
          const client = new promhub.PromClient(url, options);
          window.restart = { client, topic, states: [], received: [] };
          client.onState((event) => window.restart.states.push(event));
          await client.connect();
          await client.subscribe(topic, null, (event) => {
            window.restart.received.push(event.payload);
          });
          await client.publish(topic, { phase: "before" });
          await waitUntil(() => window.restart.received.length >= 1, "the first event");
        },
        { url: restartHub.url, topic, options: CLIENT_OPTIONS },
      );
      await restartHub.stop();
      const down = await page.evaluate(async () => {
        const { client, states } = window.restart;
        await waitUntil(() => states.some((event) => event.reconnect), "a reconnect notice");
        // Not connected: this publish waits in the outbound queue.
        window.restart.queued = client.publish(window.restart.topic, { phase: "queued" });
        return { state: client.state, queued: client.queuedPublishes };
      });
      assert.notEqual(down.state, "connected");
      restartHub = await startHub({ dataDir: restartDir, listen: `127.0.0.1:${restartHub.port}` });
      const result = await page.evaluate(
        async ({ topic }) => {
          const { client, states, received } = window.restart;
          await waitUntil(() => client.state === "connected", "the reconnect");
          const ack = await client.publish(topic, { phase: "after" });
          await waitUntil(() => received.some((payload) => payload.phase === "after"), "the event after the restart");
          const queued = await window.restart.queued;
          client.close();
          return {
            ack,
            received,
            queued,
            states: states.map((event) => ({ state: event.state, reconnect: Boolean(event.reconnect), code: event.code })),
          };
        },
        { topic },
      );
      assert.equal(down.queued, 1, "the publish waited in the outbound queue");
      // Resubscribed before the queued publish was sent, so all three arrive.
      assert.deepEqual(
        result.received.map((payload) => payload.phase),
        ["before", "queued", "after"],
      );
      assert.ok(result.queued.seq < result.ack.seq, "the queued publish was stored first");
      const connectedCount = result.states.filter((event) => event.state === "connected").length;
      assert.ok(connectedCount >= 2, `connected twice: ${JSON.stringify(result.states)}`);
      const notice = result.states.find((event) => event.reconnect);
      assert.ok(notice, "a reconnect notice with its delay");
      assert.equal(notice.state, "disconnected");
    } finally {
      await restartHub.stop();
      rmSync(restartDir, { recursive: true, force: true });
    }
  });

  test("bad arguments and ACL refusals are PromHubErrors with a code", async () => {
    const page = await openTestPage(browser, files.origin);
    const topic = uniqueTopic("test.errors");
    const result = await page.evaluate(
      async ({ url, topic, options }) => {
        const codeOf = async (promise) => {
          try {
            await promise;
            return "resolved";
          } catch (error) {
            return `${error.name}:${error.code}`;
          }
        };
        const thrown = (f) => {
          try {
            f();
            return "returned";
          } catch (error) {
            return `${error.name}:${error.code}:${error.message}`;
          }
        };
        const client = new promhub.PromClient(url, options);
        await client.connect();
        const circular = {};
        circular.self = circular;
        const out = {
          wildcardTopic: await codeOf(client.publish("a.*", 1)),
          emptyTopic: await codeOf(client.publish("", 1)),
          undefinedPayload: await codeOf(client.publish(topic, undefined)),
          circularPayload: await codeOf(client.publish(topic, circular)),
          badOpts: await codeOf(client.publish(topic, 1, { key: 5 })),
          unknownOpt: await codeOf(client.publish(topic, 1, { keey: "x" })),
          badPattern: await codeOf(client.subscribe("a..b", null, () => {})),
          badGroup: await codeOf(client.subscribe(topic, "has space", () => {})),
          notAFunction: await codeOf(client.subscribe(topic, null, 42)),
          badFrom: await codeOf(client.subscribe(topic, "g", () => {}, { from: "yesterday" })),
          forbidden: await codeOf(client.publish("denied.topic", { no: true })),
          duplicate: await codeOf(
            client.subscribe(topic, null, () => {}).then(() => client.subscribe(topic, null, () => {})),
          ),
          badOption: thrown(() => new promhub.PromClient(url, { reconect: true })),
          badUrl: thrown(() => new promhub.PromClient("ftp://example/x")),
          badListener: thrown(() => client.onState("nope")),
        };
        client.close();
        out.afterClose = await codeOf(client.publish(topic, 1));
        return out;
      },
      { url: hub.url, topic, options: CLIENT_OPTIONS },
    );
    assert.equal(result.wildcardTopic, "PromHubError:bad_request");
    assert.equal(result.emptyTopic, "PromHubError:bad_request");
    assert.equal(result.undefinedPayload, "PromHubError:bad_request");
    assert.equal(result.circularPayload, "PromHubError:bad_request");
    assert.equal(result.badOpts, "PromHubError:bad_request");
    assert.equal(result.unknownOpt, "PromHubError:bad_request");
    assert.equal(result.badPattern, "PromHubError:bad_request");
    assert.equal(result.badGroup, "PromHubError:bad_request");
    assert.equal(result.notAFunction, "PromHubError:bad_request");
    assert.equal(result.badFrom, "PromHubError:bad_request");
    assert.equal(result.forbidden, "PromHubError:forbidden");
    assert.equal(result.duplicate, "PromHubError:already_subscribed");
    assert.match(result.badOption, /^PromHubError:bad_request:options: unknown field "reconect"/);
    assert.match(result.badUrl, /^PromHubError:bad_request:/);
    assert.match(result.badListener, /^PromHubError:bad_request:/);
    assert.equal(result.afterClose, "PromHubError:closed");
  });

  test("hub URLs resolve against the page, and sockets come from options.WebSocket", async () => {
    const page = await openTestPage(browser, files.origin);
    const result = await page.evaluate(
      async ({ url, options }) => {
        const urls = [];
        class CountingWebSocket extends WebSocket {
          constructor(socketUrl) {
            super(socketUrl);
            urls.push(socketUrl);
          }
        }
        // A path resolves against the page (the static server: no hub
        // there, so only the URL of the socket it opens is checked).
        const relative = new promhub.PromClient("/ws", { WebSocket: CountingWebSocket, reconnect: false });
        relative.connect().catch(() => {});
        relative.close();
        relative.free();
        const client = new promhub.PromClient(url.replace(/^ws:/, "http:"), {
          ...options,
          WebSocket: CountingWebSocket,
        });
        await client.connect();
        const state = client.state;
        client.close();
        return { urls, state };
      },
      { url: hub.url, options: CLIENT_OPTIONS },
    );
    assert.equal(result.state, "connected");
    assert.deepEqual(
      result.urls,
      [`${files.origin.replace(/^http:/, "ws:")}/ws`, hub.url],
      "/ws resolved against the page, http: became ws:, and the sockets came from the option",
    );
  });
});
