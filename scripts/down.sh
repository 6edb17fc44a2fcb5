#!/usr/bin/env bash
# `make down`: stops exactly the processes `make up` recorded in .run/pids, then removes .run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run="$root/.run"
if [ ! -f "$run/pids" ]; then
  echo "down: nothing is running (no $run/pids)"
  rm -rf "$run"
  exit 0
fi
# Stop in reverse start order: the load balancer first, nats-server last.
tac "$run/pids" | while read -r pid name; do
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # The cluster supervisor stops its pods gracefully first: give it up to a minute.
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    echo "down: stopped $name ($pid)"
  fi
done
rm -rf "$run"
