#!/usr/bin/env bash
# Starts or stops a local three-node ConcordKV cluster from config/node{1,2,3}.yaml.
#   scripts/cluster.sh start   # builds, starts three nodes in the background (data in ./data)
#   scripts/cluster.sh status  # shows each node's role
#   scripts/cluster.sh stop    # SIGTERM to each node
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/concordkv-target}"
BIN="$CARGO_TARGET_DIR/release/concord-node"
RUN=.cluster
case "${1:-}" in
  start)
    cargo build --release -q -p concord-node
    mkdir -p "$RUN"
    for i in 1 2 3; do
      if [ -f "$RUN/node$i.pid" ] && kill -0 "$(cat "$RUN/node$i.pid")" 2>/dev/null; then
        echo "node$i already running"; continue
      fi
      "$BIN" -config "config/node$i.yaml" >"$RUN/node$i.log" 2>&1 &
      echo $! >"$RUN/node$i.pid"
      echo "node$i started (pid $!, log $RUN/node$i.log)"
    done
    for _ in $(seq 50); do
      if curl -sf localhost:8081/readyz >/dev/null && curl -sf localhost:8083/readyz >/dev/null \
         && curl -sf localhost:8085/readyz >/dev/null; then echo "cluster ready"; exit 0; fi
      sleep 0.2
    done
    echo "cluster did not become ready; see $RUN/*.log" >&2; exit 1 ;;
  status)
    for port in 8081 8083 8085; do
      curl -s "localhost:$port/api/status" || echo "{\"api\":$port,\"error\":\"unreachable\"}"; echo
    done ;;
  stop)
    for i in 1 2 3; do
      if [ -f "$RUN/node$i.pid" ]; then
        kill -TERM "$(cat "$RUN/node$i.pid")" 2>/dev/null || true
        rm -f "$RUN/node$i.pid"
      fi
    done
    echo "stopped" ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
