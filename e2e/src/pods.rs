//! Reading the state of pods and Services on a cluster, for tests that wait on it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

use crate::{HarnessError, Result};

/// Ready endpoints of `service`.
pub async fn ready_endpoints(client: &kube::Client, ns: &str, service: &str) -> Result<usize> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(HarnessError::context("listing EndpointSlices"))?;
    Ok(list
        .items
        .iter()
        .flat_map(|slice| slice.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .count())
}

/// Pods of a pool component (`api`, `worker`, `operator`) that are not being deleted and
/// have an address.
pub async fn running_pods(client: &kube::Client, ns: &str, component: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
        .await
        .map_err(HarnessError::context("listing pods"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()).is_some())
        .collect())
}

/// Polls `check` until it holds, or fails after `timeout` saying what it waited for.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, check: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout(what.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// The processes of pod `ns/pod` on this machine: every process whose environment names
/// it (`POD_NAMESPACE` and `POD_NAME`, which the operator's pods and the chart's carry),
/// including what its containers started. Works whatever runs the pod, since a
/// container's processes are the host's too.
pub fn pod_processes(ns: &str, pod: &str) -> Vec<i32> {
    processes_with_env(&[format!("POD_NAMESPACE={ns}"), format!("POD_NAME={pod}")])
}

/// Every process on this machine whose environment holds all of `vars` (`NAME=value`).
pub fn processes_with_env(vars: &[String]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                let found: Vec<&[u8]> = environ.split(|byte| *byte == 0).collect();
                vars.iter().all(|var| found.contains(&var.as_bytes()))
            })
        })
        .collect()
}

/// The first argument of process `pid` (its program), if it still runs.
pub fn program_of(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.split(|byte| *byte == 0).next()?;
    Some(String::from_utf8_lossy(first).into_owned())
}
