#!/usr/bin/env bash
# `make down`: stops exactly the processes `make up` recorded in .run/pids, then removes
# what a supervisor killed outright left of its node (containers, mounts, interfaces,
# iptables chains, cgroups; a node whose owner still runs is left alone) and .run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run="$root/.run"
clean_node() {
  if [ -x "$root/target/debug/workpool-local" ]; then
    "$root/target/debug/workpool-local" clean
  fi
}
if [ ! -f "$run/pids" ]; then
  echo "down: nothing is running (no $run/pids)"
  clean_node
  rm -rf "$run"
  exit 0
fi
tac "$run/pids" | while read -r pid name; do
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # The cluster supervisor stops its pods gracefully first: give it up to a minute.
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    echo "down: stopped $name ($pid)"
  fi
done
clean_node
rm -rf "$run"
