#!/usr/bin/env bash
# Runs every check and test ConcordKV has. Needs only the Rust toolchain (protoc is vendored).
set -euo pipefail
cd "$(dirname "$0")/.."
# The build cache lives outside the clone so repeated runs (and CI) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/concordkv-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# One build per run: incremental state would only take disk (tens of GB over a workspace).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The chaos suite's partition nemesis puts nodes in network namespaces and cuts links with
# iptables. As root (CI) install what it needs; elsewhere it says so and skips partitions.
if [ "$(id -u)" = 0 ] && ! { command -v iptables && command -v ip; } >/dev/null 2>&1; then
  echo "== installing iptables and iproute2 (partitions, the simulated cluster's network)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null
fi

# The etcd API is checked with clients nobody here wrote: Debian's etcdctl (etcd-client).
if ! command -v etcdctl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing etcdctl (Debian etcd-client, for the etcd API compatibility tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client >/dev/null
  else
    echo "etcdctl is missing: install Debian's etcd-client (the etcd API tests need it)" >&2
    exit 1
  fi
fi

# Server-Sent Events are checked with curl -N, as users stream them.
if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing curl (for the Server-Sent Events tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
  else
    echo "curl is missing: install it (the watch tests stream with curl -N)" >&2
    exit 1
  fi
fi

echo "== deployment files (charts, manifests, CRDs)"
tools="$(bash scripts/deploy-tools.sh)"
export CONCORD_TOOLS_DIR="$tools"   # moto_server for the backup tests
HELM="$tools/bin/helm" "$tools/venv/bin/python" scripts/deploy_check.py check
bash -n scripts/kind-e2e.sh

echo "== docs/openapi.json is a valid OpenAPI 3.1 document (openapi-spec-validator)"
"$tools/venv/bin/openapi-spec-validator" docs/openapi.json

echo "== one version of each stack crate (cargo tree -d)"
bash scripts/check-dup-deps.sh
echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
# Integration tests start real concord-node processes on loopback ports.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
