#!/usr/bin/env bash
# End to end on a cluster with a kubelet: the operator image built from the Dockerfile, the chart installed with
# helm (tools/helm), the operator running as a Pod with the chart's RBAC, certificates and probes, then the e2e
# tests (tests/e2e) against it. One script, two clusters:
#
#   run.sh node    `make e2e`: a single node on this machine (tools/e2e/node.py; containerd, kubelet, no
#                  registry, no Docker needed at run time), state under .airun/e2e/, removed afterwards
#   run.sh kind    `make kind-e2e`: a kind cluster (needs Docker and kind), deleted afterwards
#   run.sh kind --check   only checks that Docker and kind are there
#
#   KEEP_CLUSTER=1   leave the cluster running (prints how to reach it; `make e2e-down` / kind delete later)
#   E2E_TESTS        pytest arguments (default: tests/e2e)
#   KIND_CLUSTER, KIND_NODE_IMAGE, IMAGE   kind only: cluster name, node image, operator image tag
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo="$PWD"
cluster="${1:?usage: run.sh node|kind [--check]}"
started=$SECONDS
log() { echo "e2e [$((SECONDS - started)) s]: $*" >&2; }

release_namespace=airun-system
release=airun

# helm (tools/helm) and kubectl (tools/k8s), built once and cached.
find_tools() {
  helm="$(bash tools/build-go-tools.sh helm)/helm"
  kubectl="$(.venv/bin/python -c 'from controller.localcluster.binaries import find_binaries; print(find_binaries() / "kubectl")')"
}

case "$cluster" in
  node)
    find_tools
    state="${AIRUN_E2E_STATE:-$repo/.airun/e2e}"
    image=airun.local/airun-operator:e2e
    node() { .venv/bin/python tools/e2e/node.py "$@"; }
    cleanup() {
      local status=$?
      if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
        log "node kept; KUBECONFIG=$state/cluster/kubeconfig (make e2e-down removes it)"
      else
        log "removing the node ..."
        node down "$state" || status=1
      fi
      exit "$status"
    }
    trap cleanup EXIT
    node down "$state"   # whatever a killed earlier run left behind
    log "building the images (pause, Debian base, operator) ..."
    PAUSE_IMAGE=airun.local/pause:e2e OPERATOR_IMAGE="$image" bash tools/e2e/images.sh "$state"
    log "starting the node ..."
    kubeconfig="$(node up "$state" "$state/images/pause.tar" "$state/images/operator.tar")"
    log "node Ready"
    # No storage provisioner on this node: one hostPath PersistentVolume per claim of the chart, on the
    # node's disk under the state directory (owned by the image's user, 10001: hostPath knows no fsGroup).
    for volume in audit workspaces; do
      mkdir -p "$state/volumes/$volume" && chown 10001:10001 "$state/volumes/$volume"
      "$kubectl" --kubeconfig "$kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: airun-e2e-$volume}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: airun-e2e-hostpath
  claimRef: {namespace: $release_namespace, name: $release-$volume}
  hostPath: {path: "$state/volumes/$volume", type: Directory}
EOF
    done
    storage=(--set audit.sqlite.persistence.storageClass=airun-e2e-hostpath
             --set workspaces.persistence.storageClass=airun-e2e-hostpath)
    ;;
  kind)
    docker="${DOCKER:-docker}"
    kind="${KIND:-kind}"
    command -v "$docker" >/dev/null || { echo "kind-e2e: needs Docker ('$docker' not found); without Docker, make e2e runs a node on this machine" >&2; exit 1; }
    "$docker" info >/dev/null 2>&1 || { echo "kind-e2e: '$docker' is installed but its daemon does not answer ('$docker info' fails)" >&2; exit 1; }
    command -v "$kind" >/dev/null || { echo "kind-e2e: needs kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation): '$kind' not found" >&2; exit 1; }
    [ "${2:-}" = --check ] && exit 0
    find_tools
    kind_cluster="${KIND_CLUSTER:-airun-e2e}"
    image="${IMAGE:-airun-operator:e2e}"
    work="$(mktemp -d)"
    kubeconfig="$work/kubeconfig"
    cleanup() {
      local status=$?
      if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
        log "cluster $kind_cluster kept; KUBECONFIG=$kubeconfig"
      else
        "$kind" delete cluster --name "$kind_cluster" >/dev/null 2>&1 || true
        rm -rf "$work"
      fi
      exit "$status"
    }
    trap cleanup EXIT
    "$kind" create cluster --name "$kind_cluster" --config kind-config.yaml --kubeconfig "$kubeconfig" --wait 180s \
      ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
    "$docker" build -t "$image" .
    "$kind" load docker-image "$image" --name "$kind_cluster"
    storage=()   # kind has a default StorageClass
    ;;
  *)
    echo "run.sh: unknown cluster '$cluster' (node or kind)" >&2
    exit 2
    ;;
esac

# The same from here on, whatever the cluster. The test.* capabilities are on: the tests use them. Never do
# that in production.
log "helm install $release ($image) ..."
"$helm" install "$release" charts/airun --kubeconfig "$kubeconfig" --namespace "$release_namespace" --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
  --set operator.testCapabilities=true "${storage[@]}" --wait --timeout 5m
"$kubectl" --kubeconfig "$kubeconfig" -n "$release_namespace" rollout status "deployment/$release-operator" --timeout=120s
log "operator Pod ready; running the tests ..."
read -r -a tests <<<"${E2E_TESTS:-tests/e2e}"
AIRUN_TEST_KUBECONFIG="$kubeconfig" AIRUN_TEST_RELEASE="$release_namespace/$release" AIRUN_TEST_HELM="$helm" \
  .venv/bin/pytest -p no:cacheprovider "${tests[@]}"
log "passed"
