#!/usr/bin/env bash
# The state machine's job alone (bench/engines): 1M puts of 100-byte values in batches of 64,
# then 100k more with the data in place, in ConcordKV's in-memory persistent map (snapshots by
# its size rule) and in the two pure-Rust embedded engines it could move to, redb and fjall
# (durable at checkpoints every 10,000 entries; the Raft log carries durability in between).
# One JSON line per engine: the numbers behind the storage decision in docs/operations.md.
#
#   scripts/storage-engines.sh [KEYS]
set -euo pipefail
cd "$(dirname "$0")/../bench/engines"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_ENGINES:-/var/tmp/concordkv-engines-target}"
cargo build --release -q
work=$(mktemp -d /var/tmp/concord-engines.XXXXXX)
trap 'rm -rf "$work"' EXIT
for engine in memory redb fjall; do
  "$CARGO_TARGET_DIR/release/concord-engine-bench" "$engine" "$work/$engine" "${1:-1000000}"
done
