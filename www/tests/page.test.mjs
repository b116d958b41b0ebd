// End to end: the hub serves the built page (www/dist) at `/`, the
// process-agent example publishes this machine's processes, and headless
// Chromium shows them. A process started by the test appears, turns to
// exited when killed, and goes away; the connection indicator follows a
// hub restart. Screenshots go to target/screenshots/.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { ROOT, launchBrowser, startHub, tempDir } from "../../sdk-wasm/tests/browser/harness.mjs";

const DIST = join(ROOT, "www", "dist");
const SCREENSHOTS = join(ROOT, "target", "screenshots");
/** The process-agent example: $PROMHUB_AGENT_BIN, else the debug build. */
const AGENT = process.env.PROMHUB_AGENT_BIN ?? join(ROOT, "target", "debug", "examples", "process-agent");
/** Hang guard for waits that depend on the agent's readings. */
const WAIT_MS = 30_000;
/** The bound: the table is there within 5 s of opening the page. */
const FIRST_ROWS_MS = 5_000;
const EXITED_TTL_MS = 4_000;

let hub;
let dataDir;
let agent;
let probeDir;
let browser;

function startAgent(url) {
  const child = spawn(AGENT, ["--url", url, "--interval-ms", "500"], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-10_000);
  });
  child.stderrText = () => stderr;
  return child;
}

/** Starts a process with a name of its own (a copy of `sleep`). */
function startProbe() {
  const probe = join(probeDir, "promhub-probe");
  if (!existsSync(probe)) copyFileSync("/bin/sleep", probe);
  return spawn(probe, ["600"], { stdio: "ignore" });
}

before(async () => {
  for (const [what, path] of [
    ["the built page (npm run build:www)", join(DIST, "index.html")],
    ["the process-agent (cargo build -p promhub --example process-agent)", AGENT],
  ]) {
    if (!existsSync(path)) throw new Error(`missing ${what}: ${path}`);
  }
  mkdirSync(SCREENSHOTS, { recursive: true });
  dataDir = tempDir("page");
  probeDir = tempDir("probe");
  hub = await startHub({ dataDir, args: ["--www", DIST] });
  agent = startAgent(hub.url);
  browser = await launchBrowser();
});

after(async () => {
  agent?.kill("SIGINT");
  await browser?.close();
  await hub?.stop();
  for (const dir of [dataDir, probeDir]) if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the page lists this machine's processes, live, with a probe process that exits", async () => {
  const page = await browser.context.newPage();
  const logs = [];
  page.on("console", (message) => logs.push(`[${message.type()}] ${message.text()}`));
  page.on("pageerror", (error) => logs.push(`[pageerror] ${error.message}`));
  const url = `${hub.origin}/?exitedTtlMs=${EXITED_TTL_MS}`;
  try {
    // First load: waits for the agent's first reading (hang guard only).
    await page.goto(url);
    await page.waitForSelector("#processes tbody tr", { timeout: WAIT_MS });

    // With the agent running, a fresh page shows the current table from
    // the hub's snapshot within 5 s.
    await page.goto(url);
    const loaded = Date.now();
    await page.waitForSelector("#processes tbody tr", { timeout: FIRST_ROWS_MS });
    const firstRowsMs = Date.now() - loaded;
    const rows = await page.$$eval("#processes tbody tr", (trs) => trs.map((tr) => tr.dataset));
    assert.ok(rows.length > 3, `this machine runs more than 3 processes: ${rows.length}`);
    assert.equal(await page.textContent("#connection"), "connected");
    assert.ok(
      rows.some((row) => Number(row.pid) === process.pid),
      "the test runner's own process is listed",
    );
    console.log(`# first rows ${firstRowsMs} ms after navigation; ${rows.length} processes`);

    // A process started now appears…
    const probe = startProbe();
    const probeRow = `#processes tbody tr[data-pid="${probe.pid}"]`;
    await page.waitForSelector(probeRow, { timeout: WAIT_MS });
    assert.equal(await page.getAttribute(probeRow, "data-status"), "alive");
    assert.equal(await page.textContent(`${probeRow} td.name`), "promhub-probe");
    await page.screenshot({ path: join(SCREENSHOTS, "process-state.png") });

    // …turns to exited (greyed) when killed…
    probe.kill("SIGKILL");
    await page.waitForSelector(`${probeRow}[data-status="exited"]`, { timeout: WAIT_MS });
    assert.match(await page.getAttribute(probeRow, "class"), /exited/);
    assert.equal(await page.textContent(`${probeRow} td.status`), "exited");
    await page.fill("#filter", "promhub-probe");
    await page.screenshot({ path: join(SCREENSHOTS, "process-state-exited.png") });
    await page.fill("#filter", "");

    // …and goes away after the exited TTL.
    await page.waitForSelector(probeRow, { state: "detached", timeout: WAIT_MS });

    // Sorting: by pid, ascending, then descending.
    const pids = () => page.$$eval("#processes tbody tr", (trs) => trs.map((tr) => Number(tr.dataset.pid)));
    await page.click('th[data-sort="pid"]');
    await page.waitForSelector('th[data-sort="pid"][aria-sort="ascending"]');
    const ascending = await pids();
    assert.deepEqual(ascending, [...ascending].sort((a, b) => a - b));
    await page.click('th[data-sort="pid"]');
    await page.waitForSelector('th[data-sort="pid"][aria-sort="descending"]');
    const descending = await pids();
    assert.deepEqual(descending, [...descending].sort((a, b) => b - a));
    // Alive rows get a CPU sparkline once two readings are in.
    await page.waitForFunction(
      () => [...document.querySelectorAll("#processes tbody tr[data-status=alive] polyline")].some(
        (line) => line.getAttribute("points").split(" ").length >= 2,
      ),
      null,
      { timeout: WAIT_MS },
    );
  } catch (error) {
    await page.screenshot({ path: join(SCREENSHOTS, "process-state-failure.png") }).catch(() => {});
    error.message += `\npage log:\n${logs.join("\n")}\nagent:\n${agent.stderrText()}\nhub:\n${hub.stderr()}`;
    throw error;
  }
});

test("the connection indicator shows the reconnect countdown while the hub is down", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${hub.origin}/`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: WAIT_MS });
  const port = hub.port;
  await hub.stop();
  await page.waitForSelector('#connection[data-state="reconnecting"]', { timeout: WAIT_MS });
  assert.match(await page.textContent("#connection"), /^reconnecting in \d+ s$/);
  await page.screenshot({ path: join(SCREENSHOTS, "process-state-reconnecting.png") });
  hub = await startHub({ dataDir, listen: `127.0.0.1:${port}`, args: ["--www", DIST] });
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: WAIT_MS });
  assert.equal(await page.textContent("#connection"), "connected");
  // The rows are there after the reconnect (the subscription resumed, or
  // took a fresh snapshot after a gap).
  await page.waitForSelector("#processes tbody tr", { timeout: WAIT_MS });
});
