#!/usr/bin/env node
// Builds the live process.state page into www/dist: packs the SDK
// (build-sdk --pack), installs the tarball into www/ the way an application
// installs `promhub`, type-checks the page and runs `vite build`.
// `npm run build:www`.
import { existsSync } from "node:fs";
import { join } from "node:path";

import { ROOT, ensureNodeModules, npmBin, run, step, workspaceVersion } from "./lib.mjs";

const WWW = join(ROOT, "www");

function main() {
  // The page works whatever the bundle weighs; `npm run build:sdk` is
  // where the budget fails the build.
  run(process.execPath, [join(ROOT, "scripts", "build-sdk.mjs"), "--pack", "--warn-budget"]);
  ensureNodeModules();
  if (!existsSync(join(WWW, "node_modules", "vite", "package.json"))) {
    step("npm ci (www)");
    run("npm", ["ci", "--no-audit", "--no-fund"], { cwd: WWW });
  }
  const tarball = join(ROOT, "target", "npm", `promhub-${workspaceVersion()}.tgz`);
  step(`npm install ${tarball.slice(ROOT.length + 1)} (www, not saved)`);
  // Not saved: the tarball's hash changes with every build, and the page
  // must always use the package just built.
  run("npm", ["install", "--no-save", "--no-audit", "--no-fund", "--no-package-lock", tarball], { cwd: WWW });
  step("tsc --noEmit (www)");
  run(npmBin("tsc"), ["--noEmit", "-p", join(WWW, "tsconfig.json")]);
  step("vite build (www → www/dist)");
  run(join(WWW, "node_modules", ".bin", "vite"), ["build", "--logLevel", "warn"], { cwd: WWW });
}

try {
  main();
} catch (error) {
  console.error(`build-www: ${error.message}`);
  process.exit(1);
}
