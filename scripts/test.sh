#!/usr/bin/env bash
# Runs every promhub test from a fresh machine: installs what is missing
# (Rust toolchain and targets, FerretDB, npm packages, wasm-bindgen-cli,
# Chromium), then format, lint, unit, integration, MongoDB-store, wasm,
# Node.js and browser tests. Used as-is by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

step "toolchain"
ensure_rust_toolchain

step "format"
cargo fmt --all -- --check

step "clippy (native)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "clippy (promhub-outbox without a store, and with MongoDB only: the hub's build)"
cargo clippy -p promhub-outbox --no-default-features --locked -- -D warnings
cargo clippy -p promhub-outbox --no-default-features --features mongodb --locked -- -D warnings

step "clippy (wasm32)"
cargo clippy -p promhub-core -p promhub-wasm --target wasm32-unknown-unknown --locked -- -D warnings
cargo clippy -p promhub-core --features js --lib --profile test --target wasm32-unknown-unknown --locked -- -D warnings

step "build sdk-core for wasm32"
cargo build -p promhub-core --target wasm32-unknown-unknown --locked

step "sdk-core's JavaScript frame codec against serde_json, in Node (wasm32)"
ensure_node
ensure_wasm_bindgen_cli
cargo test -p promhub-core --features js --lib --target wasm32-unknown-unknown --locked

step "fuzz targets compile (run them with scripts/fuzz.sh)"
for fuzz_crate in sdk-core/fuzz hub/fuzz; do
  # Not --locked: these lock files follow the main workspace's dependencies.
  cargo clippy --manifest-path "$fuzz_crate/Cargo.toml" --all-targets -- -D warnings
done

step "FerretDB for the MongoDB store tests"
ensure_ferretdb

step "tests"
cargo test --workspace --locked

step "SDK: build the npm package and pack it (wasm-bindgen, wasm-opt, tsc typing test, bundle check, npm pack)"
ensure_node
ensure_npm_deps .
npm run pack:sdk

step "Node.js SDK tests (the packed package installed in a fresh project, against a real hub)"
# The hub binary was built by cargo test above, the tarball by pack:sdk.
SKIP_BUILD=1 npm run test:node

step "browser tests (headless Chromium against a real hub)"
npm run test:browser

step "process.state page end to end (hub + process-agent + page)"
npm run test:page

step "ops dashboard end to end (hub /ops in headless Chromium)"
npm run test:ops

if [[ "${FUZZ_SECONDS:-0}" != "0" ]]; then
  step "fuzz (${FUZZ_SECONDS}s per target)"
  scripts/fuzz.sh
fi

step "all tests passed"
