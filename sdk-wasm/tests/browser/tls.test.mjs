// The browser SDK over wss:// to the hub's own TLS (no proxy), in headless
// Chromium: the hub's certificate comes from a private CA made for the
// test, which the browser trusts through
// --ignore-certificate-errors-spki-list (the test's stand-in for
// installing the CA); a browser without it refuses the hub.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import {
  launchBrowser,
  makeTestCertificates,
  openTestPage,
  startHub,
  startStaticServer,
  tempDir,
  uniqueTopic,
} from "./harness.mjs";

const CLIENT_OPTIONS = { reconnect: { minDelayMs: 50, maxDelayMs: 500 } };

describe("PromClient over wss://", () => {
  let hub;
  let dataDir;
  let certDir;
  let files;
  let trusting;
  let untrusting;

  before(async () => {
    dataDir = tempDir("hub");
    certDir = tempDir("certs");
    const certs = makeTestCertificates(certDir);
    hub = await startHub({ dataDir, args: ["--tls-cert", certs.cert, "--tls-key", certs.key] });
    files = await startStaticServer();
    trusting = await launchBrowser({ args: [`--ignore-certificate-errors-spki-list=${certs.spki}`] });
    untrusting = await launchBrowser();
  });

  after(async () => {
    await trusting?.close();
    await untrusting?.close();
    await files?.close();
    await hub?.stop();
    for (const dir of [dataDir, certDir]) {
      if (dir) rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the hub announces wss://", () => {
    assert.match(hub.url, /^wss:\/\/127\.0\.0\.1:\d+\/ws$/);
  });

  test("connects, publishes and receives over wss:// with the certificate trusted", async () => {
    const page = await openTestPage(trusting, files.origin);
    const topic = uniqueTopic("test.tls");
    const result = await page.evaluate(
      async ({ url, topic, options }) => {
        const client = new promhub.PromClient(url, options);
        await client.connect();
        const received = [];
        await client.subscribe(topic, "tls", async (event) => {
          received.push(event);
        });
        const ack = await client.publish(topic, { over: "wss" });
        await waitUntil(() => received.length >= 1, "the delivery");
        client.close();
        return { ack, received: received.map((event) => ({ seq: event.seq, payload: event.payload })) };
      },
      { url: hub.url, topic, options: CLIENT_OPTIONS },
    );
    assert.deepEqual(result.received, [{ seq: result.ack.seq, payload: { over: "wss" } }]);
  });

  test("a browser that does not trust the certificate cannot open the WebSocket", async () => {
    const page = await openTestPage(untrusting, files.origin);
    const outcome = await page.evaluate(
      (url) =>
        new Promise((resolve) => {
          const socket = new WebSocket(url);
          socket.onopen = () => {
            socket.close();
            resolve("open");
          };
          socket.onclose = (event) => resolve(`closed ${event.code}`);
        }),
      hub.url,
    );
    assert.equal(outcome, "closed 1006");
  });
});
