//! A small node agent: the kubelet's part for Workpool's own images, with no container
//! runtime. It registers a Node, binds pending pods to it, runs each pod's containers as
//! local processes in the pod's own network namespace, probes them and reports their
//! status, so Deployments, EndpointSlices and Services work for real.

mod logs;
mod net;
mod pod;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

pub use net::PodNetwork;

use crate::{HarnessError, Result};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_name: String,
    /// The apiserver as pods reach it (through the bridge address).
    pub pod_api_server: String,
    pub ca_file: PathBuf,
    /// Where the binaries of "our image" are (`target/<profile>/`).
    pub bin_dir: PathBuf,
    /// Pod logs, kubeconfigs and the pid list of processes started.
    pub state_dir: PathBuf,
    /// The only image repository this node runs (any tag).
    pub image_repository: String,
    pub network: PodNetwork,
}

impl NodeConfig {
    /// One directory per pod: its kubeconfig and container logs.
    fn pods_dir(&self) -> PathBuf {
        self.state_dir.join("pods")
    }
}

/// What every pod task shares.
pub struct Shared {
    client: Client,
    config: NodeConfig,
    network: PodNetwork,
    http: reqwest::Client,
}

impl Shared {
    fn pid_dir(&self) -> PathBuf {
        self.config.state_dir.join("pids")
    }

    fn record_pid(&self, pid: u32) {
        let _ = std::fs::write(self.pid_dir().join(pid.to_string()), "");
    }
}

/// Kills processes a previous run (that crashed) left behind, and their networks.
fn clean_up_previous(config: &NodeConfig) {
    if let Ok(entries) = std::fs::read_dir(config.state_dir.join("pids")) {
        for entry in entries.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }
    config.network.remove_all();
}

async fn register(client: &Client, config: &NodeConfig, kubelet_port: u16) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": config.node_name, "labels": {"kubernetes.io/hostname": config.node_name, "kubernetes.io/os": "linux"}},
    });
    nodes
        .patch(
            &config.node_name,
            &PatchParams::apply("workpool-node").force(),
            &Patch::Apply(&node),
        )
        .await
        .map_err(|err| HarnessError::Other(format!("registering node: {err}")))?;
    heartbeat(client, config, kubelet_port).await
}

async fn heartbeat(client: &Client, config: &NodeConfig, kubelet_port: u16) -> Result<()> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "workpool node agent is running",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        // Only the InternalIP: the apiserver prefers a Hostname, which nothing resolves here.
        "addresses": [{"type": "InternalIP", "address": config.network.host_ip()}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "200"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "200"},
    }});
    Api::<Node>::all(client.clone())
        .patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .map_err(|err| HarnessError::Other(format!("node status: {err}")))?;
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": config.node_name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": config.node_name, "leaseDurationSeconds": 40,
                 "renewTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}});
    // Right after the apiserver starts, kube-node-lease may not exist yet: the next
    // heartbeat tries again.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let params = PatchParams::apply("workpool-node").force();
    if let Err(err) = leases
        .patch(&config.node_name, &params, &Patch::Apply(&lease))
        .await
    {
        tracing::debug!(%err, "node lease not renewed yet");
    }
    Ok(())
}

/// Binds every unscheduled pod to this node (the only node there is).
async fn schedule(client: Client, node: String) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut stream = watcher(pods, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = stream.next().await {
        let Ok(pod) = event else { continue };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod.name_any()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                name: Some(node.clone()),
                api_version: Some("v1".into()),
                ..Default::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        if let Err(err) = api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &pod.name_any(),
                &PostParams::default(),
                &binding,
            )
            .await
        {
            tracing::debug!(pod = %pod.name_any(), %err, "binding failed (maybe bound already)");
        }
    }
}

struct Running {
    updates: watch::Sender<Pod>,
}

/// Runs the agent until `shutdown` completes; then stops every pod and removes every
/// namespace, veth and process it made.
pub async fn run(
    client: Client,
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    std::fs::create_dir_all(config.state_dir.join("pids"))
        .map_err(HarnessError::io("state dir"))?;
    clean_up_previous(&config);
    config.network.create_bridge()?;
    let host = config.network.host_ip();
    let kubelet = std::net::TcpListener::bind((host.as_str(), 0))
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(HarnessError::io("binding the kubelet log endpoint"))?;
    let kubelet_port = kubelet
        .local_addr()
        .map_err(HarnessError::io("kubelet log endpoint address"))?
        .port();
    let pods_dir = config.pods_dir();
    let log_endpoint = tokio::spawn(async move {
        if let Err(err) = logs::serve(pods_dir, kubelet, &host).await {
            tracing::warn!(%err, "kubelet log endpoint stopped");
        }
    });
    register(&client, &config, kubelet_port).await?;
    let shared = Arc::new(Shared {
        client: client.clone(),
        network: config.network.clone(),
        config: config.clone(),
        http: reqwest::Client::new(),
    });

    let scheduler = tokio::spawn(schedule(client.clone(), config.node_name.clone()));
    let beat_client = client.clone();
    let beat_config = config.clone();
    let beats = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if let Err(err) = heartbeat(&beat_client, &beat_config, kubelet_port).await {
                tracing::warn!(%err, "node heartbeat failed");
            }
        }
    });

    let pods: Api<Pod> = Api::all(client.clone());
    let watch_config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
    let mut events = watcher(pods, watch_config).default_backoff().boxed();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let used: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![false; 256]));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = &mut shutdown => break,
        };
        let Some(Ok(event)) = event else { continue };
        let (applied, deleted) = match event {
            watcher::Event::Apply(pod) => (Some(pod), None),
            watcher::Event::InitApply(pod) => {
                listed.insert(pod.metadata.uid.clone().unwrap_or_default());
                (Some(pod), None)
            }
            watcher::Event::Delete(pod) => (None, Some(pod)),
            watcher::Event::Init => {
                listed.clear();
                (None, None)
            }
            watcher::Event::InitDone => {
                // A re-list (after the watch broke, say while the apiserver restarted)
                // reports no deletions: a pod deleted meanwhile is simply not listed.
                running.retain(|uid, _| {
                    let listed = listed.contains(uid);
                    if !listed {
                        pod::kill_pod_processes(uid);
                    }
                    listed
                });
                (None, None)
            }
        };
        if let Some(pod) = deleted {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            // Dropping the sender stops the runner at once; it frees the pod's address
            // only after its namespace is gone, so no new pod can collide with it.
            running.remove(&uid);
            // Not left to the runner alone: it may be busy (a probe, a status report),
            // and a process may have left its container's group.
            pod::kill_pod_processes(&uid);
            continue;
        }
        let Some(pod) = applied else { continue };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(existing) = running.get(&uid) {
            let _ = existing.updates.send(pod);
            continue;
        }
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if finished {
            continue;
        }
        let index = used.lock().ok().and_then(|mut used| {
            let free = (2..255).find(|i| !used[*i])?;
            used[free] = true;
            u8::try_from(free).ok()
        });
        let Some(index) = index else {
            tracing::error!(pod = %pod.name_any(), "no free pod address");
            continue;
        };
        let (updates, receiver) = watch::channel(pod.clone());
        running.insert(uid, Running { updates });
        let runner = pod::PodRunner::new(shared.clone(), index, pod);
        let used = used.clone();
        tasks.spawn(async move {
            runner.run(receiver).await;
            if let Ok(mut used) = used.lock() {
                used[usize::from(index)] = false;
            }
        });
    }
    tracing::info!("node agent stopping: stopping pods");
    scheduler.abort();
    beats.abort();
    log_endpoint.abort();
    running.clear(); // every runner sees its channel close and stops its processes
    while tasks.join_next().await.is_some() {}
    let _ = Api::<Node>::all(client)
        .delete(&config.node_name, &Default::default())
        .await;
    config.network.remove_all();
    Ok(())
}
