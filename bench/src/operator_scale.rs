//! The operator at scale: `pools` WorkPools created at once on the test control plane
//! (etcd and kube-apiserver, no node), timed from the first create until every one is
//! reconciled: `observedGeneration` current (so its children were applied in that
//! reconcile) and its queue provisioned on NATS. The baseline is a plain client creating
//! the same objects itself, with the same concurrency: the WorkPools, each pool's
//! children as the operator renders them, and its NATS objects. The pools ask for no
//! pods (`replicas: 0`): with no node to run them, thousands of pending pods would only
//! measure the apiserver's and the controller-manager's work, not the operator's.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, PostParams};
use workpool_core::PoolNames;
use workpool_core::crd::WorkPool;
use workpool_e2e::operator::pool_yaml;
use workpool_e2e::{HarnessError as Error, Result, free_port};
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::paths;
use workpool_local_cluster::pools;
use workpool_local_cluster::process::Process;
use workpool_operator::children::{Component, DefaultImage, PoolContext};

use crate::report::Figures;
use crate::suite::rss_mib;

pub const PLAIN_SECS: &str = "operator_plain_create_s";
pub const OPERATOR_SECS: &str = "operator_reconciled_s";
pub const RECONCILES_PER_POOL: &str = "operator_reconciles_per_pool";
pub const OPERATOR_RSS_MIB: &str = "operator_rss_mib";

/// Creates in flight at once, for the plain client and for the WorkPools.
const CONCURRENCY: usize = 32;

pub async fn measure(pools: usize) -> Result<Figures> {
    let plane = ControlPlane::shared()?;
    pools::install_crd(plane).await?;
    let client = plane.client().await?;
    let nats = NatsServer::start().await?;

    let plain_ns = plane.namespace("bench-plain").await?;
    let started = Instant::now();
    each(pools, |i| create_plainly(&client, &plain_ns, &nats, i)).await?;
    let plain = started.elapsed();
    println!("  a plain client created {pools} pools' objects in {plain:.2?}");

    let ns = plane.namespace("bench-operator").await?;
    let (mut operator, metrics_url) = start_operator(plane, &ns).await?;
    let started = Instant::now();
    each(pools, |i| create_pool(&client, &ns, &nats, i)).await?;
    wait_reconciled(&client, &ns, pools).await?;
    let reconciled = started.elapsed();
    let reconciles = scrape_reconciles(&metrics_url).await?;
    let rss = rss_mib(operator.pid())?;
    operator.kill();
    println!(
        "  the operator reconciled {pools} pools in {reconciled:.2?} ({reconciles} reconciles, {rss:.1} MiB)"
    );
    Ok(Figures::from([
        (PLAIN_SECS, plain.as_secs_f64()),
        (OPERATOR_SECS, reconciled.as_secs_f64()),
        (RECONCILES_PER_POOL, reconciles / pools.max(1) as f64),
        (OPERATOR_RSS_MIB, rss),
    ]))
}

/// Runs `make(i)` for `0..count`, [`CONCURRENCY`] at a time.
async fn each<F, Fut>(count: usize, make: F) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    futures::stream::iter(0..count)
        .map(make)
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

fn pool_name(i: usize) -> String {
    format!("pool-{i}")
}

/// A WorkPool that asks for no pods.
fn manifest(i: usize, nats: &NatsServer) -> String {
    let no_pods = "  api:\n    replicas: 0\n  worker:\n    replicas: 0\n";
    pool_yaml(&pool_name(i), &nats.url(), no_pods)
}

async fn create_pool(
    client: &kube::Client,
    namespace: &str,
    nats: &NatsServer,
    i: usize,
) -> Result<()> {
    pools::create_pool(
        client,
        namespace,
        &pool_yaml(&pool_name(i), &nats.url(), ""),
    )
    .await
    .map(drop)
}

/// What the operator does for one pool, done by hand: the WorkPool, its children, its
/// NATS objects. (The WorkPool is created first, as the children's owner.)
async fn create_plainly(
    client: &kube::Client,
    namespace: &str,
    nats: &NatsServer,
    i: usize,
) -> Result<()> {
    let name = pool_name(i);
    let pool = pools::create_pool(client, namespace, &manifest(i, nats)).await?;
    let spec = pool
        .spec
        .pool_spec()
        .map_err(Error::context("the pool's spec"))?;
    let image = DefaultImage {
        repository: "workpool".into(),
        tag: "bench".into(),
    };
    let context =
        PoolContext::new(&pool, &spec, &image).map_err(Error::context("the pool's children"))?;
    create(client, namespace, &context.service_account()).await?;
    create(client, namespace, &context.role()).await?;
    create(client, namespace, &context.role_binding()).await?;
    for component in [Component::Api, Component::Worker] {
        let deployment = context.deployment(component, 0);
        create::<Deployment>(client, namespace, &deployment).await?;
    }
    create::<Service>(client, namespace, &context.api_service()).await?;
    create::<Service>(client, namespace, &context.worker_service()).await?;
    for component in [Component::Api, Component::Worker] {
        let budget = context.disruption_budget(component);
        create::<PodDisruptionBudget>(client, namespace, &budget).await?;
    }
    let names = PoolNames::new(namespace, &name).map_err(Error::context("the pool's names"))?;
    let js = async_nats::jetstream::new(nats.client().await?);
    workpool_runtime::provision::provision(&js, &names, &spec)
        .await
        .map_err(Error::context("provisioning"))
}

async fn create<K>(client: &kube::Client, namespace: &str, object: &K) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), object)
        .await
        .map(drop)
        .map_err(Error::context("creating a child"))
}

/// The operator binary, watching `namespace` only, with its metrics on a free port.
async fn start_operator(plane: &ControlPlane, namespace: &str) -> Result<(Process, String)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--lease-namespace",
        namespace,
        "--watch-namespace",
        namespace,
        "--pod-name",
        "bench-operator",
    ];
    let env = [
        (
            "KUBECONFIG".to_owned(),
            plane.kubeconfig.display().to_string(),
        ),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    let log = std::env::temp_dir().join(format!("workpool-bench-operator-{port}.log"));
    let process = Process::spawn(
        "operator",
        &paths::workspace_binary("workpool-operator")?,
        &args.map(str::to_owned),
        &env,
        log,
    )?;
    let ready = format!("http://{listen}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workpool_local_cluster::http::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "the operator to be ready; log:\n{}",
                process.log_text()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((process, format!("http://{listen}/metrics")))
}

/// Waits until every WorkPool in `namespace` shows its generation observed and its queue
/// ready.
async fn wait_reconciled(client: &kube::Client, namespace: &str, count: usize) -> Result<()> {
    let api: Api<WorkPool> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let listed = api
            .list(&ListParams::default())
            .await
            .map_err(Error::context("listing WorkPools"))?;
        let done = listed
            .items
            .iter()
            .filter(|pool| {
                let observed = pool.status.as_ref().and_then(|s| s.observed_generation);
                observed.is_some()
                    && observed == pool.metadata.generation
                    && pools::queue_ready(pool)
            })
            .count();
        if done >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "{count} pools reconciled ({done} were)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operator's reconciles so far, summed over pools and outcomes.
async fn scrape_reconciles(metrics_url: &str) -> Result<f64> {
    let text = workpool_local_cluster::http::get(metrics_url)
        .await
        .map_err(Error::context("scraping the operator"))?
        .text()
        .await
        .map_err(Error::context("reading the operator's metrics"))?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("workpool_operator_reconciles_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
