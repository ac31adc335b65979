#!/usr/bin/env bash
# What catching a lagging watcher up from history costs at 100k and 1M keys, walking the keys
# of its range and walking the change index (node/examples/history_cost.rs says what it does).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/concordkv-target}"
cargo build --release --locked -p concord-node --example history_cost
for keys in 100000 1000000; do
  "$CARGO_TARGET_DIR/release/examples/history_cost" "$keys" 200000
done
