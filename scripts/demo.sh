#!/usr/bin/env bash
# The demo, on a fresh machine: installs what is missing, builds the browser
# SDK and the live process.state page (when stale), the hub and the
# process-agent (release), then runs the hub on the embedded store (./data)
# serving the page, and the agent publishing this machine's processes.
# Prints the URL to open; Ctrl-C stops both.
#
#   PROMHUB_LISTEN=127.0.0.1:8090 PROMHUB_DATA=./data scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

LISTEN=${PROMHUB_LISTEN:-127.0.0.1:8090}
DATA=${PROMHUB_DATA:-./data}

step "toolchain (Rust, wasm32 target) and Node.js"
ensure_rust_toolchain
ensure_node
ensure_npm_deps .
ensure_npm_deps www

if is_stale www/dist/index.html sdk-core/src sdk-core/Cargo.toml sdk-wasm/src sdk-wasm/js sdk-wasm/ts \
  sdk-wasm/Cargo.toml www/src www/index.html www/vite.config.js Cargo.lock; then
  step "browser SDK and page (scripts/build-www.mjs)"
  node scripts/build-www.mjs
else
  step "browser SDK and page are up to date (www/dist)"
fi

step "hub and process-agent (cargo build --release)"
cargo build --release --locked -p promhub-hub --bin promhub -p promhub --example process-agent

mkdir -p "$DATA" target/demo
HUB_OUT=target/demo/hub.out
: >"$HUB_OUT"
HUB_PID=
AGENT_PID=
STOPPING=
stop() {
  STOPPING=1
  trap - INT TERM EXIT
  [[ -n $AGENT_PID ]] && kill -INT "$AGENT_PID" 2>/dev/null || true
  [[ -n $HUB_PID ]] && kill -TERM "$HUB_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped" >&2
}
trap stop INT TERM EXIT

step "hub on $LISTEN (data in $DATA, development mode: no token needed)"
target/release/promhub serve --listen "$LISTEN" --data "$DATA" --www www/dist >"$HUB_OUT" &
HUB_PID=$!
if ! LINE=$(wait_first_line "$HUB_OUT" 60); then
  echo "the hub did not start (is $LISTEN in use?)" >&2
  exit 1
fi
WS_URL=${LINE#listening on }
HTTP_URL="http://${WS_URL#ws://}"
HTTP_URL="${HTTP_URL%/ws}/"

step "process-agent publishing to $WS_URL"
target/release/examples/process-agent --url "$WS_URL" 2>target/demo/agent.log &
AGENT_PID=$!

cat >&2 <<MSG

  promhub is running. Open the live process table:

      $HTTP_URL

  (agent log: target/demo/agent.log)   Ctrl-C stops the hub and the agent.

MSG
wait -n "$HUB_PID" "$AGENT_PID" || true
if [[ -z $STOPPING ]]; then
  echo "the hub or the agent stopped on its own (logs: $HUB_OUT, target/demo/agent.log)" >&2
fi
