#!/usr/bin/env bash
# `make up`: a local Workpool with no Docker and no Kubernetes (yet): nats-server with
# JetStream, the demo pool provisioned, 2 api and 2 worker processes, and a small load
# balancer on http://127.0.0.1:8080. Everything it starts is recorded in .run/pids so that
# `make down` stops exactly that.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run="$root/.run"
lb_port=${WORKPOOL_PORT:-8080}
nats_port=${WORKPOOL_NATS_PORT:-4222}
monitor_port=${WORKPOOL_NATS_MONITOR_PORT:-8222}
spec="$root/examples/demo-pool.json"

if [ -f "$run/pids" ]; then
  echo "up: already running (see $run/pids); run 'make down' first" >&2
  exit 1
fi
for port in "$lb_port" "$nats_port" "$monitor_port" 18080 18081 18180 18181; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "up: port $port on 127.0.0.1 is in use; free it (or set WORKPOOL_PORT / WORKPOOL_NATS_PORT)" >&2
    exit 1
  fi
done

nats_bin=$("$root/scripts/tools.sh" --print-bin nats-server)/nats-server
echo "up: building Workpool (first build takes a few minutes)"
(cd "$root" && cargo build --quiet --workspace --bins)
bin="$root/target/debug"

mkdir -p "$run/logs"
: > "$run/pids"
# start NAME COMMAND...: runs a process in the background, logs to .run/logs/NAME.log
start() {
  local name=$1; shift
  nohup "$@" > "$run/logs/$name.log" 2>&1 &
  echo "$! $name" >> "$run/pids"
}
wait_http() {
  local url=$1 what=$2
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "up: $what did not become ready ($url); logs in $run/logs" >&2
  exit 1
}

cat > "$run/nats.conf" <<CONF
listen: 127.0.0.1:$nats_port
http: 127.0.0.1:$monitor_port
jetstream { store_dir: "$run/nats-store" }
CONF
start nats-server "$nats_bin" -c "$run/nats.conf"
wait_http "http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true" nats-server

export WORKPOOL_NAMESPACE=default WORKPOOL_POOL=demo WORKPOOL_SPEC_FILE="$spec" NATS_URL="nats://127.0.0.1:$nats_port"
RUST_LOG=warn "$bin/workpool-local" provision
for i in 0 1; do
  POD_NAME="demo-api-$i" WORKPOOL_LISTEN="127.0.0.1:1808$i" start "demo-api-$i" "$bin/workpool-api"
  POD_NAME="demo-worker-$i" WORKPOOL_LISTEN="127.0.0.1:1818$i" start "demo-worker-$i" "$bin/workpool-worker"
done
for i in 0 1; do
  wait_http "http://127.0.0.1:1808$i/readyz" "demo-api-$i"
  wait_http "http://127.0.0.1:1818$i/readyz" "demo-worker-$i"
done
start lb "$bin/workpool-local" lb --listen "127.0.0.1:$lb_port" --backend 127.0.0.1:18080 --backend 127.0.0.1:18081
wait_http "http://127.0.0.1:$lb_port/readyz" "load balancer"

url="http://127.0.0.1:$lb_port"
cat <<DEMO

Workpool is up at $url  (nats-server, 2 api, 2 workers, load balancer; logs in .run/logs)

The original demo - POST work, then GET it a few times (the builtin "sleep" works ~3s):

  curl --json '{"data":"foo"}' $url/api/v1/work
  curl $url/api/v1/work/<callback>            # pending, working, then worked
  curl "$url/api/v1/work/<callback>?wait=30s" # or long-poll until it is done

POST again and watch "accepted_by" alternate between demo-api-0 and demo-api-1.
Results expire after 60s (resultTTL), then GET answers 404.  Stop everything: make down
DEMO
