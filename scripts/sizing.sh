#!/usr/bin/env bash
# The runs behind docs/sizing.md: each spawns a fresh release hub on
# 127.0.0.1:0 (store under target/bench-data) and writes the harness's JSON
# to target/sizing/NAME.json. Bounded: every run has a count or a duration.
#
#   scripts/sizing.sh [NAME...]     (default: every run below)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p promhub-hub -p promhub-bench
B=target/release/promhub-bench
H=target/release/promhub
OUT=target/sizing
mkdir -p "$OUT"

run() { # NAME ARGS...
  local name=$1
  shift
  if [[ ${#SELECTED[@]} -gt 0 && ! " ${SELECTED[*]} " =~ " $name " ]]; then
    return
  fi
  echo "== $name: promhub-bench $*" >&2
  "$B" --json "$@" >"$OUT/$name.json"
}

SELECTED=("$@")
S=(--spawn-hub "$H")

run targets "${S[@]}" targets

# promhub against NATS JetStream, same scenarios, same run, medians of 3
# (nats-server v2.15.2 from target/nats-bin, else built with go install).
run scenarios "${S[@]}" scenarios --compare nats --runs 3

# Connections: publishers sharing the load; idle memory at 1k / 5k / 10k.
for n in 1 4 16 64; do
  run "publishers-$n" "${S[@]}" load --publishers "$n" --in-flight $((256 / n > 16 ? 256 / n : 16)) --count 100000
done
for n in 1000 5000 10000; do
  run "idle-$n" "${S[@]}" idle --connections "$n"
done

# Fan-out: one publisher, 1 to 1,000 ephemeral subscribers (~2M deliveries).
for n in 1 10 100 1000; do
  run "fanout-$n" "${S[@]}" load --subscribers "$n" --payload 128 --in-flight 64 --count $((2000000 / n < 100000 ? 2000000 / n : 100000))
done

# Payload size: durable publish, 256 in flight (~100 MB each at most).
for bytes in 64 1024 16384 65536; do
  run "payload-$bytes" "${S[@]}" load --payload "$bytes" --count $((100000000 / bytes < 100000 ? 100000000 / bytes : 100000))
done

# One publisher waiting for each PUBACK (one commit and one fsync per event).
run sync-full-1 "${S[@]}" load --in-flight 1 --count 3000

# Durable groups: live with ACKs, 1 and 4 groups of 2 members.
for g in 1 4; do
  run "groups-$g" "${S[@]}" load --subscribers $((2 * g)) --groups "$g" --count 100000
done

# Latency at a steady rate, ephemeral and durable.
run latency-ephemeral "${S[@]}" load --subscribers 1 --payload 64 --rate 5000 --duration 10
run latency-group "${S[@]}" load --subscribers 1 --groups 1 --payload 64 --rate 5000 --duration 10
