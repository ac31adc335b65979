#!/usr/bin/env bash
# Runs every check and test ConcordKV has. Needs only the Rust toolchain (protoc is vendored).
set -euo pipefail
cd "$(dirname "$0")/.."
# The build cache lives outside the clone so repeated runs (and CI) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/concordkv-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
# Integration tests start real concord-node processes on loopback ports.
cargo test --workspace --locked
