#!/usr/bin/env node
// Runs the Node.js SDK tests (node --test) against a real hub: the packed
// npm package (`npm run pack:sdk`) is installed into a fresh project the
// way an application installs it, and used from there.
//
//   npm run test:node                   build, pack, test
//   node scripts/test-node.mjs FILE...  only these test files
//
// Set PROMHUB_BIN to use another hub binary, SKIP_BUILD=1 to skip building
// the hub and the package (the tarball in target/npm/ must then exist).
import { spawnSync } from "node:child_process";
import { join } from "node:path";

import { ROOT, ensureNodeModules, run, step } from "./lib.mjs";

function main() {
  const files = process.argv.slice(2);
  ensureNodeModules();
  if (process.env.SKIP_BUILD !== "1") {
    if (!process.env.PROMHUB_BIN) {
      step("cargo build -p promhub-hub (debug)");
      run("cargo", ["build", "--locked", "-p", "promhub-hub", "--bin", "promhub"]);
    }
    step("build and pack the SDK package (npm run pack:sdk)");
    run(process.execPath, [join(ROOT, "scripts", "build-sdk.mjs"), "--pack", "--warn-budget"]);
  }
  const targets = files.length > 0 ? files : ["sdk-wasm/tests/node/"];
  step(`node --test ${targets.join(" ")}`);
  const result = spawnSync(process.execPath, ["--test", "--test-concurrency=1", ...targets], {
    cwd: ROOT,
    stdio: "inherit",
  });
  process.exit(result.status ?? 1);
}

try {
  main();
} catch (error) {
  console.error(`test-node: ${error.message}`);
  process.exit(1);
}
