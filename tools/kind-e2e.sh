#!/usr/bin/env bash
# End-to-end run on kind (`make kind-e2e`): creates a kind cluster, builds the operator image and loads it
# into the cluster, installs charts/airun with the helm of tools/helm, then runs the integration and e2e tests
# against that cluster (AIRUN_TEST_KUBECONFIG). Needs Docker and kind; deletes the cluster afterwards unless
# KEEP_CLUSTER=1.
#
#   KIND_CLUSTER      cluster name (default airun-e2e)
#   KIND_NODE_IMAGE   kindest/node image (default: kind's own for its release)
#   IMAGE             operator image tag to build (default airun-operator:e2e)
#   --check           only check that Docker and kind are there
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

docker="${DOCKER:-docker}"
kind="${KIND:-kind}"
command -v "$docker" >/dev/null || { echo "kind-e2e: needs Docker ('$docker' not found); on machines without Docker the chart is checked by 'make test' (helm lint, server-side dry run)" >&2; exit 1; }
"$docker" info >/dev/null 2>&1 || { echo "kind-e2e: '$docker' is installed but its daemon does not answer ('$docker info' fails)" >&2; exit 1; }
command -v "$kind" >/dev/null || { echo "kind-e2e: needs kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation): '$kind' not found" >&2; exit 1; }
[ "${1:-}" = --check ] && exit 0

cluster="${KIND_CLUSTER:-airun-e2e}"
image="${IMAGE:-airun-operator:e2e}"
helm="$(bash tools/build-go-tools.sh helm)/helm"
kubectl="$(.venv/bin/python -c 'from controller.localcluster.binaries import find_binaries; print(find_binaries() / "kubectl")')"
work="$(mktemp -d)"
kubeconfig="$work/kubeconfig"

cleanup() {
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    echo "kind-e2e: cluster $cluster kept; KUBECONFIG=$kubeconfig" >&2
  else
    "$kind" delete cluster --name "$cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT

"$kind" create cluster --name "$cluster" --config kind-config.yaml --kubeconfig "$kubeconfig" --wait 180s \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
"$docker" build -t "$image" .
"$kind" load docker-image "$image" --name "$cluster"

# The test.* capabilities are on: the integration tests use them. Never do that in production.
"$helm" install airun charts/airun --kubeconfig "$kubeconfig" --namespace airun-system --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
  --set operator.testCapabilities=true --wait --timeout 5m
"$kubectl" --kubeconfig "$kubeconfig" -n airun-system rollout status deployment/airun-operator --timeout=120s

AIRUN_TEST_KUBECONFIG="$kubeconfig" AIRUN_TEST_RELEASE=airun-system/airun \
  .venv/bin/pytest tests/integration tests/e2e
