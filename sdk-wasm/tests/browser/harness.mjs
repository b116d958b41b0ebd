// Test harness for the browser tests: a real hub process, a static file
// server for the package and the test page, and headless Chromium driven
// by playwright-core. Every wait is bounded; nothing asserts on timing.
import { execFileSync, spawn } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { createInterface } from "node:readline";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const HUB_START_TIMEOUT_MS = 60_000;
const HUB_STOP_TIMEOUT_MS = 15_000;

/** The hub binary: $PROMHUB_BIN, else the debug build in target/. */
export function hubBinary() {
  const bin = process.env.PROMHUB_BIN ?? join(ROOT, "target", "debug", "promhub");
  if (!existsSync(bin)) {
    throw new Error(`hub binary ${bin} not found: run \`cargo build -p promhub-hub\` or set PROMHUB_BIN`);
  }
  return bin;
}

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), `promhub-${prefix}-`));
}

/** SIGTERM, then SIGKILL if `child` has not exited within the stop timeout. */
async function stopChild(child, exited) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timeout = new Promise((done) => setTimeout(done, HUB_STOP_TIMEOUT_MS, "timeout"));
  if ((await Promise.race([exited, timeout])) === "timeout") {
    child.kill("SIGKILL");
    await exited;
  }
}

/**
 * Starts `promhub serve` and resolves once it printed its
 * `listening on ws://…` (or `wss://…` with TLS) line. `listen` defaults to
 * a free port.
 */
export function startHub({ dataDir, listen = "127.0.0.1:0", args = [], env = {} }) {
  const child = spawn(hubBinary(), ["serve", "--listen", listen, "--data", dataDir, ...args], {
    cwd: ROOT,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`hub did not start within ${HUB_START_TIMEOUT_MS} ms:\n${stderr}`));
    }, HUB_START_TIMEOUT_MS);
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      clearTimeout(timer);
      const match = line.match(/^listening on ((wss?):\/\/(\S+?):(\d+)(\/\S*))$/);
      if (!match) {
        child.kill("SIGKILL");
        reject(new Error(`unexpected first line from the hub: ${line}\n${stderr}`));
        return;
      }
      lines.on("line", () => {});
      const scheme = match[2] === "wss" ? "https" : "http";
      resolve({
        url: match[1],
        port: Number(match[4]),
        origin: `${scheme}://${match[3]}:${match[4]}`,
        process: child,
        stderr: () => stderr,
        exited,
        /** SIGTERM (graceful: connections closed with 1001), then wait. */
        stop: () => stopChild(child, exited),
      });
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`hub exited before listening (${code ?? signal}):\n${stderr}`));
    });
  });
}

/**
 * The FerretDB binary the Rust tests use (a MongoDB-wire server, built by
 * scripts/lib.sh): $PROMHUB_FERRETDB, `ferretdb` on PATH, or
 * ~/go/bin/ferretdb; `null` when there is none or PROMHUB_SKIP_MONGO=1.
 */
export function ferretDbBinary() {
  if (process.env.PROMHUB_SKIP_MONGO === "1") return null;
  const candidates = [process.env.PROMHUB_FERRETDB, join(process.env.HOME ?? "", "go", "bin", "ferretdb")];
  try {
    candidates.splice(1, 0, execFileSync("sh", ["-c", "command -v ferretdb"], { encoding: "utf8" }).trim());
  } catch {
    // not on PATH
  }
  return candidates.find((path) => path && existsSync(path)) ?? null;
}

/**
 * Starts FerretDB on a free port with its SQLite files in `dir`; resolves
 * once it accepts connections, with its `uri(db)` and `stop()`.
 */
export async function startFerretDb(binary, dir) {
  const port = await new Promise((resolve) => {
    const probe = createServer();
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
  const child = spawn(
    binary,
    [
      "--handler=sqlite",
      `--sqlite-url=file:${dir}/?_pragma=synchronous(full)`,
      `--listen-addr=127.0.0.1:${port}`,
      `--state-dir=${dir}`,
      "--debug-addr=-",
      "--telemetry=disable",
      "--log-level=warn",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-10_000);
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const deadline = Date.now() + HUB_START_TIMEOUT_MS;
  for (;;) {
    const accepting = await new Promise((resolve) => {
      const socket = netConnect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (accepting) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`FerretDB did not start:\n${stderr}`);
    }
    await new Promise((done) => setTimeout(done, 100));
  }
  return {
    uri: (db) => `mongodb://127.0.0.1:${port}/${db}`,
    stop: () => stopChild(child, exited),
  };
}

const CONTENT_TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".css": "text/css",
  ".map": "application/json",
};

/** Serves the files under `root` on 127.0.0.1 (a free port). */
export function startStaticServer(root = ROOT) {
  const base = normalize(root.endsWith(sep) ? root : root + sep);
  const server = createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url, "http://x").pathname);
    const file = normalize(join(base, path));
    if (!file.startsWith(base) || !existsSync(file) || !statSync(file).isFile()) {
      response.writeHead(404).end("not found");
      return;
    }
    response.writeHead(200, {
      "content-type": CONTENT_TYPES[extname(file)] ?? "application/octet-stream",
      "cache-control": "no-store",
    });
    createReadStream(file).pipe(response);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      resolve({
        origin: `http://127.0.0.1:${port}`,
        close: () => new Promise((done) => server.close(done)),
      });
    });
  });
}

/**
 * Headless Chromium with a fresh profile; `args` are added to its command
 * line (e.g. `--ignore-certificate-errors-spki-list=…`).
 */
export async function launchBrowser({ args = [] } = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  }
  const userDataDir = tempDir("chromium");
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...args,
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * For a test file: starts the static file server and headless Chromium
 * before its tests and stops them after. Returns an object whose `files`
 * and `browser` are set once `before` ran.
 */
export function useBrowser() {
  const session = { files: null, browser: null };
  before(async () => {
    session.files = await startStaticServer();
    session.browser = await launchBrowser();
  });
  after(async () => {
    await session.browser?.close();
    await session.files?.close();
  });
  return session;
}

/**
 * Opens the SDK test page (which imports the built package) and waits for
 * the module to be initialized. Console errors are collected for failure
 * messages.
 */
export async function openTestPage(browser, origin) {
  const page = await browser.context.newPage();
  const logs = [];
  page.on("console", (message) => logs.push(`[${message.type()}] ${message.text()}`));
  page.on("pageerror", (error) => logs.push(`[pageerror] ${error.message}`));
  await page.goto(`${origin}/sdk-wasm/tests/browser/page.html`);
  await page.waitForFunction(() => window.promhubReady === true || window.promhubFailed, null, {
    timeout: 30_000,
  });
  const failed = await page.evaluate(() => window.promhubFailed);
  if (failed) throw new Error(`the package failed to load: ${failed}\n${logs.join("\n")}`);
  page.logs = logs;
  return page;
}

/** A topic name of its own for each test. */
export function uniqueTopic(prefix) {
  return `${prefix}.t${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A private CA and a server certificate for `localhost` and 127.0.0.1
 * signed by it, made with the openssl CLI in `dir`. Returns the PEM paths
 * and `spki`: the base64 SHA-256 of the server certificate's public key,
 * which Chromium's `--ignore-certificate-errors-spki-list` trusts (the
 * browser's stand-in for installing the CA).
 */
export function makeTestCertificates(dir) {
  const openssl = (args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
    "-subj", "/CN=promhub test CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
  openssl(["req", ...ec, "-keyout", "hub.key", "-out", "hub.csr", "-subj", "/CN=localhost"]);
  writeFileSync(join(dir, "hub.ext"),
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n");
  openssl(["x509", "-req", "-in", "hub.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "hub.crt", "-days", "2", "-extfile", "hub.ext"]);
  const cert = new X509Certificate(readFileSync(join(dir, "hub.crt")));
  const spki = createHash("sha256")
    .update(cert.publicKey.export({ type: "spki", format: "der" }))
    .digest("base64");
  return { ca: join(dir, "ca.crt"), cert: join(dir, "hub.crt"), key: join(dir, "hub.key"), spki };
}
