#!/usr/bin/env bash
# ConcordKV against etcd at 100k and 1M keys with the data in place (scripts/scale.py says
# what it measures). Takes 20-30 minutes on two cores; KEYS="100000" for a shorter run.
#
#   scripts/scale.sh
#   KEYS="100000 1000000" SYSTEMS=concordkv scripts/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-prereqs.sh
# shellcheck disable=SC2086
exec python3 scripts/scale.py "$NODE" "$CTL" ${KEYS:-100000 1000000}
