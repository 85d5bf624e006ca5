#!/usr/bin/env bash
# The Debian packages `make e2e` needs for its node, installed when missing (CI and fresh machines run as
# root): containerd + runc (the container runtime the kubelet talks CRI to), containernetworking-plugins
# (the bridge, host-local and loopback CNI plugins), iptables and conntrack (kube-proxy), docker.io (builds
# the images from the Dockerfile; its daemon runs privately, see images.sh) and mmdebstrap (the local Debian
# base image: no registry is reachable here).
set -euo pipefail
declare -A wanted=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=/usr/sbin/iptables
  [conntrack]=/usr/sbin/conntrack
  [docker.io]=/usr/sbin/dockerd
  [mmdebstrap]=/usr/bin/mmdebstrap
)
missing=()
for package in "${!wanted[@]}"; do
  [ -x "${wanted[$package]}" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "e2e: missing Debian packages: ${missing[*]}; install them (as root): apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "e2e: installing Debian packages: ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# No recommends: docker.io would pull in a whole toolchain. Services are not started here (no init on CI
# machines anyway): every daemon of `make e2e` is started by its own scripts, with its own state directory.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for package in "${missing[@]}"; do
  [ -x "${wanted[$package]}" ] || { echo "e2e: $package installed, but ${wanted[$package]} is missing" >&2; exit 1; }
done
