#!/usr/bin/env bash
# Fuzz promhub-core: runs every cargo-fuzz target of sdk-core/fuzz for
# FUZZ_SECONDS seconds each (default 60), one after another.
#
#   scripts/fuzz.sh                          # all targets, 60 s each
#   FUZZ_SECONDS=10 scripts/fuzz.sh          # quick pass
#   scripts/fuzz.sh parse_policy             # only the named targets
#
# Needs a nightly toolchain (FUZZ_TOOLCHAIN, default `nightly`); installs
# cargo-fuzz when it is missing. New corpus entries go to
# sdk-core/fuzz/corpus/TARGET (not committed); crashes to
# sdk-core/fuzz/artifacts/TARGET, and the script then fails. Turn a crash
# into a regression test in sdk-core/tests before fixing it.
set -euo pipefail

cd "$(dirname "$0")/.."
fuzz_dir="$PWD/sdk-core/fuzz"
seconds="${FUZZ_SECONDS:-60}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing; installing it" >&2
    cargo install cargo-fuzz
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +"$toolchain" fuzz list --fuzz-dir "$fuzz_dir")
fi

log_dir="$fuzz_dir/target/logs"
mkdir -p "$log_dir"
summary=()
for target in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$target"
    log="$log_dir/$target.log"
    mkdir -p "$corpus"
    echo "== $target: ${seconds}s (log: $log)" >&2
    start=$(date +%s)
    status=0
    # The first corpus directory receives new inputs; the seeds are read only.
    cargo +"$toolchain" fuzz run --fuzz-dir "$fuzz_dir" "$target" \
        "$corpus" "$fuzz_dir/seeds/$target" -- \
        -max_total_time="$seconds" -dict="$fuzz_dir/json.dict" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    elapsed=$(( $(date +%s) - start ))
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "== $target FAILED (exit $status); crash input in $fuzz_dir/artifacts/$target" >&2
        exit 1
    fi
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs|stat::number_of_executed_units)' "$log" >&2 || true
    runs=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second\(s\)' "$log" | tail -n 1 || true)
    summary+=("$target: ${runs:-no libFuzzer summary} (wall ${elapsed}s incl. build)")
done

echo "== fuzz summary" >&2
printf '%s\n' "${summary[@]}"
