# Sourced by the benchmark scripts (bench.sh, scale.sh): from the repository root, installs
# Debian's etcd-server if it is missing and builds the release binaries; sets NODE and CTL.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/concordkv-target}"
if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
cargo build --release -q -p concord-node
NODE="$CARGO_TARGET_DIR/release/concord-node"
CTL="$CARGO_TARGET_DIR/release/concordctl"
