//! `make up`: a whole local Workpool on a real Kubernetes cluster with no Docker. One
//! process supervises it all, so stopping that process (`make down`) stops everything:
//! etcd + kube-apiserver + kube-controller-manager, a real node ([`RealNode`]: containerd,
//! runc, kubelet, kube-scheduler, kube-proxy, CoreDNS) running our image, nats-server
//! (pods find it as `nats.workpool-system`), Prometheus on `127.0.0.1:9090` scraping the
//! pods, and `127.0.0.1:8080` in front of the api Service's ClusterIP. The operator is
//! installed with `helm install` of `charts/workpool` and runs as a pod, as on any
//! cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use workpool_core::crd::WorkPool;

use crate::control_plane::ControlPlane;
use crate::helm::Release;
use crate::nats::NatsServer;
use crate::node::{HOST_IP, HostPort, RealNode, publish_host_service};
use crate::pools::{condition, wait_pool};
use crate::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct LocalClusterArgs {
    /// Where the api is served (the load balancer).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The WorkPool to apply, as it is (pods reach the local NATS by the name
    /// `nats.workpool-system`).
    #[arg(long, default_value = "examples/workpool.yaml")]
    pub pool: PathBuf,
    /// Where Prometheus (scraping every annotated pod) serves its UI and API.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub prometheus: String,
    /// Where the kubeconfig is written.
    #[arg(long, default_value = ".run/cluster")]
    pub state_dir: PathBuf,
}

const NAMESPACE: &str = "default";
/// Where `helm install` puts the operator.
pub const RELEASE: &str = "workpool";
pub const RELEASE_NAMESPACE: &str = "workpool-system";

/// The Service that leads pods to the local NATS server: the name and port of
/// `examples/workpool.yaml`'s URL, `nats://nats.workpool-system:4222`.
const NATS_SERVICE: (&str, &str, u16) = ("workpool-system", "nats", 4222);

/// The Secret with the operator's NATS credentials and the account seed.
pub const OPERATOR_NATS_SECRET: &str = "workpool-operator-nats";

/// What every user of the local cluster needs: a control plane, a real node (containerd,
/// kubelet, kube-proxy, CoreDNS) running our image, and NATS on the node's bridge address,
/// which pods reach by the Service name `nats.workpool-system`.
pub struct LocalCluster {
    /// The bridge's host address: where pods reach the apiserver, NATS and the host.
    pub host: String,
    pub plane: ControlPlane,
    pub client: kube::Client,
    pub nats: NatsServer,
    pub node: RealNode,
}

impl LocalCluster {
    /// Starts everything.
    pub async fn start() -> Result<Self> {
        let mut node = RealNode::prepare()?;
        let host = HOST_IP.to_owned();
        let plane = ControlPlane::start_for_pods(&host).await?;
        let client = plane.client().await?;
        let nats = NatsServer::start_secured_on(&host).await?;
        node.start(&plane).await?;
        let (namespace, name, port) = NATS_SERVICE;
        plane.ensure_namespace(namespace).await?;
        let ports = [HostPort::new("client", port, nats.port(), "TCP")];
        let labels = serde_json::json!({"app.kubernetes.io/name": "nats"});
        publish_host_service(&client, namespace, name, &ports, None, labels).await?;
        Ok(Self {
            host,
            plane,
            client,
            nats,
            node,
        })
    }

    /// NATS as pods reach it by name.
    pub fn nats_service_url(&self) -> String {
        let (namespace, name, port) = NATS_SERVICE;
        format!("nats://{name}.{namespace}:{port}")
    }

    /// Installs the chart (release `workpool`) in `namespace` with `values`, and gives
    /// its operator the local NATS's admin credentials and account seed (the Secret
    /// [`OPERATOR_NATS_SECRET`] there), so it provisions pools and mints their users.
    pub async fn install_chart(&self, namespace: &str, values: &[(&str, &str)]) -> Result<Release> {
        let auth = self
            .nats
            .auth()
            .ok_or_else(|| Error::Missing("the local NATS runs without auth".into()))?;
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))
        };
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": OPERATOR_NATS_SECRET, "namespace": namespace},
            "stringData": {
                "nats.creds": read(&auth.admin_creds)?,
                "account.seed": read(&auth.account_seed)?,
            },
        });
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), namespace);
        secrets
            .patch(
                OPERATOR_NATS_SECRET,
                &PatchParams::apply("workpool-local").force(),
                &Patch::Apply(secret),
            )
            .await
            .map_err(Error::context("creating the operator's NATS Secret"))?;
        let mut values = values.to_vec();
        values.extend([
            ("operator.natsCredentialsSecret", OPERATOR_NATS_SECRET),
            ("operator.natsAccountSecret", OPERATOR_NATS_SECRET),
        ]);
        let release = Release::new(&self.plane, RELEASE, namespace)?;
        release.install(&values).await?;
        Ok(release)
    }

    /// Stops every pod and the node (removing everything it made); the control plane
    /// and NATS stop when dropped.
    pub fn stop(mut self) -> Result<()> {
        self.node.stop()
    }
}

/// Brings everything up, prints `READY` and the kubeconfig path, and runs until
/// `shutdown`; then takes everything down again.
pub async fn run(args: LocalClusterArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cluster = LocalCluster::start().await?;
    let served = serve(&cluster, &args).await;
    let stopped = match served {
        Ok((prometheus, balancer)) => {
            shutdown.await;
            balancer.abort();
            drop(prometheus);
            Ok(())
        }
        Err(err) => Err(err),
    };
    let removed = cluster.stop();
    stopped.and(removed)
}

/// The demo on `cluster`: Prometheus, the chart, the example pool exactly as written,
/// and the api on `args.listen`. Prints `READY` when it all runs.
async fn serve(
    cluster: &LocalCluster,
    args: &LocalClusterArgs,
) -> Result<(
    crate::prometheus::Prometheus,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let (plane, client) = (&cluster.plane, cluster.client.clone());
    std::fs::create_dir_all(&args.state_dir).map_err(Error::io("state dir"))?;
    let kubeconfig = args.state_dir.join("kubeconfig");
    std::fs::copy(&plane.kubeconfig, &kubeconfig).map_err(Error::io("copying the kubeconfig"))?;
    let prometheus =
        crate::prometheus::Prometheus::start(plane, &args.prometheus, Duration::from_secs(5))
            .await?;
    // `helm test` looks for the demo pool where `make up` applies it.
    cluster
        .install_chart(RELEASE_NAMESPACE, &[("test.namespace", NAMESPACE)])
        .await?;
    let name = apply_pool(&client, &args.pool).await?;
    wait_pool(&client, NAMESPACE, &name, Duration::from_secs(180), |p| {
        condition(p, "Ready").is_some_and(|(status, _)| status == "True")
    })
    .await?;
    let balancer =
        crate::balancer::Balancer::to_service(&client, NAMESPACE, &format!("{name}-api")).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(Error::io(format!("binding {}", args.listen)))?;
    let served = tokio::spawn(balancer.serve(listener));
    println!(
        "READY kubeconfig={} prometheus={}",
        kubeconfig.display(),
        prometheus.url
    );
    Ok((prometheus, served))
}

/// Applies the WorkPool in file `pool` to [`NAMESPACE`] as it is; returns its name.
async fn apply_pool(client: &kube::Client, pool: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(pool).map_err(Error::io(format!("reading {}", pool.display())))?;
    let manifest: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(Error::context(format!("{}", pool.display())))?;
    let name = manifest["metadata"]["name"]
        .as_str()
        .unwrap_or("demo")
        .to_owned();
    Api::<WorkPool>::namespaced(client.clone(), NAMESPACE)
        .patch(
            &name,
            &PatchParams::apply("make-up").force(),
            &Patch::Apply(&manifest),
        )
        .await
        .map_err(Error::context(format!("applying {}", pool.display())))?;
    Ok(name)
}
