// Shared helpers for the Node scripts in this folder (build-sdk, build-www,
// the browser tests): running commands, installing what is missing.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

export function step(message) {
  process.stderr.write(`\n==> ${message}\n`);
}

/** Runs a command (inheriting stdio); throws with its exit status on failure. */
export function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: "inherit", cwd: ROOT, ...options });
  if (result.error) throw new Error(`${command}: ${result.error.message}`);
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (exit ${result.status ?? result.signal})`);
  }
}

/** Runs a command and returns its stdout, or null when it cannot run or fails. */
export function output(command, args, options = {}) {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: "utf8", ...options });
  if (result.error || result.status !== 0) return null;
  return result.stdout;
}

/** The `=X.Y.Z` pin of a workspace dependency in the root Cargo.toml. */
export function pinnedVersion(crate) {
  const toml = readFileSync(join(ROOT, "Cargo.toml"), "utf8");
  const match = toml.match(new RegExp(`^${crate} = "=([0-9.]+)"`, "m"));
  if (!match) throw new Error(`no "=version" pin for ${crate} in Cargo.toml`);
  return match[1];
}

/** The workspace version (`[workspace.package] version`). */
export function workspaceVersion() {
  const toml = readFileSync(join(ROOT, "Cargo.toml"), "utf8");
  const section = toml.split("[workspace.package]")[1] ?? "";
  const match = section.match(/^version = "([^"]+)"/m);
  if (!match) throw new Error("no [workspace.package] version in Cargo.toml");
  return match[1];
}

export function ensureWasmTarget() {
  const installed = output("rustup", ["target", "list", "--installed"]);
  if (installed === null) {
    throw new Error("rustup is required (https://rustup.rs)");
  }
  if (!installed.split("\n").includes("wasm32-unknown-unknown")) {
    step("adding the wasm32-unknown-unknown target");
    run("rustup", ["target", "add", "wasm32-unknown-unknown"]);
  }
}

/** wasm-bindgen-cli at exactly the version the crate is pinned to. */
export function ensureWasmBindgen() {
  const version = pinnedVersion("wasm-bindgen");
  const found = output("wasm-bindgen", ["--version"])?.trim();
  if (found === `wasm-bindgen ${version}`) return;
  step(`installing wasm-bindgen-cli ${version} (found: ${found ?? "none"})`);
  run("cargo", ["install", "wasm-bindgen-cli", "--version", version]);
}

/** The root npm dev dependencies (TypeScript, binaryen, esbuild, playwright-core, ws). */
export function ensureNodeModules() {
  const needed = ["typescript", "binaryen", "esbuild", "playwright-core", "ws"];
  if (needed.every((name) => existsSync(join(ROOT, "node_modules", name, "package.json")))) return;
  step("installing npm dev dependencies (npm ci)");
  run("npm", ["ci", "--no-audit", "--no-fund"]);
}

/** Installs Debian packages that are missing, when running as root. */
export function ensureAptPackages(packages) {
  const missing = packages.filter(
    (pkg) => output("dpkg-query", ["-W", "-f=${Status}", pkg])?.includes("install ok installed") !== true,
  );
  if (missing.length === 0) return;
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    throw new Error(`missing Debian packages: ${missing.join(" ")} (install them as root)`);
  }
  step(`installing ${missing.join(" ")}`);
  run("apt-get", ["update"]);
  run("apt-get", ["install", "-y", "--no-install-recommends", ...missing], {
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
}

/** Path of a binary in the root node_modules/.bin. */
export function npmBin(name) {
  return join(ROOT, "node_modules", ".bin", name);
}
