#!/usr/bin/env bash
# `make up`: a local Workpool on a real Kubernetes cluster, with no Docker: etcd +
# kube-apiserver + kube-controller-manager + kube-scheduler, a real node (containerd,
# runc, kubelet, kube-proxy in iptables mode, CoreDNS) running our own image, nats-server
# behind the Service nats.workpool-system, Prometheus on :9090, the chart installed with
# helm (the operator runs as a pod), the demo WorkPool from examples/workpool.yaml as it
# is, and http://127.0.0.1:8080 in front of the api Service's ClusterIP.
# One supervisor process runs it all; `make down` stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run="$root/.run"
port=${WORKPOOL_PORT:-8080}
prometheus_port=${WORKPOOL_PROMETHEUS_PORT:-9090}

if [ -f "$run/pids" ]; then
  echo "up: already running (see $run/pids); run 'make down' first" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "up: the local cluster runs containerd and kubelet, which need root" >&2
  exit 1
fi
"$root/scripts/system-deps.sh"
for busy in "$port" "$prometheus_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$busy") 2>/dev/null; then
    echo "up: port $busy on 127.0.0.1 is in use; free it or set WORKPOOL_PORT / WORKPOOL_PROMETHEUS_PORT" >&2
    exit 1
  fi
done

echo "up: building the control plane, the node's tools and NATS (first run: about twenty minutes), then Workpool"
"$root/scripts/tools.sh" nats-server etcd kube-apiserver kube-controller-manager kube-scheduler kubectl \
  kubelet kube-proxy cni-plugins coredns crictl helm prometheus
(cd "$root" && cargo build --quiet --workspace --bins)

mkdir -p "$run/logs"
: > "$run/pids"
cd "$root"
RUST_LOG=${RUST_LOG:-info,kube=warn,async_nats=warn} nohup target/debug/workpool-local cluster \
  --listen "127.0.0.1:$port" --prometheus "127.0.0.1:$prometheus_port" --pool examples/workpool.yaml --state-dir "$run/cluster" \
  > "$run/logs/cluster.log" 2>&1 &
pid=$!
echo "$pid workpool-local-cluster" >> "$run/pids"
echo "up: starting the cluster (log: .run/logs/cluster.log)"
for _ in $(seq 1 600); do
  grep -q '^READY' "$run/logs/cluster.log" && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "up: the cluster failed to start; the end of its log:" >&2
    tail -20 "$run/logs/cluster.log" >&2
    rm -f "$run/pids"
    exit 1
  fi
  sleep 0.5
done
grep -q '^READY' "$run/logs/cluster.log" || { echo "up: the cluster did not become ready in 5 minutes" >&2; exit 1; }

url="http://127.0.0.1:$port"
cat <<DEMO

Workpool is up at $url: the demo WorkPool's 2 api and 2 worker pods run on a local
Kubernetes node, containers of our image run by kubelet and containerd (kubectl: export
KUBECONFIG=$run/cluster/kubeconfig; the tools are in .tools/, e.g.
$(scripts/tools.sh --print-bin kubectl)/kubectl get workpools,pods -o wide).

The original demo - POST work, then GET it a few times (the builtin "sleep" works ~3s):

  curl --json '{"data":"foo"}' $url/api/v1/work
  curl $url/api/v1/work/<callback>            # pending, working, then worked
  curl "$url/api/v1/work/<callback>?wait=30s" # or long-poll until it is done

POST again and watch "accepted_by" name the two api pods in turn.
Results expire after 1m (resultTTL), then GET answers 404.
Prometheus scrapes every pod: http://127.0.0.1:$prometheus_port (API), e.g.
  curl 'http://127.0.0.1:$prometheus_port/api/v1/query?query=sum+by+(kubernetes_pod)(workpool_work_worked_total)'
Stop everything: make down
DEMO
