#!/usr/bin/env bash
# ConcordKV against etcd at 100k and 1M keys with the data in place (scripts/scale.py says
# what it measures). Takes 20-30 minutes on two cores; KEYS="100000" for a shorter run.
#
#   scripts/scale.sh
#   KEYS="100000 1000000" SYSTEMS=concordkv scripts/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/concordkv-target}"
if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
cargo build --release -q -p concord-node
# shellcheck disable=SC2086
exec python3 scripts/scale.py "$CARGO_TARGET_DIR/release/concord-node" \
  "$CARGO_TARGET_DIR/release/concordctl" ${KEYS:-100000 1000000}
