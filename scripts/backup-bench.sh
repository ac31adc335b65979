#!/usr/bin/env bash
# Backup and restore of ConcordKV against etcd with the same data (scripts/backup_bench.py says
# what it measures). About 10 minutes at 1M keys on two cores; KEYS=100000 for a shorter run.
#
#   scripts/backup-bench.sh
#   KEYS=100000 scripts/backup-bench.sh
#   SYSTEMS=concordkv KEEP_BACKUP=/var/tmp/1m.backup scripts/backup-bench.sh   # keeps the file
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-prereqs.sh
exec python3 scripts/backup_bench.py "$NODE" "$CTL" "${KEYS:-1000000}"
