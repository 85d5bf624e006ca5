#!/usr/bin/env bash
# Builds the `tool` directives of one Go module under tools/ (tools/helm, tools/promtool, tools/lua, ...) with
# `go install tool`, into a cache outside the repository keyed by the module's go.sum, so that a bump of any
# pinned version rebuilds and a warm machine returns at once. Prints the directory holding the binaries.
#
#   tools/build-go-tools.sh MODULE      e.g. tools/build-go-tools.sh helm
#   AIRUN_TOOLS_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/airun/tools)
set -euo pipefail
module="${1:?usage: build-go-tools.sh MODULE (a folder of tools/ holding go.mod)}"
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$module"
[ -f "$dir/go.mod" ] || { echo "build-go-tools.sh: no go.mod in $dir" >&2; exit 1; }
command -v go >/dev/null || { echo "build-go-tools.sh: Go is needed to build the $module tools" >&2; exit 1; }

# An optional build-tags file (one line) trims what a tool compiles: promtool without the service discoveries it
# never uses here builds in 2 minutes instead of 5.
tags="$(cat "$dir/build-tags" 2>/dev/null || true)"
key="$({ cat "$dir/go.mod" "$dir/go.sum" 2>/dev/null; echo "$tags"; } | sha256sum | cut -c1-16)"
out="${AIRUN_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airun/tools}/$module-$key"
if [ ! -f "$out/.complete" ]; then
  echo "building the $module tools into $out ..." >&2
  started=$SECONDS
  mkdir -p "$out.tmp"
  (cd "$dir" && CGO_ENABLED=0 GOBIN="$out.tmp" go install -mod=mod -trimpath -ldflags "-s -w" -tags "$tags" tool)
  touch "$out.tmp/.complete"
  rm -rf "$out" && mv "$out.tmp" "$out"   # atomic: a half-built set is never taken as built
  echo "built the $module tools in $((SECONDS - started)) s" >&2
fi
echo "$out"
