#!/usr/bin/env bash
# The audit store's tests start a private PostgreSQL server from Debian's postgresql package.
# Installs the package when its server binaries are missing (CI and fresh machines run as root).
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-postgres: PostgreSQL server binaries are missing; install Debian's postgresql package (as root)" >&2
  exit 1
fi
echo "ensure-postgres: installing Debian's postgresql package ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
