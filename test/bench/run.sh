#!/bin/bash
# `make bench`: test/bench/run.sh BUILD_DIR. Raises the open-files limit as
# far as allowed, checks the Node peer's dependency, then runs the scenarios
# (test/bench/bench.py) and prints one table. BENCH_QUICK=1: a short run;
# BENCH_ONLY=1,2 picks scenarios (1 fanout, 2 latency, 3 idle, 4 syscalls,
# 5 failover, 6 Kafka->relay switch, 7 market data: orderbook-heavy and
# mixed, 8 the physical limit of one loopback write per message, 9 write
# coalescing, 10 permessage-deflate, 11 reconnect storm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-build}" && pwd)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ ! -d "$here/node_modules/ws" ] && command -v npm >/dev/null; then
  echo "bench: installing the node peer's dependency (npm ci --prefix test/bench)" >&2
  npm ci --prefix "$here" --no-audit --no-fund >&2 || echo "bench: npm ci failed; the node peer will be n/a" >&2
fi
for b in loadgen publish wcost; do
  [ -x "$build/bench/$b" ] || { echo "bench: $build/bench/$b not built (make all)" >&2; exit 2; }
done
exec /usr/bin/python3 "$here/bench.py" "$build"
