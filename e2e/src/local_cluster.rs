//! `make up`: a whole local Workpool on a real control plane with no Docker. One process
//! supervises it all, so stopping that process (`make down`) stops everything:
//! the pod network bridge, etcd + kube-apiserver + kube-controller-manager, nats-server,
//! the node agent running the pods, Prometheus on `127.0.0.1:9090` scraping the pods, and
//! the load balancer on `127.0.0.1:8080` that follows the api Service's EndpointSlices. The operator is installed with
//! `helm install` of `charts/workpool` and runs as a pod, as on any cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use workpool_core::crd::WorkPool;

use crate::cluster::ControlPlane;
use crate::helm::Release;
use crate::nats::NatsServer;
use crate::node::{NodeConfig, PodNetwork};
use crate::operator::{condition, wait_pool};
use crate::{HarnessError, Result, paths};

#[derive(Debug, clap::Args)]
pub struct LocalClusterArgs {
    /// Where the api is served (the load balancer).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The WorkPool to apply (its `spec.nats.url` is pointed at the local NATS).
    #[arg(long, default_value = "examples/workpool.yaml")]
    pub pool: PathBuf,
    /// Where Prometheus (scraping every annotated pod) serves its UI and API.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub prometheus: String,
    /// Pod logs, kubeconfig and node state.
    #[arg(long, default_value = ".run/cluster")]
    pub state_dir: PathBuf,
}

const NAMESPACE: &str = "default";
/// Where `helm install` puts the operator.
pub const RELEASE: &str = "workpool";
pub const RELEASE_NAMESPACE: &str = "workpool-system";

/// What every user of the local cluster needs: the pod network, a control plane the pods
/// reach, NATS on the bridge address, and the node agent running the pods.
pub struct LocalCluster {
    pub network: PodNetwork,
    /// The bridge's host address: where pods reach the apiserver, NATS and the host.
    pub host: String,
    pub plane: ControlPlane,
    pub client: kube::Client,
    pub nats: NatsServer,
    stop_node: Option<tokio::sync::oneshot::Sender<()>>,
    node: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl LocalCluster {
    /// Starts everything; pod logs and node state go under `state_dir`.
    pub async fn start(state_dir: &Path) -> Result<Self> {
        let network = PodNetwork {
            bridge: "wp0".into(),
            prefix: "10.88.0".into(),
        };
        network.create_bridge()?;
        let host = network.host_ip();
        let plane = ControlPlane::start_for_pods(&host).await?;
        let client = plane.client().await?;
        let nats = NatsServer::start_on(&host).await?;
        let bin_dir = paths::workspace_binary("workpool-api")?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let node_config = NodeConfig {
            node_name: "workpool-node".into(),
            pod_api_server: plane.server.clone(),
            ca_file: plane.ca_file(),
            bin_dir,
            state_dir: state_dir.join("node"),
            image_repository: "ghcr.io/workpool/workpool".into(),
            network: network.clone(),
        };
        let (stop_node, node_stopped) = tokio::sync::oneshot::channel::<()>();
        let node = tokio::spawn(crate::node::run(client.clone(), node_config, async move {
            let _ = node_stopped.await;
        }));
        Ok(Self {
            network,
            host,
            plane,
            client,
            nats,
            stop_node: Some(stop_node),
            node: Some(node),
        })
    }

    /// Stops the node agent, which stops every pod and removes every namespace and veth
    /// it made, then removes the bridge. The control plane's guards stop it when this
    /// process exits.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop_node.take() {
            let _ = stop.send(());
        }
        let stopped = match self.node.take() {
            Some(node) => node
                .await
                .map_err(|err| HarnessError::Other(format!("node agent task: {err}")))?,
            None => Ok(()),
        };
        self.network.remove_bridge();
        stopped
    }
}

/// Brings everything up, prints `READY` and the kubeconfig path, and runs until
/// `shutdown`; then takes everything down again.
pub async fn run(args: LocalClusterArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cluster = LocalCluster::start(&args.state_dir).await?;
    let (plane, client, host) = (&cluster.plane, cluster.client.clone(), cluster.host.clone());
    std::fs::create_dir_all(&args.state_dir).map_err(HarnessError::io("state dir"))?;
    let kubeconfig = args.state_dir.join("kubeconfig");
    std::fs::copy(&plane.kubeconfig, &kubeconfig)
        .map_err(HarnessError::io("copying the kubeconfig"))?;
    let prometheus =
        crate::prometheus::Prometheus::start(plane, &args.prometheus, Duration::from_secs(5))
            .await?;
    // Pods have no Service proxy here, so `helm test` reaches the api through the
    // balancer on the bridge's host address.
    let pod_url = format!("http://{host}:{}", args.listen.port());
    Release::new(plane, RELEASE, RELEASE_NAMESPACE)?
        .install(&[("test.url", &pod_url)])
        .await?;

    let text = std::fs::read_to_string(&args.pool)
        .map_err(HarnessError::io(format!("reading {}", args.pool.display())))?;
    let mut pool: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|err| HarnessError::Other(format!("{}: {err}", args.pool.display())))?;
    pool["spec"]["nats"]["url"] = serde_json::Value::String(cluster.nats.url());
    let name = pool["metadata"]["name"]
        .as_str()
        .unwrap_or("demo")
        .to_owned();
    Api::<WorkPool>::namespaced(client.clone(), NAMESPACE)
        .patch(
            &name,
            &PatchParams::apply("make-up").force(),
            &Patch::Apply(&pool),
        )
        .await
        .map_err(|err| HarnessError::Other(format!("applying {}: {err}", args.pool.display())))?;
    wait_pool(&client, NAMESPACE, &name, Duration::from_secs(180), |p| {
        condition(p, "Ready").is_some_and(|(status, _)| status == "True")
    })
    .await?;

    let balancer =
        crate::lb::Balancer::following(client.clone(), NAMESPACE, &format!("{name}-api"), "http");
    let mut served = Vec::new();
    for address in [
        args.listen.to_string(),
        format!("{host}:{}", args.listen.port()),
    ] {
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(HarnessError::io(format!("binding {address}")))?;
        served.push(tokio::spawn(balancer.clone().serve(listener)));
    }
    println!(
        "READY kubeconfig={} prometheus={}",
        kubeconfig.display(),
        prometheus.url
    );

    shutdown.await;
    served.iter().for_each(|lb| lb.abort());
    drop(prometheus);
    cluster.stop().await
}
