#!/usr/bin/env bash
# Run every libFuzzer target in BUILD/fuzz for SECONDS each (make fuzz,
# make fuzz-smoke). The committed seeds in test/fuzz/corpus/TARGET are run
# first (regressions) and never written to; new inputs go to
# BUILD/fuzz-corpus/TARGET, crash/leak inputs to BUILD/fuzz-artifacts/.
# Exit status: non-zero if any target crashed, leaked, timed out or failed.
# Usage: test/fuzz/run.sh BUILD SECONDS [TARGET...]
set -u
build=${1:?usage: run.sh BUILD SECONDS [TARGET...]}
secs=${2:?usage: run.sh BUILD SECONDS [TARGET...]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in "$here"/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi

# Per-target input size bound: frames and configs need room, the rest less.
max_len() {
    case "$1" in
    fuzz_ws_frames) echo 65536 ;;
    fuzz_config) echo 16384 ;;
    *) echo 8192 ;;
    esac
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
failed=()
summary=()
for t in "${targets[@]}"; do
    bin=$build/fuzz/$t
    if [ ! -x "$bin" ]; then
        echo "run.sh: $bin missing (make fuzz-build)" >&2
        failed+=("$t(missing)")
        continue
    fi
    work=$build/fuzz-corpus/$t
    art=$build/fuzz-artifacts/$t
    seeds=$here/corpus/$t
    mkdir -p "$work" "$art" "$seeds"
    log=$build/fuzz-logs/$t.log
    mkdir -p "$(dirname "$log")"
    echo "== $t: ${secs}s (log $log)"
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
        -print_final_stats=1 -artifact_prefix="$art/" "$work" "$seeds" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1)
    line="$t: rc=$rc execs=${execs:-?} exec/s=${eps:-?} ${cov:-cov: ?} ${ft:-ft: ?} corpus=$(ls "$work" | wc -l)+$(ls "$seeds" | wc -l)"
    summary+=("$line")
    echo "   $line"
    if [ $rc -ne 0 ]; then
        failed+=("$t")
        grep -E 'ERROR|SUMMARY|invariant failed|runtime error|Test unit written' "$log" | head -20
    fi
done
echo "== fuzz summary"
printf '   %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in $build/fuzz-artifacts/)"
    exit 1
fi
echo "all fuzz targets clean"
