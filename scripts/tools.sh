#!/usr/bin/env bash
# Builds the pinned upstream tools from the Go module proxy into .tools/ (git-ignored).
# Idempotent: a tool whose binary is already present is not rebuilt.
# Usage: scripts/tools.sh [--print-bin] [tool...]   (default: all tools)
#   --print-bin: print each tool's bin directory on stdout (for scripts and tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
. "$root/scripts/versions.env"
tools_dir="$root/.tools"
mkdir -p "$tools_dir"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

need_go() {
  command -v go >/dev/null || { echo "tools.sh: Go is required (https://go.dev/dl); none found on PATH" >&2; exit 1; }
}

# go_install NAME VERSION PACKAGE BINARY: plain `go install` into .tools/NAME-VERSION/bin.
go_install() {
  local name=$1 version=$2 package=$3 binary=$4
  local bin_dir="$tools_dir/$name-$version/bin"
  if [ -x "$bin_dir/$binary" ]; then
    $print_bin || echo "tools: $name $version already built ($bin_dir/$binary)" >&2
    $print_bin && echo "$bin_dir"
    return 0
  fi
  need_go
  echo "tools: building $name $version (first time takes a minute or two)" >&2
  mkdir -p "$bin_dir"
  GOBIN="$bin_dir.partial" go install -trimpath -ldflags "-s -w" "$package@$version"
  mv "$bin_dir.partial/$binary" "$bin_dir/$binary"
  rmdir "$bin_dir.partial" 2>/dev/null || true
  $print_bin && echo "$bin_dir"
  return 0
}

build_nats_server() { go_install nats-server "$NATS_SERVER_VERSION" github.com/nats-io/nats-server/v2 nats-server; }
build_natscli() { go_install natscli "$NATSCLI_VERSION" github.com/nats-io/natscli/nats nats; }

print_bin=false
if [ "${1:-}" = --print-bin ]; then print_bin=true; shift; fi

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(nats-server natscli)
for tool in "${wanted[@]}"; do
  case "$tool" in
    nats-server) build_nats_server ;;
    natscli) build_natscli ;;
    *) echo "tools.sh: unknown tool '$tool' (known: nats-server natscli)" >&2; exit 2 ;;
  esac
done
