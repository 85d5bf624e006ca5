#!/usr/bin/env bash
# The images of `make e2e`, built here because no registry is reachable: the Pod sandbox image (pause, a static
# program FROM scratch), a Debian bookworm base with python3 (mmdebstrap, cached outside the repository) and the
# operator image from the repository's Dockerfile on that base. A private Docker daemon (vfs storage: no
# overlayfs here; its own socket, no iptables, no bridge, no ip_forward) builds them and is stopped again.
# Writes STATE/images/{pause,operator}.tar (docker save) and prints nothing else on stdout.
#
#   images.sh STATE_DIR
#   AIRUN_E2E_CACHE   the base image's rootfs and Docker's layers (default ${XDG_CACHE_HOME:-~/.cache}/airun/e2e)
#   PAUSE_IMAGE, OPERATOR_IMAGE, BASE_IMAGE   image names (defaults below)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
state="$(mkdir -p "$1" && cd "$1" && pwd)"
cache="${AIRUN_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airun/e2e}"
pause_image="${PAUSE_IMAGE:-airun.local/pause:e2e}"
operator_image="${OPERATOR_IMAGE:-airun.local/airun-operator:e2e}"
base_image="${BASE_IMAGE:-airun.local/debian-python3:bookworm}"
mkdir -p "$cache" "$state/images" "$state/run" "$state/logs"
docker=/usr/bin/docker   # Debian's docker.io client, of the same release as its daemon
log() { echo "e2e images: $*" >&2; }

# 1. The base image's root filesystem (Debian packages only; about 40 s on an idle machine, once). It trusts the
# host's local CAs (/usr/local/share/ca-certificates) and, like the host, tells pip to use the system bundle:
# where PyPI is reached through a TLS-inspecting proxy, pip in the image build needs both.
packages="python3,python3-venv,passwd,ca-certificates"
local_cas=(/usr/local/share/ca-certificates/*.crt)
[ -e "${local_cas[0]}" ] || local_cas=()
key="$( (echo "$packages"; cat "${local_cas[@]}" /dev/null) | sha256sum | cut -c1-12)"
rootfs="$cache/debian-bookworm-$key.tar"
if [ ! -s "$rootfs" ]; then
  log "building the Debian base rootfs with mmdebstrap ($packages) ..."
  started=$SECONDS
  hooks=()
  if [ ${#local_cas[@]} -gt 0 ]; then
    hooks+=(--customize-hook="copy-in ${local_cas[*]} /usr/local/share/ca-certificates"
            --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1'
            --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" >"$1/etc/pip.conf"')
  fi
  partial="${rootfs%.tar}.partial.tar"   # mmdebstrap picks the output format from the name's suffix
  mmdebstrap --quiet --variant=minbase --include="$packages" "${hooks[@]}" bookworm "$partial" >&2
  mv "$partial" "$rootfs"
  log "base rootfs in $((SECONDS - started)) s"
fi
base_image="$base_image-$key"   # a new rootfs is a new base image

# 2. A private Docker daemon: layers cached in $cache/docker, sockets and pid under STATE.
sock="$state/run/docker.sock"
pid_file="$state/run/dockerd.pid"
stop_dockerd() {
  local pid
  pid="$(cat "$pid_file" 2>/dev/null || true)"
  if [ -n "$pid" ] && grep -qa "$sock" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
  # dockerd bind-mounts the host's network namespace here and leaves it mounted when it stops.
  if mountpoint -q "$state/run/docker-exec/netns/default" 2>/dev/null; then
    umount "$state/run/docker-exec/netns/default"
  fi
}
trap stop_dockerd EXIT
stop_dockerd
dockerd --data-root "$cache/docker" --exec-root "$state/run/docker-exec" --pidfile "$pid_file" \
  --host "unix://$sock" --storage-driver vfs --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
  >>"$state/logs/dockerd.log" 2>&1 &
export DOCKER_HOST="unix://$sock" DOCKER_BUILDKIT=0
for _ in $(seq 300); do "$docker" info >/dev/null 2>&1 && break; sleep 0.2; done
"$docker" info >/dev/null 2>&1 || { log "the private Docker daemon did not start; see $state/logs/dockerd.log"; exit 1; }

if ! "$docker" image inspect "$base_image" >/dev/null 2>&1; then
  log "importing the base image $base_image ..."
  "$docker" import "$rootfs" "$base_image" >/dev/null
fi

# 3. pause: a static Go program (tools/e2e/pause) FROM scratch.
context="$state/images/pause-context"
rm -rf "$context" && mkdir -p "$context"
(cd tools/e2e/pause && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$context/pause" .)
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$context/Dockerfile"
"$docker" build --quiet -t "$pause_image" "$context" >/dev/null

# 4. The operator, from the repository's Dockerfile (pip reaches PyPI through the host's network).
log "building $operator_image from the Dockerfile on $base_image ..."
started=$SECONDS
"$docker" build --quiet --network host --build-arg BASE_IMAGE="$base_image" -t "$operator_image" . >/dev/null
log "operator image in $((SECONDS - started)) s"

# vfs keeps a full copy per layer: drop what no tagged image uses any more.
"$docker" container prune --force >/dev/null
"$docker" image prune --force >/dev/null
"$docker" save -o "$state/images/pause.tar" "$pause_image"
"$docker" save -o "$state/images/operator.tar" "$operator_image"
