#!/usr/bin/env bash
# Builds the local control plane binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl) from the pinned modules in go.mod, into a cache outside the repository keyed by version; with
# `--node`, also the node's binaries (kubelet, kube-proxy) that `make e2e` runs. Builds only what is missing,
# so a warm machine returns at once. Prints the directory holding the binaries on stdout.
#
#   AIRUN_K8S_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/airun/k8s)
set -euo pipefail
node=0
case "${1:-}" in
  --node) node=1 ;;
  "") ;;
  *) echo "build.sh: unknown argument '$1' (only --node)" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' go.mod)"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2}' go.mod)"
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] || { echo "build.sh: cannot read the pinned versions from go.mod" >&2; exit 1; }

cache_root="${AIRUN_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airun/k8s}"
out="$cache_root/$k8s_version-etcd$etcd_version"
mkdir -p "$out"

command -v go >/dev/null || { echo "build.sh: Go is needed to build the control plane (or set AIRUN_K8S_BIN to a directory holding etcd, kube-apiserver and kubectl)" >&2; exit 1; }

major="${k8s_version#v}"; major="${major%%.*}"
minor="$(echo "$k8s_version" | cut -d. -f2)"
# kubectl and the API server report the release they were built from (version skew checks read it).
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

build() {  # build NAME PACKAGE
  local name="$1" pkg="$2"
  if [ -x "$out/$name" ]; then return 0; fi
  echo "building $name ($pkg) into $out ..." >&2
  local started=$SECONDS
  CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg"
  mv "$out/$name.tmp" "$out/$name"   # atomic: a half-written binary is never taken as built
  echo "built $name in $((SECONDS - started)) s" >&2
}

build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kubectl k8s.io/kubernetes/cmd/kubectl
# Garbage collection, namespace deletion, Deployments and ReplicaSets; the scheduler places Pods on a node.
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
if [ "$node" = 1 ]; then
  build kubelet k8s.io/kubernetes/cmd/kubelet
  build kube-proxy k8s.io/kubernetes/cmd/kube-proxy
fi
echo "$out"
