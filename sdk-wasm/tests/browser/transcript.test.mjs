// The transcript test, browser side: plays tests/transcripts/*.json — one
// scripted hub conversation — against the browser SDK in headless
// Chromium. The hub's part runs on a real WebSocket server (ws-peer.mjs);
// the client's part goes through the package's public API in the page;
// every frame the client sends must equal the script's `expect` steps. The
// native SDK plays the same files (sdk-native/tests/transcript.rs), so both
// drivers send the same frames for the same conversation.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { ROOT, openTestPage, useBrowser } from "./harness.mjs";
import { listenWebSocket } from "./ws-peer.mjs";

/** Every wait is bounded: a hang becomes a failure, never a timing assertion. */
const HANG_GUARD_MS = 30_000;

const session = useBrowser();

test("reconnect, stale NACK after a redelivery, token retries and live resume", async () => {
  await play("reconnect.json");
});

async function play(name) {
  const script = JSON.parse(readFileSync(join(ROOT, "tests", "transcripts", name), "utf8"));
  const hub = await ScriptedHub.start();
  const page = await openTestPage(session.browser, session.files.origin);
  const recorded = [];
  try {
    for (const [index, step] of script.steps.entries()) {
      const at = `${name} step ${index}: ${JSON.stringify(step)}`;
      if ("connection" in step) {
        await hub.nextConnection(at);
        assert.equal(hub.number, step.connection, at);
      } else if ("expect" in step) {
        const frame = await hub.recv(at);
        recorded.push([hub.number, frame]);
        assert.deepStrictEqual(frame, step.expect, `${at}\nrecorded so far: ${JSON.stringify(recorded)}`);
      } else if ("send" in step) {
        hub.send(step.send);
      } else if ("close" in step) {
        hub.closeConnection(step.close.code, step.close.reason ?? "");
        await hub.end(at);
      } else if ("end" in step) {
        await hub.end(at);
      } else if ("do" in step) {
        await act(page, step, script.client, hub.url, at);
      } else {
        assert.fail(`${at}: unknown step`);
      }
    }
    const extra = await page.evaluate(() =>
      Object.entries(window.transcript.deliveries)
        .filter(([, queue]) => queue.length > 0)
        .map(([sub, queue]) => `${sub}: seq ${queue[0].event.seq}`),
    );
    assert.deepEqual(extra, [], "delivered beyond the script");
  } catch (error) {
    error.message += `\npage log:\n${page.logs.join("\n")}`;
    throw error;
  } finally {
    await page.close();
    await hub.stop();
  }
}

/** The client's part, in the page, through the package's API. */
async function act(page, step, settings, url, at) {
  const outcome = await page.evaluate(
    async ({ step, settings, url, guardMs }) => {
      const t = window.transcript;
      const wait = (check, what) => window.waitUntil(check, what, guardMs);
      switch (step.do) {
        case "connect": {
          const tokens = [...settings.tokens];
          const client = new promhub.PromClient(url, {
            clientName: settings.clientName,
            reconnect: { minDelayMs: settings.reconnect.minDelayMs, maxDelayMs: settings.reconnect.maxDelayMs },
            // The script's tokens in order; `fail:MESSAGE` fails with MESSAGE.
            getToken: async () => {
              const next = tokens.shift();
              if (next === undefined) throw new Error("no more tokens in the script");
              if (next.startsWith("fail:")) throw new Error(next.slice(5));
              return next;
            },
          });
          // Token failures are expected here; keep them off the console.
          client.onError(() => {});
          window.transcript = { client, connected: client.connect(), subscribing: {}, deliveries: {}, held: {}, publishes: {} };
          return null;
        }
        case "connected":
          await t.connected;
          return null;
        case "subscribe": {
          const queue = [];
          t.deliveries[step.sub] = queue;
          const durable = step.group !== undefined;
          t.subscribing[step.sub] = t.client.subscribe(
            step.topic,
            step.group ?? null,
            (event, ctx) => {
              queue.push({ event, ctx });
              // Durable deliveries are answered by the script, never
              // automatically.
              return durable ? new Promise(() => {}) : undefined;
            },
            step.opts,
          );
          return null;
        }
        case "subscribed":
          await t.subscribing[step.sub];
          return null;
        case "receive": {
          const queue = t.deliveries[step.sub];
          await wait(() => queue.length > 0, `a delivery for ${step.sub}`);
          const { event, ctx } = queue.shift();
          if (step.as !== undefined) t.held[step.as] = ctx;
          return { seq: event.seq, attempt: ctx.attempt, snapshot: ctx.snapshot === true, gap: ctx.gap ?? null };
        }
        case "publish":
          t.publishes[step.as] = t.client.publish(step.topic, step.payload);
          return null;
        case "published":
          return { seq: (await t.publishes[step.as]).seq };
        case "ack":
          return { sent: t.held[step.delivery].ack() };
        case "nack":
          return { sent: t.held[step.delivery].nack(step.reason) };
        case "working":
          return { sent: t.held[step.delivery].working() };
        case "close":
          t.client.close();
          return null;
        default:
          throw new Error(`unknown action ${step.do}`);
      }
    },
    { step, settings, url, guardMs: HANG_GUARD_MS },
  );
  switch (step.do) {
    case "receive":
      assert.equal(outcome.seq, step.seq, at);
      if (step.attempt !== undefined) assert.equal(outcome.attempt, step.attempt, at);
      assert.equal(outcome.snapshot, step.snapshot ?? false, at);
      assert.deepStrictEqual(outcome.gap, step.gap ?? null, at);
      break;
    case "published":
      assert.equal(outcome.seq, step.seq, at);
      break;
    case "ack":
    case "nack":
    case "working":
      assert.equal(outcome.sent, step.sent, at);
      break;
    default:
      break;
  }
}

/**
 * The hub's part. A connection counts once it sends a frame: one that
 * never does (an attempt the client gave up, which a browser may leave
 * half-open for a while) is ignored.
 */
class ScriptedHub {
  static async start() {
    const hub = new ScriptedHub();
    hub.#server = await listenWebSocket((peer) => hub.#accepted(peer));
    hub.url = hub.#server.url;
    return hub;
  }

  #server;
  /** Connections that spoke, not yet taken by `nextConnection`. */
  #speaking = [];
  #wake = null;
  current = null;
  number = 0;

  #accepted(peer) {
    const connection = { peer, frames: [], closed: false, spoke: false };
    peer.onText = (text) => {
      connection.frames.push(JSON.parse(text));
      if (!connection.spoke) {
        connection.spoke = true;
        this.#speaking.push(connection);
      }
      this.#notify();
    };
    peer.onClose = () => {
      connection.closed = true;
      this.#notify();
    };
  }

  #notify() {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Resolves once `ready()` holds (checked after every frame and close). */
  async #until(ready, at) {
    while (!ready()) {
      await bounded(
        new Promise((resolve) => {
          this.#wake = resolve;
        }),
        at,
      );
    }
  }

  async nextConnection(at) {
    assert.equal(this.current, null, `${at}: the last connection is open`);
    await this.#until(() => this.#speaking.length > 0, at);
    this.current = this.#speaking.shift();
    this.number += 1;
  }

  async recv(at) {
    const connection = this.current;
    assert.ok(connection, `${at}: no connection`);
    await this.#until(() => connection.frames.length > 0 || connection.closed, at);
    assert.ok(connection.frames.length > 0, `${at}: the client closed the connection`);
    return connection.frames.shift();
  }

  send(frame) {
    this.current.peer.send(JSON.stringify(frame));
  }

  closeConnection(code, reason) {
    this.current.peer.close(code, reason);
  }

  /** The connection ends with nothing more sent. */
  async end(at) {
    const connection = this.current;
    this.current = null;
    await this.#until(() => connection.closed || connection.frames.length > 0, at);
    assert.deepEqual(connection.frames, [], `${at}: the client sent more instead of closing`);
  }

  stop() {
    return this.#server.close();
  }
}

function bounded(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang guard: ${what}`)), HANG_GUARD_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
