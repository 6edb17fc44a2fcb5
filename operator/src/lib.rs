//! The Workpool operator: reconciles WorkPool resources into api and worker Deployments,
//! their Services, RBAC and disruption budgets, and the pool's NATS objects (provisioned
//! through [`workpool_runtime::provision`]). Several replicas are safe: only the holder of
//! the leader Lease reconciles.

pub mod applied;
pub mod bootstrap;
pub mod children;
pub mod controller;
pub mod deletion;
pub mod deletion_cost;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod hardening;
pub mod leader;
pub mod metrics;
pub mod queue;
pub mod rates;
pub mod requeue;
pub mod rollout;
pub mod schedules;
pub mod status;
pub mod triggers;
pub mod wake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use tokio_util::sync::CancellationToken;
use workpool_core::crd::WorkPool;
use workpool_runtime::admin::Admin;
use workpool_runtime::nats_auth::AccountKey;

use crate::children::DefaultImage;
use crate::controller::Context;
use crate::leader::{Candidate, LeaseSettings};
use crate::metrics::OperatorMetrics;
use crate::queue::NatsClients;

/// Command-line settings of the operator.
#[derive(Debug, clap::Parser)]
#[command(name = "workpool-operator", about = "Workpool operator")]
pub struct Args {
    /// Address of the health and metrics endpoint.
    #[arg(long, env = "WORKPOOL_OPERATOR_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// Image repository of api and worker pods when a WorkPool names none.
    #[arg(
        long,
        env = "WORKPOOL_IMAGE_REPOSITORY",
        default_value = "ghcr.io/workpool/workpool"
    )]
    pub image_repository: String,
    /// Image tag of api and worker pods when a WorkPool names none.
    #[arg(long, env = "WORKPOOL_IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    pub image_tag: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "WORKPOOL_LEASE_NAME", default_value = "workpool-operator")]
    pub lease_name: String,
    /// Seconds a leader's lease lasts without renewal (how soon a standby takes over
    /// from a leader that died).
    #[arg(long, env = "WORKPOOL_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WORKPOOL_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The operator's own NATS credentials (a `.creds` file), used to provision every
    /// pool's stream, bucket and consumers. A pool's `nats.credentialsSecret` is for its
    /// pods; the operator never reads Secrets (docs/security.md).
    #[arg(long, env = "WORKPOOL_NATS_CREDS_FILE")]
    pub nats_credentials_file: Option<std::path::PathBuf>,
    /// The seed of the NATS account pools live in (`SA…`). With it the operator mints
    /// each pool a NATS user allowed only that pool's subjects and stores it in the
    /// Secret `<pool>-workpool-nats` its pods mount (docs/security.md).
    #[arg(long, env = "WORKPOOL_NATS_ACCOUNT_SEED_FILE")]
    pub nats_account_seed_file: Option<std::path::PathBuf>,
    /// PEM certificates of the CA of NATS servers whose certificates a private CA signed;
    /// with it the operator connects with TLS only.
    #[arg(long, env = "WORKPOOL_NATS_CA_FILE")]
    pub nats_ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off tasks instead of the operator's loop.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Makes the NATS trust (keys and JWTs) and stores it in a Secret, unless the Secret
    /// exists; the chart runs this before its NATS starts.
    BootstrapNats(bootstrap::BootstrapArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("serving health endpoint: {0}")]
    Serve(#[from] std::io::Error),
    #[error("the NATS account seed: {0}")]
    NatsAccount(#[from] workpool_runtime::nats_auth::AuthError),
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
}

/// Runs the operator until `shutdown` completes, with `Client::try_default` settings.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OperatorError> {
    let client = Client::try_default().await?;
    if let Some(Command::BootstrapNats(bootstrap)) = &args.command {
        let done = bootstrap::bootstrap(client, bootstrap).await?;
        tracing::info!(secret = %bootstrap.secret, outcome = ?done, "NATS trust bootstrapped");
        return Ok(());
    }
    run_with_client(args, client, shutdown).await
}

/// Runs the operator with a given client (tests pass one for their control plane).
pub async fn run_with_client(
    args: Args,
    client: Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OperatorError> {
    let metrics = Arc::new(OperatorMetrics::new()?);
    // Read once and checked before anything starts: a wrong seed is a setup error.
    let account_seed = args.nats_account_seed_file.as_deref();
    let account = account_seed.map(AccountKey::from_file).transpose()?;
    let account = account.map(Arc::new);
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Admin::new(metrics.registry().clone(), {
        let ready = ready.clone();
        move || ready.load(Ordering::Relaxed)
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let stop_http = CancellationToken::new();
    let http = tokio::spawn(admin.serve(listener, stop_http.clone().cancelled_owned()));

    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("workpool-operator-{}", std::process::id()));
    let lease = LeaseSettings {
        namespace: &args.lease_namespace,
        name: &args.lease_name,
        identity: &identity,
        seconds: args.lease_seconds,
    };
    let candidate = Candidate::join(client.clone(), lease).await?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%identity, lease = %args.lease_name, "operator started; waiting for leadership");

    let image = DefaultImage {
        repository: args.image_repository.clone(),
        tag: args.image_tag.clone(),
    };
    candidate
        .lead_until(shutdown, &metrics, |term| {
            let recorder = controller::recorder(&client, &identity);
            let nats = NatsClients::new(args.nats_credentials_file.clone())
                .with_ca_file(args.nats_ca_file.clone());
            let ctx = Context::new(
                client.clone(),
                recorder,
                metrics.clone(),
                image.clone(),
                nats,
            )
            .with_pool_users(account.clone());
            controller::run(Arc::new(ctx), args.watch_namespace.clone(), term.ended())
        })
        .await;
    stop_http.cancel();
    let _ = http.await;
    tracing::info!("operator stopped");
    Ok(())
}

/// The WorkPool CRD as YAML, as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser_error::Error> {
    use kube::CustomResourceExt;
    let mut yaml = String::from(
        "# Generated by `cargo run -p workpool-operator --bin crdgen`; do not edit.\n",
    );
    yaml.push_str(&serde_saphyr::to_string(&WorkPool::crd())?);
    Ok(yaml)
}
