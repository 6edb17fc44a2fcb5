#!/usr/bin/env bash
# Helm chart checks (`check`, part of `make test`) and regeneration (`generate`, part of
# `make generate`): the chart's CRD copy equals crds/ and `helm lint` passes with and
# without the bundled NATS and the monitoring objects. The rendered templates in
# charts/rendered/ are checked by `make drift` (regenerate, then `git diff`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
helm="$("$root/scripts/tools.sh" --print-bin helm)/helm"
chart="$root/charts/workpool"

# As on a cluster with the Prometheus Operator: PodMonitors and the PrometheusRule.
monitoring=(--api-versions monitoring.coreos.com/v1/PodMonitor --api-versions monitoring.coreos.com/v1/PrometheusRule)
# The bundled NATS and a KEDA ScaledObject for the demo pool, scaling to zero.
keda=(--set nats.enabled=true --set 'keda.scaledObjects[0].pool=demo'
  --set 'keda.scaledObjects[0].namespace=default' --set 'keda.scaledObjects[0].account=WORKPOOL')

render() {
  "$helm" template workpool "$chart" --namespace workpool-system "$@"
}

case "${1:-check}" in
  generate)
    cp "$root/crds/workpool.dev_workpools.yaml" "$chart/crds/"
    render > "$root/charts/rendered/workpool.yaml"
    render --set nats.enabled=true > "$root/charts/rendered/workpool-with-nats.yaml"
    render "${monitoring[@]}" > "$root/charts/rendered/workpool-with-monitoring.yaml"
    render "${keda[@]}" > "$root/charts/rendered/workpool-with-keda.yaml"
    ;;
  check)
    diff -u "$root/crds/workpool.dev_workpools.yaml" "$chart/crds/workpool.dev_workpools.yaml" \
      || { echo "chart: charts/workpool/crds/ differs from crds/; run make generate" >&2; exit 1; }
    "$helm" lint --strict "$chart"
    "$helm" lint --strict "$chart" --set nats.enabled=true
    "$helm" lint --strict "$chart" --set nats.enabled=true --set nats.tlsSecret=nats-tls \
      --set operator.natsCAConfigMap=nats-ca
    "$helm" lint --strict "$chart" --set monitoring.podMonitor.enabled=true \
      --set monitoring.prometheusRule.enabled=true
    "$helm" lint --strict "$chart" "${keda[@]}"
    echo "chart: lint checks passed"
    ;;
  *) echo "usage: scripts/chart.sh [check|generate]" >&2; exit 2 ;;
esac
