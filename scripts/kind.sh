#!/usr/bin/env bash
# The kind path, for machines with Docker (the no-Docker local cluster is `make up`).
#   scripts/kind.sh up    build the image, create the kind cluster (kind-config.yaml), load
#                         the image, helm install the chart with its NATS, apply the demo
#                         pool, publish its api on http://127.0.0.1:8080
#   scripts/kind.sh e2e   the end-to-end scenarios of e2e/tests/cluster.rs, through kubectl,
#                         helm and curl, against that cluster
#   scripts/kind.sh down  delete the kind cluster
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cluster=workpool
image=ghcr.io/workpool/workpool
tag=${WORKPOOL_IMAGE_TAG:-dev}
release=workpool
release_ns=workpool-system
url=http://127.0.0.1:8080

die() { echo "kind: $*" >&2; exit 1; }

need_docker() {
  command -v docker >/dev/null 2>&1 ||
    die "Docker is not installed; the kind path needs it (without Docker, use 'make up')"
  docker info >/dev/null 2>&1 ||
    die "Docker is installed but its engine is not reachable ('docker info' fails)"
}

tools() {
  "$root/scripts/tools.sh" kind kubectl helm >&2
  kind="$("$root/scripts/tools.sh" --print-bin kind)/kind"
  kubectl=("$("$root/scripts/tools.sh" --print-bin kubectl)/kubectl" --context "kind-$cluster")
  helm=("$("$root/scripts/tools.sh" --print-bin helm)/helm" --kube-context "kind-$cluster")
}

# wait_for DESCRIPTION SECONDS COMMAND...: retries COMMAND (or shell function) once a second.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq 1 "$seconds"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "timed out after ${seconds}s waiting for $what"
}

up() {
  need_docker
  tools
  docker build -t "$image:$tag" .
  "$kind" get clusters 2>/dev/null | grep -qx "$cluster" || "$kind" create cluster --config kind-config.yaml
  "$kind" load docker-image --name "$cluster" "$image:$tag"
  "${helm[@]}" upgrade --install "$release" charts/workpool --namespace "$release_ns" --create-namespace \
    --set image.tag="$tag" --set image.pullPolicy=Never --set nats.enabled=true \
    --set test.namespace=default --wait --timeout 5m
  "${kubectl[@]}" apply -f examples/workpool.yaml
  "${kubectl[@]}" wait --for=condition=Ready workpool/demo --timeout=5m
  # Publish the api on the node port kind-config.yaml maps to 127.0.0.1:8080.
  "${kubectl[@]}" apply -f - <<'YAML'
apiVersion: v1
kind: Service
metadata:
  name: demo-api-nodeport
spec:
  type: NodePort
  selector: {app.kubernetes.io/instance: demo, app.kubernetes.io/component: api}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
YAML
  # The api's probes are on its metrics port, not behind the Service: ask the public one.
  wait_for "the api on $url" 120 curl -fsS "$url/api/v1/openapi.json" -o /dev/null
  echo "kind: Workpool is up at $url (kubectl --context kind-$cluster get workpools,pods)"
}

# has_endpoints SERVICE N: the Service has N ready endpoints.
has_endpoints() {
  [ "$("${kubectl[@]}" get endpointslices -l "kubernetes.io/service-name=$1" \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}x{end}' | tr -d '\n' | wc -c)" = "$2" ]
}

# field JSON NAME: a string field of a one-line JSON answer.
field() { echo "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"; }

# has_status ID STATUS: GET /api/v1/work/ID answers STATUS.
has_status() { [ "$(field "$(curl -fsS "$url/api/v1/work/$1")" status)" = "$2" ]; }

no_pool_pods() { [ -z "$("${kubectl[@]}" get pods -l app.kubernetes.io/instance=demo -o name)" ]; }

e2e() {
  need_docker
  tools
  echo "kind e2e: helm test (a pod submits work through the api Service and waits for it)"
  "${helm[@]}" test "$release" --namespace "$release_ns" --timeout 3m

  echo "kind e2e: the original demo through $url"
  local names="" id
  for n in $(seq 1 20); do
    answer=$(curl -fsS --json "{\"data\":{\"ms\":500,\"n\":$n}}" "$url/api/v1/work")
    echo "$answer" | grep -q '"status":"accepted"' || die "POST answered $answer"
    names="$names $(field "$answer" accepted_by)"
    id=$(field "$answer" callback)
  done
  [ "$(echo "$names" | tr ' ' '\n' | sort -u | grep -c .)" -ge 2 ] || die "accepted_by named one api pod only:$names"
  wait_for "work $id to be worked" 60 has_status "$id" worked

  echo "kind e2e: the cluster view counts the worker pods as members and shares the partitions"
  view=$(curl -fsS "$url/api/v1/cluster")
  echo "$view" | grep -q '"from_kubernetes":true' || die "cluster view without Kubernetes membership: $view"
  echo "$view" | grep -q '"unowned_partitions":\[\]' || die "partitions without an owner: $view"

  echo "kind e2e: kubectl scale workpool/demo --replicas=4 gives 4 worker endpoints"
  "${kubectl[@]}" scale workpool/demo --replicas=4
  wait_for "4 ready worker endpoints" 180 has_endpoints demo-workers 4

  echo "kind e2e: deleting the worker pod that runs a job loses nothing"
  id=$(field "$(curl -fsS --json '{"data":{"ms":8000}}' "$url/api/v1/work")" callback)
  wait_for "the long job to start" 60 has_status "$id" working
  worker=$(field "$(curl -fsS "$url/api/v1/work/$id")" worker)
  "${kubectl[@]}" delete pod "$worker" --wait=false
  wait_for "the long job to be worked elsewhere" 120 has_status "$id" worked

  echo "kind e2e: deleting the WorkPool removes its pods and Services"
  "${kubectl[@]}" delete service demo-api-nodeport
  "${kubectl[@]}" delete workpool demo --wait=true --timeout=2m
  wait_for "the pool's pods to go" 120 no_pool_pods
  [ -z "$("${kubectl[@]}" get services -l app.kubernetes.io/instance=demo -o name)" ] || die "the pool's Services remain"

  echo "kind e2e: helm uninstall leaves nothing but the CRD behind"
  "${helm[@]}" uninstall "$release" --namespace "$release_ns" --wait --timeout 3m
  left=$("${kubectl[@]}" get all,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,leases \
    --all-namespaces -l "app.kubernetes.io/instance=$release" -o name)
  [ -z "$left" ] || die "left behind by helm uninstall: $left"
  echo "kind e2e: passed"
}

down() {
  tools
  "$kind" delete cluster --name "$cluster"
}

case "${1:-}" in
  up) up ;;
  e2e) e2e ;;
  down) down ;;
  *) echo "usage: scripts/kind.sh up|e2e|down" >&2; exit 2 ;;
esac
