#!/usr/bin/env bash
# Fails when the resolved dependency graph holds two semver-incompatible versions of a crate
# that must exist once: two tonics (or prosts, hypers, https, axums) mean two gRPC/HTTP stacks
# in one binary, types that don't interoperate and twice the compile time.
#
#   bash scripts/check-dup-deps.sh            # checks tonic prost hyper http axum tower
#   bash scripts/check-dup-deps.sh tower rand  # or the crates you name
#
# On failure it prints `cargo tree -i` for each offender: read it bottom-up to see which of
# our dependencies pulls the second version in, then move that dependency to a release built on
# the same line (or hold ours back).
set -euo pipefail
cd "$(dirname "$0")/.."
crates=("$@")
[ ${#crates[@]} -gt 0 ] || crates=(tonic prost hyper http axum tower)
tree=$(cargo tree --workspace --locked -e normal,build,dev --prefix none --format '{p}')
tree=$(sort -u <<<"$tree")
status=0
for c in "${crates[@]}"; do
  # "name vX.Y.Z" -> the semver-compatibility line: 0.x for 0.x releases, X otherwise.
  lines=$(awk -v c="$c" '$1 == c { v = substr($2, 2); split(v, p, "."); print (p[1] == "0" ? "0." p[2] : p[1]) }' <<<"$tree" | sort -u)
  n=$(grep -c . <<<"$lines" || true)
  if [ "$n" -gt 1 ]; then
    echo "duplicate $c: $(tr '\n' ' ' <<<"$lines")"
    for v in $(awk -v c="$c" '$1 == c { print substr($2, 2) }' <<<"$tree" | sort -u); do
      cargo tree --workspace --locked -e normal,build,dev -i "$c@$v" 2>/dev/null | head -20
    done
    status=1
  fi
done
[ "$status" = 0 ] && echo "one version line each of: ${crates[*]}"
exit "$status"
