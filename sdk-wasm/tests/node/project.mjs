// A fresh Node.js project with the packed `promhub` package installed the
// way an application installs it: `npm install <tarball>`, offline, from
// the file `npm run pack:sdk` wrote (and `ws` from a tarball of the
// workspace's own pinned copy). Code runs there either in this process
// (importing the project's own modules, so "promhub" resolves from the
// project, through package.json "exports") or in a child process.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";

import { ROOT, workspaceVersion } from "../../../scripts/lib.mjs";
import { tempDir } from "../browser/harness.mjs";

const run = promisify(execFile);
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";
const CHILD_TIMEOUT_MS = 60_000;

/** The tarball of `npm run pack:sdk` ($PROMHUB_TARBALL overrides). */
export function sdkTarball() {
  const path =
    process.env.PROMHUB_TARBALL ?? join(ROOT, "target", "npm", `promhub-${workspaceVersion()}.tgz`);
  if (!existsSync(path)) {
    throw new Error(`${path} not found: run \`npm run pack:sdk\` (or \`npm run test:node\`)`);
  }
  return path;
}

/** Packs the workspace's copy of `ws` (a pinned devDependency) into `dir`. */
export async function wsTarball(dir) {
  const { stdout } = await run(
    NPM,
    ["pack", join(ROOT, "node_modules", "ws"), "--pack-destination", dir, "--ignore-scripts", "--silent"],
    { cwd: dir },
  );
  return join(dir, stdout.trim().split("\n").pop());
}

export class Project {
  constructor() {
    this.dir = tempDir("node-project");
    writeFileSync(
      join(this.dir, "package.json"),
      `${JSON.stringify({ name: "promhub-node-test", private: true, type: "module" }, null, 2)}\n`,
    );
    this.cache = join(this.dir, ".npm-cache");
    mkdirSync(this.cache);
  }

  /** `npm install --offline` of local tarballs. */
  async install(...tarballs) {
    await run(
      NPM,
      ["install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", "--cache", this.cache, ...tarballs],
      { cwd: this.dir },
    );
  }

  /** Writes a module into the project and imports it in this process. */
  async import(name, source) {
    const path = join(this.dir, name);
    writeFileSync(path, source);
    return import(pathToFileURL(path).href);
  }

  /**
   * Runs `source` as an ES module in a child `node` in the project; resolves
   * with its exit code, and its stdout parsed as JSON when it printed any.
   */
  async node(source, { timeoutMs = CHILD_TIMEOUT_MS } = {}) {
    const path = join(this.dir, `child-${Math.random().toString(36).slice(2)}.mjs`);
    writeFileSync(path, source);
    try {
      const { stdout } = await run(process.execPath, [path], { cwd: this.dir, timeout: timeoutMs });
      return { code: 0, output: stdout.trim() ? JSON.parse(stdout) : undefined };
    } catch (error) {
      const how = error.killed ? `killed after ${timeoutMs} ms` : `exit ${error.code}`;
      throw new Error(`child node ${how}:\n${error.stdout}\n${error.stderr}`);
    }
  }
}
