#!/usr/bin/env bash
# 1, 2 and 3 hubs on one FerretDB (docs/cluster.md, "Throughput and
# latency with 1, 2 and 3 hubs"): the publisher on hub A, 4 live
# subscribers on A (1 hub) or spread over the other hubs; flat out
# (20,000 events, 64 in flight) and paced at 500 events/s for 10 s. Then
# one durable group with 3 members (ACK per event) on hub A alone, and
# one member on each of A, B and C: flat out (5,000 events) and paced at
# 200 events/s.
# Pass "groups" to run the group measurements only.
# Loopback only; every hub and FerretDB are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_ferretdb
FERRETDB=${PROMHUB_FERRETDB:-$(command -v ferretdb 2>/dev/null || echo "$HOME/go/bin/ferretdb")}
cargo build --release -q -p promhub-hub -p promhub-bench
B=target/release/promhub-bench H=target/release/promhub
dir=$(mktemp -d "$PWD/target/cluster-bench.XXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
# Hubs are started in command substitutions (subshells): their pids are
# read back from their pid files.
cleanup() { kill "${pids[@]}" $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null || true; }
trap cleanup EXIT
"$FERRETDB" --handler=sqlite "--sqlite-url=file:$dir/?_pragma=synchronous(full)" \
  --listen-addr="127.0.0.1:$port" --state-dir="$dir" --debug-addr=- --telemetry=disable \
  --log-level=warn >"$dir/ferretdb.log" 2>&1 &
pids+=($!)
sleep 2

hub() { # NAME DATABASE: starts a hub, prints its URL
  mkdir -p "$dir/$1"
  PROMHUB_DATA="$dir/$1" RUST_LOG=warn "$H" serve --listen 127.0.0.1:0 \
    --store "mongodb://127.0.0.1:$port/$2" >"$dir/$1.out" 2>"$dir/$1.err" &
  echo $! >"$dir/$1.pid"
  for _ in $(seq 100); do grep -q "listening on" "$dir/$1.out" && break; sleep 0.1; done
  sed -n 's/listening on //p' "$dir/$1.out"
}

measure() { # LABEL DATABASE HUBS
  local a others=()
  a=$(hub "a-$2" "$2")
  for k in $(seq 2 "$3"); do others+=(--subscribe-url "$(hub "h$k-$2" "$2")"); done
  sleep 1
  echo "== $1"
  "$B" --url "$a" --hub-pid "$(cat "$dir/a-$2.pid")" load --subscribers 4 --payload 256 \
    --in-flight 64 --count 20000 "${others[@]}"
  "$B" --url "$a" --hub-pid "$(cat "$dir/a-$2.pid")" load --subscribers 4 --payload 256 \
    --rate 500 --duration 10 "${others[@]}"
}

measure_group() { # LABEL DATABASE HUBS
  local a members=()
  a=$(hub "a-$2" "$2")
  members+=(--subscribe-url "$a")
  for k in $(seq 2 "$3"); do members+=(--subscribe-url "$(hub "h$k-$2" "$2")"); done
  sleep 1
  echo "== $1"
  "$B" --url "$a" --hub-pid "$(cat "$dir/a-$2.pid")" load --subscribers 3 --groups 1 \
    --max-inflight 100 --payload 256 --in-flight 64 --count 5000 "${members[@]}"
  "$B" --url "$a" --hub-pid "$(cat "$dir/a-$2.pid")" load --subscribers 3 --groups 1 \
    --max-inflight 100 --payload 256 --rate 200 --duration 10 --drain-timeout 120 "${members[@]}"
}

if [ "${1:-}" != groups ]; then
  measure "1 hub: publisher and 4 subscribers on A" one 1
  measure "2 hubs: publisher on A, 4 subscribers on B" two 2
  measure "3 hubs: publisher on A, subscribers on B and C" three 3
fi
measure_group "1 hub: a group of 3 members on A" g-one 1
measure_group "3 hubs: a group with one member on each of A, B and C" g-three 3
