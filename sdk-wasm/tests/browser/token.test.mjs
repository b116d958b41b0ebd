// Tokens: `getToken` supplies the first token, is asked again when the
// token must be refreshed (before it expires, or after the hub refused it),
// and its failures are reported and retried. The JWT tests need a hub with
// a token verifier (`PROMHUB_JWT_SECRET`); the others run against a hub in
// development mode, which accepts any token and answers a re-AUTH with OK.
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
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

const CLIENT_OPTIONS = { reconnect: { minDelayMs: 50, maxDelayMs: 500 } };

function base64url(value) {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

/** An HS256 JWT. */
export function mintToken(secret, claims) {
  const input = `${base64url({ alg: "HS256", typ: "JWT" })}.${base64url(claims)}`;
  const signature = createHmac("sha256", secret).update(input).digest("base64url");
  return `${input}.${signature}`;
}

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

describe("getToken against a hub in development mode", () => {
  let hub;
  let dataDir;

  before(async () => {
    dataDir = tempDir("token-dev");
    hub = await startHub({ dataDir });
  });

  after(async () => {
    await hub?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test("getToken supplies the first token; setToken re-authenticates on the open connection", async () => {
    const page = await openTestPage(browser, files.origin);
    const result = await page.evaluate(
      async ({ url, options, topic }) => {
        let calls = 0;
        const client = new promhub.PromClient(url, {
          ...options,
          getToken: async () => {
            calls += 1;
            return `token-${calls}`;
          },
        });
        const states = [];
        client.onState((event) => states.push(event));
        await client.connect();
        const callsAtConnect = calls;
        const session = states.find((event) => event.state === "connected").session;
        client.setToken("replacement");
        await waitUntil(() => states.some((event) => event.reason === "token refreshed"), "the refresh");
        const ack = await client.publish(topic, { after: "refresh" });
        client.close();
        return {
          callsAtConnect,
          session,
          states: states.map((event) => ({ state: event.state, reason: event.reason, session: event.session })),
          seq: ack.seq,
        };
      },
      { url: hub.url, options: CLIENT_OPTIONS, topic: uniqueTopic("test.token") },
    );
    assert.equal(result.callsAtConnect, 1);
    assert.equal(typeof result.seq, "number");
    const names = result.states.map((event) => event.state);
    // One connection: the refresh happened in place, without a reconnect.
    assert.deepEqual(names, ["connecting", "authenticating", "connected", "connected", "closed"]);
    assert.equal(result.states[3].reason, "token refreshed");
  });

  test("a failing getToken is reported to onError and retried", async () => {
    const page = await openTestPage(browser, files.origin);
    const result = await page.evaluate(
      async ({ url, options }) => {
        let calls = 0;
        const errors = [];
        const client = new promhub.PromClient(url, {
          ...options,
          getToken: () => {
            calls += 1;
            if (calls === 1) throw new Error("identity provider unreachable");
            if (calls === 2) return Promise.reject(new Error("still unreachable"));
            return Promise.resolve("good-token");
          },
        });
        client.onError((error) => errors.push({ code: error.code, message: error.message }));
        await client.connect();
        const state = client.state;
        client.close();
        return { calls, errors, state };
      },
      { url: hub.url, options: CLIENT_OPTIONS },
    );
    assert.equal(result.state, "connected");
    assert.equal(result.calls, 3);
    assert.deepEqual(
      result.errors.map((error) => error.code),
      ["token_failed", "token_failed"],
    );
    assert.match(result.errors[0].message, /identity provider unreachable/);
    assert.match(result.errors[1].message, /still unreachable/);
  });
});

describe("getToken against a hub that verifies JWTs", () => {
  const secret = randomBytes(32).toString("hex");
  let hub;
  let dataDir;

  before(async () => {
    dataDir = tempDir("token-jwt");
    hub = await startHub({
      dataDir,
      args: ["--jwt-leeway", "1"],
      env: { PROMHUB_JWT_SECRET: secret },
    });
  });

  after(async () => {
    await hub?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test("a token about to expire is replaced through getToken before the hub closes the connection", async () => {
    const page = await openTestPage(browser, files.origin);
    const now = Math.floor(Date.now() / 1000);
    // The first token expires in 4 s; the hub announces it (EXPIRING) and
    // would close at exp + 1 s leeway. The second lasts an hour.
    const tokens = [
      mintToken(secret, { sub: "browser-test", exp: now + 4, scopes: ["publish:**", "subscribe:**"] }),
      mintToken(secret, { sub: "browser-test", exp: now + 3600, scopes: ["publish:**", "subscribe:**"] }),
    ];
    const result = await page.evaluate(
      async ({ url, options, tokens, topic }) => {
        let calls = 0;
        const client = new promhub.PromClient(url, {
          ...options,
          tokenRefreshMarginMs: 2000,
          getToken: async () => tokens[Math.min(calls++, tokens.length - 1)],
        });
        const states = [];
        client.onState((event) => states.push(event));
        await client.connect();
        await waitUntil(() => states.some((event) => event.reason === "token refreshed"), "the refresh");
        // Past the first token's expiry and the leeway: still the same
        // connection, and it works.
        const firstExpiry = states.find((event) => event.state === "connected").expiresAt;
        await waitUntil(() => Date.now() > firstExpiry + 2500, "the first token's expiry", 20000);
        const ack = await client.publish(topic, { still: "connected" });
        client.close();
        return { calls, states: states.map((event) => event.state), seq: ack.seq };
      },
      { url: hub.url, options: CLIENT_OPTIONS, tokens, topic: uniqueTopic("test.jwt") },
    );
    assert.ok(result.calls >= 2, `getToken asked again: ${result.calls}`);
    assert.equal(typeof result.seq, "number");
    // One connection throughout: refreshed in place, never dropped.
    assert.deepEqual(result.states.slice(0, 4), ["connecting", "authenticating", "connected", "connected"]);
    assert.ok(
      result.states.slice(4, -1).every((state) => state === "connected"),
      `no reconnect: ${result.states.join(", ")}`,
    );
    assert.equal(result.states.at(-1), "closed");
  });

  test("a refused token makes the client ask getToken again and reconnect", async () => {
    const page = await openTestPage(browser, files.origin);
    const now = Math.floor(Date.now() / 1000);
    const tokens = [
      mintToken("not-the-hub-secret-not-the-hub-secret", { sub: "x", exp: now + 3600 }),
      mintToken(secret, { sub: "browser-test", exp: now + 3600, scopes: ["publish:**", "subscribe:**"] }),
    ];
    const result = await page.evaluate(
      async ({ url, options, tokens }) => {
        let calls = 0;
        const client = new promhub.PromClient(url, {
          ...options,
          getToken: async () => tokens[Math.min(calls++, tokens.length - 1)],
        });
        const states = [];
        client.onState((event) => states.push({ state: event.state, code: event.code, reason: event.reason }));
        await client.connect();
        const state = client.state;
        client.close();
        return { calls, state, states };
      },
      { url: hub.url, options: CLIENT_OPTIONS, tokens },
    );
    assert.equal(result.state, "connected");
    assert.equal(result.calls, 2);
    const refused = result.states.find((event) => event.state === "closed");
    assert.ok(refused, `closed after the refusal: ${JSON.stringify(result.states)}`);
    assert.match(refused.reason, /authentication refused/);
  });
});
