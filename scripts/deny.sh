#!/usr/bin/env bash
# cargo deny over the workspace's dependencies (deny.toml): licenses, banned or
# duplicated versions, and where crates come from. cargo-deny is built from crates.io
# into .tools/ on first use (a few minutes), like the other pinned tools.
#
# Advisories (the RustSec database) are checked only where that database can be cloned
# from GitHub, which CI machines here cannot reach: `scripts/deny.sh advisories`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=versions.env
. scripts/versions.env
dir=".tools/cargo-deny-$CARGO_DENY_VERSION"
if [ ! -x "$dir/bin/cargo-deny" ]; then
  echo "deny: building cargo-deny $CARGO_DENY_VERSION (first time takes a few minutes)" >&2
  cargo install --quiet --locked --root "$dir.partial" "cargo-deny@$CARGO_DENY_VERSION"
  rm -rf "$dir" && mv "$dir.partial" "$dir"
fi
checks=(licenses bans sources)
[ "${1:-}" = advisories ] && checks=(advisories)
"$dir/bin/cargo-deny" --workspace check "${checks[@]}"
