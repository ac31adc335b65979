#!/usr/bin/env bash
# End-to-end on a real Kubernetes cluster (kind). Runs where docker, kind, kubectl and helm are
# installed; the test command only checks this script's syntax (no cluster exists in CI).
#
#   scripts/kind-e2e.sh            create a kind cluster, build and load images, install the
#                                  operator chart, create a cluster, write, scale 3->5->3,
#                                  upgrade (new image tag), check status, clean up
#   KEEP=1 scripts/kind-e2e.sh     leave the kind cluster running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER:-concordkv-e2e}"
NS=concordkv-system
TAG="${TAG:-e2e}"
NODE_IMAGE="ghcr.io/concordkv/concord-node"
OPERATOR_IMAGE="ghcr.io/concordkv/concord-operator"

for tool in docker kind kubectl helm python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

step() { echo; echo "== $*"; }

wait_phase() { # <name> <phase> <timeout seconds>
  local deadline=$((SECONDS + $3))
  until [ "$(kubectl get concord "$1" -o jsonpath='{.status.phase}' 2>/dev/null)" = "$2" ] \
     && [ "$(kubectl get concord "$1" -o jsonpath='{.status.conditions[?(@.type=="Progressing")].status}')" = "False" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out waiting for $1 to be $2" >&2
      kubectl describe concord "$1" >&2
      kubectl -n "$NS" logs deploy/concordkv-operator --tail=100 >&2 || true
      exit 1
    fi
    sleep 3
  done
  kubectl get concord "$1"
}

kv() { # <method> <path> [body]: through the client Service, over TLS with the client Secret
  local name="kv-$RANDOM" cmd overrides
  cmd=(curl -sf --cacert /tls/ca.crt --cert /tls/tls.crt --key /tls/tls.key -X "$1" "https://example:8081$2")
  [ -n "${3:-}" ] && cmd+=(-H 'content-type: application/json' -d "$3")
  overrides="$(python3 -c 'import json, sys; print(json.dumps({"spec": {
      "volumes": [{"name": "tls", "secret": {"secretName": "example-client-tls"}}],
      "containers": [{"name": sys.argv[1], "image": "curlimages/curl:8.10.1", "args": sys.argv[2:],
                      "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": True}]}]}}))' \
      "$name" "${cmd[@]}")"
  kubectl run "$name" --rm -i --restart=Never --quiet --image=curlimages/curl:8.10.1 --overrides="$overrides"
}

cleanup() {
  if [ -z "${KEEP:-}" ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "kind cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s

step "images"
docker build -q -f docker/node.Dockerfile -t "$NODE_IMAGE:$TAG" .
docker build -q -f docker/operator.Dockerfile -t "$OPERATOR_IMAGE:$TAG" .
docker tag "$NODE_IMAGE:$TAG" "$NODE_IMAGE:$TAG-2"
kind load docker-image --name "$CLUSTER" "$NODE_IMAGE:$TAG" "$NODE_IMAGE:$TAG-2" "$OPERATOR_IMAGE:$TAG"

step "operator (helm)"
helm upgrade --install concordkv-operator charts/concordkv-operator -n "$NS" --create-namespace \
  --set image.tag="$TAG" --set image.pullPolicy=Never --wait --timeout 3m
kubectl -n "$NS" get deploy,pods

step "create a 3-member cluster"
sed "s/replicas: 3/replicas: 3\n  version: \"$TAG\"\n  imagePullPolicy: Never/" manifests/examples/minimal.yaml \
  | kubectl apply -f -
wait_phase example Running 300
kv POST /api/set '{"key":"greeting","value":"hello"}'
kv GET '/api/get?key=greeting'

step "scale 3 -> 5"
kubectl scale concord/example --replicas=5
wait_phase example Running 300
kubectl get concord example -o jsonpath='{range .status.members[*]}{.name} {.role} healthy={.healthy}{"\n"}{end}'

step "scale 5 -> 3"
kubectl scale concord/example --replicas=3
wait_phase example Running 300
kubectl get statefulset example

step "upgrade (new image tag): one pod at a time, the leader last"
kubectl patch concord example --type merge -p "{\"spec\":{\"version\":\"$TAG-2\"}}"
wait_phase example Running 600
test "$(kubectl get concord example -o jsonpath='{.status.currentImage}')" = "$NODE_IMAGE:$TAG-2"
kv GET '/api/get?key=greeting'

step "status and events"
kubectl get concord example -o wide
kubectl describe concord example | sed -n '/Events:/,$p'

step "delete"
kubectl delete concord example --wait --timeout 2m
echo "e2e passed"
