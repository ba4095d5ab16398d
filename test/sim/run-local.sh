#!/usr/bin/env bash
# `make run`: the local demo. Starts the exchange simulator on its default
# ports (9100-9104) and exchange-service in the local profile (no ZooKeeper,
# no Kafka: the relay is the only path). Ctrl-C stops both.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/../.."
/usr/bin/python3 test/sim/sim.py > "${TMPDIR:-/tmp}/exchange-sim.out" &
sim=$!
trap 'kill $sim 2>/dev/null; wait $sim 2>/dev/null || true' EXIT
echo "exchange simulator pid $sim (ports 9100-9104); clients: ws://localhost:8080/ws/exchange; status: http://localhost:8090/"
EXCHANGE_PROFILE=local "$build/exchange-service" --conf-dir conf --profile local "$@" || true
