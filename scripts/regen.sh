#!/usr/bin/env bash
# Regenerates every generated file after a change to the HTTP routes, the CRD types or the charts:
# the OpenAPI document (docs/openapi.json, from the handlers),
# the CRD (from the Rust types, into manifests/ and the operator chart), the install bundle and
# the monitoring manifests (from the charts). The test command fails until these are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/concordkv-target}"
UPDATE_OPENAPI=1 cargo test -q -p concord-node --lib openapi >/dev/null
cargo run -q -p concord-operator --bin crdgen > manifests/crds/concordclusters.yaml
cp manifests/crds/concordclusters.yaml charts/concordkv-operator/crds/concordclusters.yaml
cargo run -q -p concord-operator --bin crdgen backup > manifests/crds/concordbackups.yaml
cp manifests/crds/concordbackups.yaml charts/concordkv-operator/crds/concordbackups.yaml
cargo run -q -p concord-operator --bin crdgen backup-schedule > manifests/crds/concordbackupschedules.yaml
cp manifests/crds/concordbackupschedules.yaml charts/concordkv-operator/crds/concordbackupschedules.yaml
tools="$(bash scripts/deploy-tools.sh)"
HELM="$tools/bin/helm" "$tools/venv/bin/python" scripts/deploy_check.py render
