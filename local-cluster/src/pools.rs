//! WorkPools on a control plane: the CRD installed, pools created from YAML, and waiting
//! on their status.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use workpool_core::crd::WorkPool;

use crate::control_plane::ControlPlane;
use crate::{Error, Result, paths};

/// Applies `crds/` (idempotent) and waits until the CRD is served.
pub async fn install_crd(plane: &ControlPlane) -> Result<()> {
    let crds = paths::repo_root().join("crds");
    plane.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &crds.display().to_string(),
    ])?;
    plane.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workpools.workpool.dev",
    ])?;
    Ok(())
}

/// Creates a WorkPool from YAML in `namespace`.
pub async fn create_pool(client: &kube::Client, namespace: &str, yaml: &str) -> Result<WorkPool> {
    let pool: WorkPool =
        serde_saphyr::from_str(yaml).map_err(Error::context("parsing test YAML"))?;
    Api::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pool)
        .await
        .map_err(Error::context(format!(
            "creating WorkPool {namespace}/{}",
            pool.metadata.name.as_deref().unwrap_or("?")
        )))
}

/// Polls the WorkPool until `done` holds.
pub async fn wait_pool(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    done: impl Fn(&WorkPool) -> bool,
) -> Result<WorkPool> {
    let api: Api<WorkPool> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(pool) = api.get(name).await {
            if done(&pool) {
                return Ok(pool);
            }
            last = Some(pool);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Timeout(format!(
        "WorkPool {namespace}/{name}; last seen {:?}; the cluster then:\n{}",
        last.map(|p| p.status),
        cluster_state(client).await
    )))
}

/// What keeps pods from running, for a timeout's message: node conditions that are not
/// as they should be (a `DiskPressure` node admits no pod), and every pod's phase with
/// the reason its containers wait or ended.
async fn cluster_state(client: &kube::Client) -> String {
    let mut lines = Vec::new();
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes
        .list(&ListParams::default())
        .await
        .into_iter()
        .flatten()
    {
        let name = node.metadata.name.unwrap_or_default();
        let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
        for c in conditions {
            let healthy = (c.type_ == "Ready") == (c.status == "True");
            if !healthy {
                let why = c.message.unwrap_or_default();
                lines.push(format!("node {name}: {}={} {why}", c.type_, c.status));
            }
        }
    }
    let pods: Api<Pod> = Api::all(client.clone());
    for pod in pods
        .list(&ListParams::default())
        .await
        .into_iter()
        .flatten()
    {
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.unwrap_or_default(),
            pod.metadata.name.unwrap_or_default()
        );
        let status = pod.status.unwrap_or_default();
        let mut line = format!(
            "pod {name}: {} {}",
            status.phase.unwrap_or_default(),
            status.reason.unwrap_or_default()
        );
        for container in status.container_statuses.unwrap_or_default() {
            let state = container.state.unwrap_or_default();
            if let Some(waiting) = state.waiting {
                let reason = waiting.reason.unwrap_or_default();
                line.push_str(&format!("; {} waiting: {reason}", container.name));
            }
            if let Some(ended) = state.terminated {
                let reason = ended.reason.unwrap_or_default();
                line.push_str(&format!(
                    "; {} ended: {reason} ({})",
                    container.name, ended.exit_code
                ));
            }
        }
        lines.push(line);
    }
    lines.join("\n")
}

/// The status of condition `kind` and its reason.
pub fn condition(pool: &WorkPool, kind: &str) -> Option<(String, String)> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The pool's `QueueReady` condition is `True`: the operator reached NATS and set up
/// the stream, bucket and consumers.
pub fn queue_ready(pool: &WorkPool) -> bool {
    condition(pool, "QueueReady").is_some_and(|(status, _)| status == "True")
}
