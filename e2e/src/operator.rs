//! Helpers for operator tests: the CRD installed on a [`ControlPlane`], operators running
//! in-process, and waiting on WorkPool status.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::PostParams;
use tokio::sync::oneshot;
use workpool_core::crd::WorkPool;

use crate::cluster::ControlPlane;
use crate::{HarnessError, Result, free_port, paths};

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

/// An operator running in this process.
#[derive(Debug)]
pub struct RunningOperator {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::result::Result<(), workpool_operator::OperatorError>>,
    pub metrics_url: String,
}

impl RunningOperator {
    /// Starts an operator watching `namespace`, competing for the Lease `lease`.
    pub async fn start(
        plane: &ControlPlane,
        namespace: &str,
        lease: &str,
        identity: &str,
    ) -> Result<Self> {
        use clap::Parser;
        workpool_runtime::telemetry::init_logging_or("warn");
        let port = free_port()?;
        let args = workpool_operator::Args::parse_from([
            "workpool-operator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--lease-namespace",
            namespace,
            "--lease-name",
            lease,
            "--lease-seconds",
            "6",
            "--watch-namespace",
            namespace,
            "--pod-name",
            identity,
        ]);
        let client = plane.client().await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(workpool_operator::run_with_client(
            args,
            client,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            stop: Some(stop),
            task,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        })
    }

    /// Stops it the way SIGTERM does (the lease is released).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }

    /// Kills it mid-flight: no cleanup, the lease is left to expire.
    pub fn abort(self) {
        self.task.abort();
    }

    /// A metric's value on this operator (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok(response) = reqwest::get(&self.metrics_url).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| {
                line.rsplit_once(' ')
                    .and_then(|(_, v)| v.parse::<f64>().ok())
            })
            .sum()
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates a WorkPool from YAML in `namespace`.
pub async fn create_pool(client: &kube::Client, namespace: &str, yaml: &str) -> Result<WorkPool> {
    let pool: WorkPool = serde_saphyr::from_str(yaml)
        .map_err(|err| HarnessError::Other(format!("parsing test YAML: {err}")))?;
    Api::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pool)
        .await
        .map_err(|err| HarnessError::Other(err.to_string()))
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
    Err(HarnessError::Timeout(format!(
        "WorkPool {namespace}/{name}; last seen {:?}",
        last.map(|p| p.status)
    )))
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

/// A WorkPool manifest named `name` whose NATS is `nats_url`, with `extra` spec lines
/// (indented two spaces).
pub fn pool_yaml(name: &str, nats_url: &str, extra: &str) -> String {
    format!(
        "apiVersion: workpool.dev/v1alpha1\nkind: WorkPool\nmetadata:\n  name: {name}\nspec:\n  nats:\n    url: {nats_url}\n{extra}"
    )
}

/// The pool's `QueueReady` condition is `True`: the operator reached NATS and set up
/// the stream, bucket and consumers.
pub fn queue_ready(pool: &WorkPool) -> bool {
    condition(pool, "QueueReady").is_some_and(|(status, _)| status == "True")
}
