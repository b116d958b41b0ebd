#!/usr/bin/env node
// Runs the browser tests (node --test + playwright-core + headless Chromium)
// against a real hub. Installs what is missing (Chromium, npm dev
// dependencies), builds the hub (debug) and the SDK package, then runs the
// given test files (default: every *.test.mjs of the SDK and the page).
//
//   npm run test:browser            SDK tests (sdk-wasm/tests/browser)
//   npm run test:page               the process.state page end to end
//   npm run test:ops                the hub's /ops dashboard end to end
//   node scripts/test-browser.mjs FILE...
//
// Set PROMHUB_BIN / PROMHUB_AGENT_BIN to use other hub / process-agent
// binaries, SKIP_BUILD=1 to skip the builds (CI runs them once beforehand).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";

import { ROOT, ensureAptPackages, ensureNodeModules, run, step } from "./lib.mjs";

function main() {
  const files = process.argv.slice(2);
  if (!existsSync(process.env.CHROMIUM_PATH ?? "/usr/bin/chromium")) {
    ensureAptPackages(["chromium"]);
  }
  // The TLS test makes its test CA with the openssl CLI.
  if (!existsSync("/usr/bin/openssl")) {
    ensureAptPackages(["openssl"]);
  }
  ensureNodeModules();
  if (process.env.SKIP_BUILD !== "1") {
    if (!process.env.PROMHUB_BIN) {
      step("cargo build -p promhub-hub (debug)");
      run("cargo", ["build", "--locked", "-p", "promhub-hub", "--bin", "promhub"]);
    }
    const page = files.some((file) => file.includes("www")) || files.length === 0;
    if (page && !process.env.PROMHUB_AGENT_BIN) {
      step("cargo build -p promhub --example process-agent (debug)");
      run("cargo", ["build", "--locked", "-p", "promhub", "--example", "process-agent"]);
    }
    // The hub's own pages (hub/tests/…, e.g. /ops) need only the hub.
    const hubOnly = files.length > 0 && files.every((file) => file.startsWith("hub/"));
    if (page) {
      step("build the www page");
      run(process.execPath, [join(ROOT, "scripts", "build-www.mjs")]);
    } else if (!hubOnly) {
      step("build the SDK package");
      run(process.execPath, [join(ROOT, "scripts", "build-sdk.mjs"), "--warn-budget"]);
    }
  }
  const targets = files.length > 0 ? files : ["sdk-wasm/tests/browser/", "www/tests/"];
  step(`node --test ${targets.join(" ")}`);
  const result = spawnSync(
    process.execPath,
    ["--test", "--test-concurrency=1", ...targets],
    { cwd: ROOT, stdio: "inherit" },
  );
  process.exit(result.status ?? 1);
}

try {
  main();
} catch (error) {
  console.error(`test-browser: ${error.message}`);
  process.exit(1);
}
