//! Operators running in this test process, and WorkPool manifests for tests.

use std::time::Duration;

use tokio::sync::oneshot;
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::ServerAuth;

use crate::{Result, free_port};

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
        Self::start_with_nats_auth(plane, namespace, lease, identity, None, None).await
    }

    /// The same, against a NATS server with auth on: the operator connects with the
    /// server's admin user and mints each pool's user with its account key; with
    /// `ca_file`, over TLS trusting that CA.
    pub async fn start_with_nats_auth(
        plane: &ControlPlane,
        namespace: &str,
        lease: &str,
        identity: &str,
        auth: Option<&ServerAuth>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self> {
        use clap::Parser;
        workpool_runtime::telemetry::init_logging_or("warn");
        let port = free_port()?;
        let mut args = workpool_operator::Args::parse_from([
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
        if let Some(auth) = auth {
            args.nats_credentials_file = Some(auth.admin_creds.clone());
            args.nats_account_seed_file = Some(auth.account_seed.clone());
        }
        args.nats_ca_file = ca_file.map(std::path::Path::to_path_buf);
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
        let Ok(response) = workpool_local_cluster::http::get(&self.metrics_url).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        crate::metrics::sum_of(&text, name)
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A WorkPool manifest named `name` whose NATS is `nats_url`, with `extra` spec lines
/// (indented two spaces).
pub fn pool_yaml(name: &str, nats_url: &str, extra: &str) -> String {
    format!(
        "apiVersion: workpool.dev/v1alpha1\nkind: WorkPool\nmetadata:\n  name: {name}\nspec:\n  nats:\n    url: {nats_url}\n{extra}"
    )
}
