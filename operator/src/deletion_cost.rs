//! Scale-in that spares busy workers (docs/operator.md, "Scaling in"). Before the
//! worker Deployment gets fewer replicas, each running worker pod is annotated with
//! `controller.kubernetes.io/pod-deletion-cost`: the jobs it is running now, read from
//! its metrics endpoint (`workpool_work_in_flight`, which counts keyed jobs too). The
//! ReplicaSet controller removes the pods of lowest cost first, so idle workers go and
//! busy ones finish their work.

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::children::{Component, WORKER_PORT, selector_string};

/// The annotation the ReplicaSet controller ranks pods by when it scales in.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// How long one worker's metrics may take; a worker that does not answer keeps the cost
/// it had.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the ReplicaSet controller gets to see changed costs.
const CACHE_SETTLE: Duration = Duration::from_secs(1);

/// The metric a worker's in-flight jobs are read from.
const IN_FLIGHT_METRIC: &str = "workpool_work_in_flight";

/// Annotates each running worker pod of `pool` with its in-flight jobs as its deletion
/// cost, where that changed. Best effort: a pod that cannot be read or patched is
/// logged and left as it is (scale-in then ranks it as Kubernetes would).
pub async fn mark_workers(client: &Client, namespace: &str, pool: &str) {
    let Some(http) = scraper() else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = selector_string(pool, Component::Worker);
    let listed = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(listed) => listed,
        Err(err) => {
            tracing::warn!(%err, pool, "worker pods not listed; scale-in ranks them by age");
            return;
        }
    };
    let mut changed = false;
    for pod in listed.items {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let cost = match in_flight(http, &ip).await {
            Ok(cost) => cost,
            Err(err) => {
                tracing::info!(pod = %pod.name_any(), %err, "worker's in-flight jobs unknown");
                continue;
            }
        };
        let text = cost.to_string();
        // No annotation ranks as 0.
        let had = pod.annotations().get(POD_DELETION_COST);
        if had.map_or("0", String::as_str) == text {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {POD_DELETION_COST: text}}});
        let patched = pods
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        match patched {
            Ok(_) => {
                tracing::info!(pod = %pod.name_any(), cost, "deletion cost set");
                changed = true;
            }
            Err(err) => tracing::warn!(pod = %pod.name_any(), %err, "deletion cost not set"),
        }
    }
    if changed {
        // The ReplicaSet controller ranks pods from its own cache of them: give it a
        // moment to see the new costs before the Deployment shrinks.
        tokio::time::sleep(CACHE_SETTLE).await;
    }
}

/// The client workers' metrics are read with, made once; none if it cannot be made.
fn scraper() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| match workpool_runtime::http_client::http_client() {
            Ok(client) => Some(client),
            Err(err) => {
                tracing::warn!(%err, "no HTTP client: workers get no deletion cost");
                None
            }
        })
        .as_ref()
}

#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("metrics not read: {0}")]
    Request(#[from] reqwest::Error),
    #[error("no {IN_FLIGHT_METRIC} in the worker's metrics")]
    Missing,
}

/// The jobs a worker at `ip` runs now, from its metrics.
async fn in_flight(http: &reqwest::Client, ip: &str) -> Result<u64, ScrapeError> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let url = format!("http://{host}:{WORKER_PORT}/metrics");
    let text = http
        .get(url)
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    in_flight_from(&text).ok_or(ScrapeError::Missing)
}

/// The value of the in-flight gauge in a Prometheus text exposition (its one series,
/// whatever its labels).
fn in_flight_from(text: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(IN_FLIGHT_METRIC)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| value.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_gauge_is_read_whatever_its_labels() {
        let text = "# HELP workpool_work_in_flight Attempts running.\n\
                    # TYPE workpool_work_in_flight gauge\n\
                    workpool_work_in_flight_total 9\n\
                    workpool_work_in_flight{namespace=\"d\",pool=\"p\"} 3\n";
        assert_eq!(in_flight_from(text), Some(3));
        assert_eq!(in_flight_from("workpool_work_in_flight 0\n"), Some(0));
        assert_eq!(in_flight_from("other 1\n"), None);
    }
}
