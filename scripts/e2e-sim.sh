#!/usr/bin/env bash
# The operator end to end on the simulated cluster (sim/): the real concord-operator binary
# against the simulated API server, StatefulSet controller, kubelet (real concord-node pods in
# network namespaces of their own) and DNS, through the day-2 stories; prints one report line
# per step with its time.
#
#   sudo scripts/e2e-sim.sh                      # every story
#   sudo STORY=story_3 scripts/e2e-sim.sh          # one of them
#   sudo PREVIOUS=<git rev> scripts/e2e-sim.sh     # story 5 upgrades from that revision
#
# Story 5 (a rolling upgrade) runs the previous release's concord-node: built here from the
# git revision PREVIOUS (default: the last commit of the stop before the simulated cluster
# existed), once, and cached under /var/tmp/concordkv-prev/<commit> (its own build cache
# beside it; a cold build takes several minutes). The README's test command runs every other
# story.
#
# Needs root (network namespaces, veth, a bridge; addresses in 10.214.0.0/16 only).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "!!!!! e2e-sim needs root (network namespaces); nothing was run !!!!!" >&2
  exit 2
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/concordkv-target}"
cargo build -q --workspace --bins
previous=$(git rev-parse "${PREVIOUS:-0d12fb7}^{commit}")
prev="/var/tmp/concordkv-prev/$previous"
if [ ! -x "$prev/bin/concord-node" ]; then
  echo "== building the previous release ($previous) once, into $prev"
  rm -rf "$prev/src" && mkdir -p "$prev/src" "$prev/bin"
  git archive "$previous" | tar -x -C "$prev/src"
  (cd "$prev/src" && CARGO_TARGET_DIR=/var/tmp/concordkv-prev/target CARGO_INCREMENTAL=0 \
    cargo build -q -p concord-node --bins)
  cp /var/tmp/concordkv-prev/target/debug/concord-node /var/tmp/concordkv-prev/target/debug/concordctl "$prev/bin/"
fi
export CONCORD_SIM_PREVIOUS="$prev/bin"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test -q -p concord-sim --test stories -- --include-ignored --nocapture --test-threads=1 ${STORY:-} >"$log" 2>&1 || status=$?
echo "== operator end to end on the simulated cluster ($(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD))"
grep -E '\[e2e-sim\]|^test result|SKIPPED' "$log" | sed 's/^[.]*//' || true
if [ "$status" != 0 ]; then
  echo "== FAILED; the test output:" >&2
  cat "$log" >&2
fi
exit "$status"
