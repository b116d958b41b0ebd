// The /ops dashboard end to end: a real hub (`promhub serve --admin-token`),
// headless Chromium logging in, a consumer group whose lag chart moves
// during a burst and returns to 0, and a dead letter replayed with the
// button. The publisher and the consumer are WebSockets opened in a second
// browser page (no client library needed). Screenshots go to
// target/screenshots/ops*.png. Every wait is a hang guard, not a timing
// assertion.
import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { ROOT, launchBrowser, startHub, tempDir } from "../../../sdk-wasm/tests/browser/harness.mjs";

const SCREENSHOTS = join(ROOT, "target", "screenshots");
const ADMIN_TOKEN = "ops-page-admin-token-0123456789";
const WAIT_MS = 30_000;
const BURST = 2_000;
const TOPIC = "orders.*";
const GROUP = "billing";

let hub;
let dataDir;
let browser;

before(async () => {
  mkdirSync(SCREENSHOTS, { recursive: true });
  dataDir = tempDir("ops-page");
  hub = await startHub({ dataDir, args: ["--admin-token", ADMIN_TOKEN] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await hub?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/**
 * Opens a publisher and a consumer (group GROUP on TOPIC) in `page`. The
 * consumer holds every event while paused (max_inflight 50, so the rest
 * waits in the log: lag), NACKs events with `poison: true` as final the
 * first time it sees them and ACKs everything else.
 */
async function startClients(page, url) {
  await page.evaluate(
    async ({ url, topic, group }) => {
      const open = (name) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(url);
          ws.onerror = () => reject(new Error(`${name}: WebSocket error`));
          ws.onopen = () => ws.send(JSON.stringify({ op: "AUTH" }));
          ws.onmessage = (message) => {
            const frame = JSON.parse(message.data);
            if (frame.op === "OK") resolve(ws);
          };
        });
      const publisher = await open("publisher");
      const consumer = await open("consumer");
      const state = { paused: true, held: [], seen: [], acks: 0, pubacks: 0 };
      const answer = (frame, op, extra = {}) =>
        consumer.send(JSON.stringify({ op, topic: frame.topic, group: frame.group, id: frame.event.id, ...extra }));
      consumer.onmessage = (message) => {
        const frame = JSON.parse(message.data);
        if (frame.op !== "EVENT") return;
        state.seen.push({ id: frame.event.id, attempt: frame.ctx.attempt, poison: !!frame.event.payload.poison });
        const firstTime = state.seen.filter((s) => s.id === frame.event.id).length === 1;
        if (frame.event.payload.poison && firstTime) {
          answer(frame, "NACK", { reason: "poison", final: true });
        } else if (state.paused) {
          state.held.push(frame);
        } else {
          answer(frame, "ACK");
          state.acks += 1;
        }
      };
      publisher.onmessage = (message) => {
        if (JSON.parse(message.data).op === "PUBACK") state.pubacks += 1;
      };
      await new Promise((resolve) => {
        const rid = "sub";
        const previous = consumer.onmessage;
        consumer.onmessage = (message) => {
          const frame = JSON.parse(message.data);
          if (frame.op === "SUBACK" && frame.rid === rid) {
            consumer.onmessage = previous;
            resolve();
          }
        };
        consumer.send(
          JSON.stringify({ op: "SUBSCRIBE", topic, group, rid, opts: { from: "earliest", max_inflight: 50 } }),
        );
      });
      window.ops = {
        state,
        published: 0,
        publish(count, payload) {
          for (let i = 0; i < count; i += 1) {
            // With a rid, so the hub answers PUBACK once it is durable.
            const rid = `p${(this.published += 1)}`;
            publisher.send(JSON.stringify({ op: "PUBLISH", topic: "orders.eu", payload: { i, ...payload }, rid }));
          }
        },
        resume() {
          state.paused = false;
          for (const frame of state.held.splice(0)) {
            answer(frame, "ACK");
            state.acks += 1;
          }
        },
      };
    },
    { url, topic: TOPIC, group: GROUP },
  );
}

test("log in, watch a group's lag move during a burst, replay a dead letter", async () => {
  const dashboard = await browser.context.newPage();
  const clients = await browser.context.newPage();
  const logs = [];
  for (const [name, page] of [["dashboard", dashboard], ["clients", clients]]) {
    page.on("console", (message) => logs.push(`[${name} ${message.type()}] ${message.text()}`));
    page.on("pageerror", (error) => logs.push(`[${name} pageerror] ${error.message}`));
  }
  try {
    // Without the token nothing is shown; a wrong token is refused.
    await dashboard.goto(`${hub.origin}/ops`);
    await dashboard.waitForSelector("#login:not([hidden])");
    await dashboard.fill('[data-testid="login-token"]', "wrong-token-wrong-token");
    await dashboard.click('[data-testid="login-submit"]');
    await dashboard.waitForFunction(() => document.querySelector("#login-error").textContent.length > 0, null, {
      timeout: WAIT_MS,
    });
    assert.equal(await dashboard.isVisible("#app"), false);
    await dashboard.fill('[data-testid="login-token"]', ADMIN_TOKEN);
    await dashboard.click('[data-testid="login-submit"]');
    await dashboard.waitForSelector("#app:not([hidden])", { timeout: WAIT_MS });

    await clients.goto(`${hub.origin}/ops`);
    await startClients(clients, hub.url);
    const groupCard = `[data-testid="group"][data-topic="${TOPIC}"][data-group="${GROUP}"]`;
    await dashboard.waitForSelector(groupCard, { timeout: WAIT_MS });
    await dashboard.waitForFunction(
      () => Number(document.querySelector('[data-testid="connections"]').textContent) >= 2,
      null,
      { timeout: WAIT_MS },
    );
    // One page of groups (the hub pages /groups), with the total.
    assert.equal(await dashboard.textContent('[data-testid="group-count"]'), "1");
    assert.equal(await dashboard.textContent('[data-testid="page-info"]'), "groups 1–1 of 1");
    assert.equal(await dashboard.isDisabled('[data-testid="page-next"]'), true);

    // A burst while the consumer is paused: the lag chart rises.
    await clients.evaluate((count) => window.ops.publish(count, {}), BURST);
    await clients.waitForFunction((count) => window.ops.state.pubacks === count, BURST, { timeout: WAIT_MS });
    await dashboard.waitForFunction(
      (selector) => Number(document.querySelector(`${selector} [data-testid="lag-events"]`).textContent) > 0,
      groupCard,
      { timeout: WAIT_MS },
    );
    const lagDuringBurst = Number(await dashboard.textContent(`${groupCard} [data-testid="lag-events"]`));
    assert.ok(lagDuringBurst > 0 && lagDuringBurst <= BURST, `lag during the burst: ${lagDuringBurst}`);
    await dashboard.screenshot({ path: join(SCREENSHOTS, "ops-burst.png"), fullPage: true });

    // The consumer catches up: lag back to 0, and the chart kept the peak.
    await clients.evaluate(() => window.ops.resume());
    await dashboard.waitForFunction(
      (selector) => document.querySelector(`${selector} [data-testid="lag-events"]`).textContent === "0",
      groupCard,
      { timeout: WAIT_MS },
    );
    const line = `${groupCard} [data-testid="lag-line"]`;
    assert.ok(Number(await dashboard.getAttribute(line, "data-max")) >= lagDuringBurst);
    const points = (await dashboard.getAttribute(line, "points")).split(" ");
    assert.ok(points.length >= 2, `the lag chart has a history: ${points.length} points`);
    const ys = points.map((p) => Number(p.split(",")[1]));
    assert.ok(Math.min(...ys) < Math.max(...ys), "the lag line moved");
    assert.equal(await clients.evaluate(() => window.ops.state.acks), BURST);

    // A poison event is dead-lettered; the dashboard lists it with a button.
    await clients.evaluate(() => window.ops.publish(1, { poison: true }));
    const row = `${groupCard} [data-testid="dead-letter"]`;
    await dashboard.waitForSelector(row, { timeout: WAIT_MS });
    assert.equal(await dashboard.textContent(`${groupCard} [data-testid="dead-count"]`), "1");
    await dashboard.screenshot({ path: join(SCREENSHOTS, "ops-dead-letter.png"), fullPage: true });
    await dashboard.click(`${row} [data-testid="replay"]`);
    await dashboard.waitForFunction(
      () => document.querySelector('[data-testid="notice"]').textContent.startsWith("replayed"),
      null,
      { timeout: WAIT_MS },
    );
    // Redelivered with attempt 1 and acknowledged: the dead letter is gone.
    await clients.waitForFunction(() => window.ops.state.seen.filter((s) => s.poison).length === 2, null, {
      timeout: WAIT_MS,
    });
    const poison = await clients.evaluate(() => window.ops.state.seen.filter((s) => s.poison));
    assert.equal(poison[0].id, poison[1].id);
    assert.deepEqual(
      poison.map((s) => s.attempt),
      [1, 1],
    );
    await dashboard.waitForSelector(row, { state: "detached", timeout: WAIT_MS });
    await dashboard.waitForFunction(
      (selector) => document.querySelector(`${selector} [data-testid="dead-count"]`).textContent === "0",
      groupCard,
      { timeout: WAIT_MS },
    );
    await dashboard.screenshot({ path: join(SCREENSHOTS, "ops.png"), fullPage: true });
  } catch (error) {
    await dashboard.screenshot({ path: join(SCREENSHOTS, "ops-failure.png"), fullPage: true }).catch(() => {});
    error.message += `\npage log:\n${logs.join("\n")}\nhub:\n${hub.stderr()}`;
    throw error;
  }
});
