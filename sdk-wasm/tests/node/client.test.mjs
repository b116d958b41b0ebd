// The npm package in Node.js, as an application uses it: the tarball of
// `npm run pack:sdk` installed into a fresh project, `import { PromClient }
// from "promhub"` there, against a real hub. Publishes, subscribes live and
// in a durable group (ACK, NACK and redelivery), survives a hub that is
// killed and started again, and checks the WebSocket option both ways
// (without `ws` installed, then with it).
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { createServer } from "node:net";
import { after, before, describe, test } from "node:test";

import { startHub, tempDir, uniqueTopic } from "../browser/harness.mjs";
import { Project, sdkTarball, wsTarball } from "./project.mjs";

/** Fast reconnects so the tests do not wait on backoff. */
const CLIENT_OPTIONS = { reconnect: { minDelayMs: 50, maxDelayMs: 500 } };
const WAIT_MS = 20_000;

/** Waits (bounded) until `check()` is truthy; returns its value. */
async function waitUntil(check, what, timeoutMs = WAIT_MS) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("promhub in Node.js, installed from the packed tarball", () => {
  let project;
  let hub;
  let hubDir;
  /** The package as the project imports it (`export * from "promhub"`). */
  let promhub;
  /** `ws` as the project imports it. */
  let ws;
  const clients = [];

  function client(options = {}) {
    const made = new promhub.PromClient(hub.url, { ...CLIENT_OPTIONS, ...options });
    clients.push(made);
    return made;
  }

  before(async () => {
    const tarball = sdkTarball();
    project = new Project();
    await project.install(tarball);
    hubDir = tempDir("node-hub");
    hub = await startHub({
      dataDir: hubDir,
      args: ["--dev-scopes", "publish:test.** subscribe:**"],
    });
  });

  after(async () => {
    for (const made of clients) made.free();
    await hub?.stop();
    if (hubDir) rmSync(hubDir, { recursive: true, force: true });
    if (project) rmSync(project.dir, { recursive: true, force: true });
  });

  test("\"promhub\" resolves to the Node.js entry, which loads the wasm from the package's own file", async () => {
    const { output } = await project.node(`
      import { readFileSync } from "node:fs";
      const entry = import.meta.resolve("promhub");
      const { PromClient } = await import("promhub");
      const pkg = JSON.parse(readFileSync(new URL("./package.json", entry), "utf8"));
      console.log(JSON.stringify({ entry, type: typeof PromClient, engines: pkg.engines, peer: pkg.peerDependencies }));
    `);
    assert.match(output.entry, /\/node_modules\/promhub\/node\.js$/);
    assert.equal(output.type, "function");
    assert.deepEqual(output.engines, { node: ">=20" });
    assert.deepEqual(output.peer, { ws: "^8.0.0" });
  });

  test("without the ws package: the global WebSocket where Node.js has one, else an error naming options.WebSocket", async () => {
    const { output } = await project.node(`
      import { PromClient } from "promhub";
      const result = { global: typeof globalThis.WebSocket === "function" };
      try {
        const client = new PromClient(${JSON.stringify(hub.url)});
        await client.connect();
        result.state = client.state;
        client.close();
      } catch (error) {
        result.error = { name: error.name, code: error.code, message: error.message };
      }
      console.log(JSON.stringify(result));
    `);
    if (output.global) {
      assert.equal(output.state, "connected", JSON.stringify(output));
    } else {
      assert.equal(output.error?.name, "PromHubError", JSON.stringify(output));
      assert.equal(output.error.code, "bad_request");
      assert.match(output.error.message, /options\.WebSocket/);
      assert.match(output.error.message, /`ws`/);
    }
  });

  describe("with the ws package installed", () => {
    before(async () => {
      await project.install(await wsTarball(project.dir));
      promhub = await project.import("promhub.mjs", 'export * from "promhub";\n');
      ws = await project.import("ws.mjs", 'export { WebSocket } from "ws";\n');
    });

    test("connects with no WebSocket option (the ws package, or Node.js' own), and closing lets the process exit", async () => {
      // A child process, so that its exit shows nothing is left running
      // after close(): no socket, and no timer (with the long timeouts
      // below, a timer left armed would hold the process for minutes).
      const topic = uniqueTopic("test.exit");
      const { output } = await project.node(
        `
        import { PromClient } from "promhub";
        const client = new PromClient(${JSON.stringify(hub.url)}, {
          heartbeatMs: 300000,
          requestTimeoutMs: 300000,
          connectTimeoutMs: 300000,
        });
        const states = [];
        client.onState((event) => states.push(event.state));
        await client.connect();
        let receive;
        const received = new Promise((resolve) => {
          receive = resolve;
        });
        await client.subscribe(${JSON.stringify(topic)}, null, (event) => receive(event.payload));
        await client.publish(${JSON.stringify(topic)}, { n: 1 });
        const payload = await received;
        client.close();
        // Still referenced, as an application's client usually is: only
        // close() may end what it keeps running (not its garbage collection).
        globalThis.keptClient = client;
        console.log(JSON.stringify({ states, payload }));
      `,
        { timeoutMs: 30_000 },
      );
      assert.deepEqual(output.states, ["connecting", "authenticating", "connected", "closed"]);
      assert.deepEqual(output.payload, { n: 1 });
    });

    test("sockets are made by options.WebSocket", async () => {
      const urls = [];
      class CountingWebSocket extends ws.WebSocket {
        constructor(url) {
          super(url);
          urls.push(url);
        }
      }
      const made = client({ WebSocket: CountingWebSocket });
      await made.connect();
      assert.equal(made.state, "connected");
      assert.deepEqual(urls, [hub.url]);
      made.close();
      assert.throws(
        () => new promhub.PromClient(hub.url, { WebSocket: "ws" }),
        (error) => error.code === "bad_request" && /options\.WebSocket/.test(error.message),
      );
    });

    test("hub URLs: http(s) becomes ws(s); a relative path or another scheme is refused", async () => {
      const viaHttp = new promhub.PromClient(hub.url.replace(/^ws:/, "http:"), {
        ...CLIENT_OPTIONS,
        WebSocket: ws.WebSocket,
      });
      clients.push(viaHttp);
      await viaHttp.connect();
      assert.equal(viaHttp.state, "connected");
      viaHttp.close();
      for (const [url, message] of [
        ["/ws", /invalid hub URL "\/ws"/],
        ["ftp://127.0.0.1/ws", /has scheme ftp:; expected ws:, wss:, http: or https:/],
      ]) {
        assert.throws(
          () => new promhub.PromClient(url, { WebSocket: ws.WebSocket }),
          (error) => error.name === "PromHubError" && error.code === "bad_request" && message.test(error.message),
          url,
        );
      }
    });

    test("an unreachable hub: refused connections are retried, then the client gives up; the process lives on", async () => {
      // A port nobody listens on: every attempt is refused (ECONNREFUSED),
      // which the ws package reports as an error event before the close.
      const server = createServer();
      await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address();
      await new Promise((resolve) => server.close(resolve));
      const refused = new promhub.PromClient(`ws://127.0.0.1:${port}/ws`, {
        reconnect: { minDelayMs: 10, maxDelayMs: 20, maxAttempts: 2 },
        WebSocket: ws.WebSocket,
      });
      clients.push(refused);
      const states = [];
      refused.onState((event) => states.push(event.state));
      await assert.rejects(refused.connect(), (error) => error.name === "PromHubError" && error.code === "closed");
      assert.equal(refused.state, "closed");
      assert.equal(states.filter((state) => state === "connecting").length, 3, JSON.stringify(states));
    });

    test("publish and a live subscription", async () => {
      const topic = uniqueTopic("test.live");
      const sub = client({ WebSocket: ws.WebSocket });
      await sub.connect();
      const received = [];
      const subscription = await sub.subscribe(`${topic}.*`, null, (event, ctx) => {
        received.push({ event, attempt: ctx.attempt });
      });
      assert.equal(subscription.topic, `${topic}.*`);
      assert.equal(subscription.group, undefined);
      const pub = client({ WebSocket: ws.WebSocket });
      await pub.connect();
      const payload = { text: "héllo ✓", n: 1, nested: { list: [1, 2, 3] } };
      const ack = await pub.publish(`${topic}.a`, payload, { key: "k1", headers: { source: "node" } });
      await waitUntil(() => received.length >= 1, "the live event");
      const [{ event }] = received;
      assert.equal(event.id, ack.id);
      assert.equal(event.seq, ack.seq);
      assert.equal(event.topic, `${topic}.a`);
      assert.equal(event.key, "k1");
      assert.deepEqual(event.headers, { source: "node" });
      assert.deepEqual(event.payload, payload);
      sub.close();
      pub.close();
    });

    test("a durable group: ACK when the handler resolves, NACK and redelivery when it throws", async () => {
      const topic = uniqueTopic("test.group");
      const { idempotent } = await project.import(
        "idempotent.mjs",
        'export { idempotent } from "promhub/idempotent";\n',
      );
      const worker = client({ WebSocket: ws.WebSocket });
      await worker.connect();
      const deliveries = [];
      let runs = 0;
      await worker.subscribe(
        topic,
        "workers",
        idempotent(async (event, ctx) => {
          deliveries.push({ id: event.id, job: event.payload.job, attempt: ctx.attempt });
          runs += 1;
          if (event.payload.job === "flaky" && ctx.attempt === 1) throw new Error("boom on the first try");
        }),
      );
      const ok = await worker.publish(topic, { job: "ok" });
      const flaky = await worker.publish(topic, { job: "flaky" });
      await waitUntil(() => deliveries.filter((d) => d.id === flaky.id).length >= 2, "the redelivery");
      const attempts = (id) => deliveries.filter((d) => d.id === id).map((d) => d.attempt);
      assert.deepEqual(attempts(flaky.id), [1, 2]);
      assert.deepEqual(attempts(ok.id), [1]);
      worker.close();

      // Both are acknowledged now: another member of the group gets only
      // what is published after (unacknowledged events would come first).
      const second = client({ WebSocket: ws.WebSocket });
      await second.connect();
      const later = [];
      await second.subscribe(topic, "workers", (event) => {
        later.push(event.id);
      });
      const marker = await second.publish(topic, { job: "marker" });
      await waitUntil(() => later.length >= 1, "the marker");
      assert.deepEqual(later, [marker.id]);
      assert.equal(runs, 3);
      second.close();
    });

    describe("the hub is killed and started again on the same port and data", () => {
      let restartDir;
      let restartHub;
      /** Connections of the clients below, as made by options.WebSocket. */
      const sockets = [];
      let CountingWebSocket;

      before(async () => {
        CountingWebSocket = class extends ws.WebSocket {
          constructor(url) {
            super(url);
            sockets.push(url);
          }
        };
        restartDir = tempDir("node-restart");
        restartHub = await startHub({ dataDir: restartDir });
      });

      after(async () => {
        await restartHub?.stop();
        if (restartDir) rmSync(restartDir, { recursive: true, force: true });
      });

      async function killAndRestart() {
        restartHub.process.kill("SIGKILL");
        await restartHub.exited;
        restartHub = await startHub({ dataDir: restartDir, listen: `127.0.0.1:${restartHub.port}` });
      }

      test("clients reconnect on their own; the group gets its unacknowledged event again; live events flow after", async () => {
        const topic = uniqueTopic("test.restart");
        const options = { ...CLIENT_OPTIONS, WebSocket: CountingWebSocket };
        const subscriber = new promhub.PromClient(restartHub.url, options);
        const publisher = new promhub.PromClient(restartHub.url, options);
        clients.push(subscriber, publisher);
        const states = [];
        subscriber.onState((event) => states.push(event));
        await subscriber.connect();
        await publisher.connect();

        const live = [];
        await subscriber.subscribe(`${topic}.*`, null, (event) => {
          live.push(event.payload.phase);
        });
        // The group holds its first delivery unacknowledged until the hub
        // is gone; the redelivery after the restart is acknowledged.
        const group = [];
        let holdFirst = true;
        await subscriber.subscribe(
          `${topic}.*`,
          "restart",
          (event, ctx) => {
            group.push({ id: event.id, attempt: ctx.attempt, phase: event.payload.phase });
            if (holdFirst) {
              holdFirst = false;
              return new Promise(() => {});
            }
            return undefined;
          },
          { ack_timeout_ms: 600_000 },
        );

        const held = await publisher.publish(`${topic}.a`, { phase: "before" });
        await waitUntil(() => group.length >= 1 && live.length >= 1, "the first event, live and in the group");
        const socketsBefore = sockets.length;

        await killAndRestart();
        await waitUntil(() => states.some((event) => event.reconnect), "a reconnect notice");
        await waitUntil(
          () => subscriber.state === "connected" && publisher.state === "connected",
          "both clients reconnected",
        );
        await waitUntil(() => group.length >= 2, "the redelivery of the unacknowledged event");
        assert.equal(group[1].id, held.id, "the held event came back");
        assert.equal(group[1].phase, "before");

        const afterAck = await publisher.publish(`${topic}.a`, { phase: "after" });
        await waitUntil(() => live.includes("after"), "the live event after the restart");
        await waitUntil(() => group.some((g) => g.id === afterAck.id), "the group event after the restart");
        assert.deepEqual(live, ["before", "after"]);
        assert.deepEqual(
          group.map((g) => g.phase),
          ["before", "before", "after"],
        );
        assert.ok(sockets.length >= socketsBefore + 2, "each client opened a new socket through options.WebSocket");
        const connected = states.filter((event) => event.state === "connected").length;
        assert.ok(connected >= 2, `connected twice: ${JSON.stringify(states.map((event) => event.state))}`);
        subscriber.close();
        publisher.close();
      });

      // Gapless live resume (semantics.md §4): the subscription resumes
      // from the seq after the last one it got.
      test(
        "a live subscription resumes after the restart with no gap and no duplicate",
        async () => {
          const topic = uniqueTopic("test.gapless");
          const options = { ...CLIENT_OPTIONS, WebSocket: CountingWebSocket };
          const subscriber = new promhub.PromClient(restartHub.url, options);
          // Publishes wait in the queue while the hub is down: no timeout.
          const publisher = new promhub.PromClient(restartHub.url, { ...options, requestTimeoutMs: 120_000 });
          clients.push(subscriber, publisher);
          await subscriber.connect();
          await publisher.connect();
          const received = [];
          await subscriber.subscribe(topic, null, (event) => {
            received.push({ n: event.payload.n, seq: event.seq });
          });

          // The publisher keeps publishing through the restart: what it
          // publishes while the hub is down waits in its queue and goes out
          // after it reconnected, possibly before the subscriber is back.
          // A publish the kill interrupted (`disconnected`: stored or not)
          // is sent again with the same id, which the hub de-duplicates, so
          // every n is stored exactly once.
          let publishing = true;
          let published = 0;
          const publishLoop = (async () => {
            for (let n = 0; publishing && n < 10_000; n += 1) {
              for (;;) {
                try {
                  await publisher.publish(topic, { n }, { id: `${topic}-${n}` });
                  break;
                } catch (error) {
                  if (error.code !== "disconnected") throw error;
                }
              }
              published = n + 1;
            }
          })();
          await waitUntil(() => received.length >= 20, "events before the restart");
          await killAndRestart();
          await waitUntil(() => subscriber.state === "connected", "the subscriber reconnected");
          const target = published + 20;
          await waitUntil(() => published >= target, "events after the restart");
          publishing = false;
          await publishLoop;
          await waitUntil(() => received.at(-1)?.n === published - 1, "the last event");

          const first = received[0].n;
          const expected = Array.from({ length: published - first }, (_, i) => first + i);
          assert.deepEqual(
            received.map((event) => event.n),
            expected,
            "every event from the first on, once, in order",
          );
          for (let i = 1; i < received.length; i += 1) {
            assert.ok(received[i].seq > received[i - 1].seq, "seqs increase");
          }
          subscriber.close();
          publisher.close();
        },
      );
    });
  });
});
