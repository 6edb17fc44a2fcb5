//! The checker's pool on the local cluster: the operator installed with `helm install`,
//! the pool's api and worker pods run by the node, the api reached through the balancer
//! that follows its Service, and the faults that need pods and a control plane.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use workpool_core::PoolNames;
use workpool_core::crd::WorkPool;

use super::faults::Fault;
use super::run::NatsAccess;
use crate::nats_cluster::NatsCluster;
use crate::pods::{pod_processes, program_of, running_pods, wait_until};
use crate::{HarnessError, Result};
use workpool_local_cluster::pools::{condition, wait_pool};
use workpool_local_cluster::supervisor::LocalCluster;

/// The pool's name in its namespace.
const POOL: &str = "chaos";
/// How long kubelet may take to learn that a pod was force-deleted, before its grace
/// period starts. Its watch of the pods comes back with client-go's backoff after the
/// apiserver was away: up to 30 s, doubled by jitter, and not reset between the
/// checker's apiserver restarts. It was seen to take 85 s.
const KUBELET_NOTICES_WITHIN: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(180);

pub struct PodPool {
    pub cluster: LocalCluster,
    /// A 3-node NATS cluster on the pod network, when the pool runs on one
    /// (`nats.replicas: 3`); otherwise the pool uses the local cluster's single server.
    pub nats_cluster: Option<NatsCluster>,
    pub namespace: String,
    pub names: PoolNames,
    pub api_url: String,
    workers: i32,
    balancer: tokio::task::JoinHandle<std::io::Result<()>>,
    /// For each force-deleted pod, a watch that its processes stop: what it found
    /// running past the bound, if anything.
    stop_checks: Vec<tokio::task::JoinHandle<Option<String>>>,
}

impl PodPool {
    /// On the local `cluster`, installs the operator and applies a WorkPool with `spec`
    /// (its NATS URL set to the cluster's, or to a 3-node NATS cluster's with
    /// `nats.replicas: 3`), `apis` api and `workers` worker replicas; waits until every
    /// pod is ready.
    pub async fn start(
        cluster: LocalCluster,
        mut spec: Value,
        apis: i32,
        workers: i32,
        replicated: bool,
    ) -> Result<Self> {
        let nats_cluster = match replicated {
            true => Some(NatsCluster::start_on(&cluster.host).await?),
            false => None,
        };
        let namespace = cluster.plane.namespace("chaos").await?;
        let release_ns = cluster.plane.namespace("workpool-system").await?;
        cluster
            .install_chart(&release_ns, &[("operator.watchNamespace", &namespace)])
            .await?;
        match &nats_cluster {
            Some(nats) => spec["nats"] = json!({"url": nats.urls(), "replicas": 3}),
            None => spec["nats"]["url"] = json!(cluster.nats.url()),
        }
        let (repository, tag) = workpool_local_cluster::image::TEST_IMAGE;
        spec["image"] = json!({"repository": repository, "tag": tag, "pullPolicy": "Never"});
        spec["api"]["replicas"] = json!(apis);
        spec["worker"]["replicas"] = json!(workers);
        let pool: WorkPool = serde_json::from_value(json!({
            "apiVersion": "workpool.dev/v1alpha1", "kind": "WorkPool",
            "metadata": {"name": POOL}, "spec": spec,
        }))
        .map_err(HarnessError::context("the chaos WorkPool"))?;
        Api::<WorkPool>::namespaced(cluster.client.clone(), &namespace)
            .create(&PostParams::default(), &pool)
            .await
            .map_err(HarnessError::context("creating the chaos WorkPool"))?;
        let all_ready = |p: &WorkPool| {
            let status = p.status.as_ref();
            let ready =
                |r: Option<&workpool_core::crd::ReplicaStatus>, n| r.is_some_and(|r| r.ready == n);
            condition(p, "Ready").is_some_and(|(s, _)| s == "True")
                && ready(status.and_then(|s| s.api.as_ref()), apis)
                && ready(status.and_then(|s| s.workers.as_ref()), workers)
        };
        wait_pool(&cluster.client, &namespace, POOL, WAIT, all_ready).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("binding the balancer"))?;
        let api_url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(HarnessError::io("balancer address"))?
        );
        let balancer = workpool_local_cluster::balancer::Balancer::following(
            cluster.client.clone(),
            &namespace,
            &format!("{POOL}-api"),
            "http",
        );
        let follower = balancer.clone();
        wait_until("the balancer to see every api pod", WAIT, || async {
            follower.backends().len() == usize::try_from(apis).unwrap_or(0)
        })
        .await?;
        let names = PoolNames::new(&namespace, POOL)
            .map_err(HarnessError::context("the chaos pool's names"))?;
        Ok(Self {
            balancer: tokio::spawn(balancer.serve(listener)),
            cluster,
            nats_cluster,
            namespace,
            names,
            api_url,
            workers,
            stop_checks: Vec::new(),
        })
    }

    /// Whether a worker pod of the pool is ready.
    pub async fn a_worker_is_ready(&self) -> bool {
        let pods = running_pods(&self.cluster.client, &self.namespace, "worker").await;
        let ready = |pod: &Pod| {
            let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
            conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        pods.is_ok_and(|pods| pods.iter().any(ready))
    }

    /// How the checker reaches the pool's NATS: every node of a NATS cluster, or the
    /// local server with its admin credentials (it runs with auth on).
    pub fn nats_access(&self) -> NatsAccess {
        match &self.nats_cluster {
            Some(nats) => NatsAccess {
                url: nats.urls(),
                creds: None,
            },
            None => NatsAccess {
                url: self.cluster.nats.url(),
                creds: self.cluster.nats.auth().map(|a| a.admin_creds.clone()),
            },
        }
    }

    /// Stops the balancer and the whole cluster, but keeps the pods' and the node's logs,
    /// and a NATS cluster's stores, to study a failed run; returns where they are.
    pub fn stop_keeping_state(self) -> Result<Vec<std::path::PathBuf>> {
        self.balancer.abort();
        let mut kept = vec![self.cluster.node.keep_logs()?];
        if let Some(nats) = self.nats_cluster {
            kept.push(nats.keep_stores());
        }
        self.cluster.stop()?;
        Ok(kept)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.cluster.client.clone(), &self.namespace)
    }

    async fn pick(&self, component: &str, rng: &mut fastrand::Rng) -> Result<Option<String>> {
        let ns = match component {
            "operator" => self.operator_namespace().await?,
            _ => self.namespace.clone(),
        };
        let pods = running_pods(&self.cluster.client, &ns, component).await?;
        Ok((!pods.is_empty())
            .then(|| pods[rng.usize(..pods.len())].metadata.name.clone())
            .flatten())
    }

    async fn operator_namespace(&self) -> Result<String> {
        // `ControlPlane::namespace` adds a suffix; the release's is the one with the operator.
        let pods: Api<Pod> = Api::all(self.cluster.client.clone());
        let list = pods
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await
            .map_err(HarnessError::context("listing the operator pod"))?;
        list.items
            .first()
            .and_then(|pod| pod.metadata.namespace.clone())
            .ok_or_else(|| HarnessError::Other("no operator pod".into()))
    }

    /// Sends `signal` to the main process of pod `pod` (the one running `binary`, not the
    /// programs it started); `false` when no such process was found.
    fn signal_main(&self, ns: &str, pod: &str, binary: &str, signal: Signal) -> bool {
        let main = pod_processes(ns, pod).into_iter().find(|pid| {
            program_of(*pid).is_some_and(|program| program.ends_with(binary))
                && !is_exec_guard(*pid)
        });
        main.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
        })
    }

    /// Applies one of the faults that need pods or the control plane; `None` for the
    /// others (the NATS faults, which the caller applies to the cluster's NATS).
    pub async fn apply(
        &mut self,
        fault: Fault,
        ack_wait: Duration,
        platform_broken: &mut Vec<String>,
        rng: &mut fastrand::Rng,
    ) -> Result<Option<String>> {
        let ns = self.namespace.clone();
        let pause = ack_wait + ack_wait / 2;
        Ok(Some(match fault {
            Fault::KillWorker | Fault::KillApi | Fault::KillOperator => {
                let (component, binary) = match fault {
                    Fault::KillWorker => ("worker", "workpool-worker"),
                    Fault::KillApi => ("api", "workpool-api"),
                    _ => ("operator", "workpool-operator"),
                };
                let Some(pod) = self.pick(component, rng).await? else {
                    return Ok(Some(format!("{fault:?} skipped (no {component} pod)")));
                };
                let ns = match fault {
                    Fault::KillOperator => self.operator_namespace().await?,
                    _ => ns,
                };
                let killed = self.signal_main(&ns, &pod, binary, Signal::SIGKILL);
                format!("SIGKILL {pod}'s {binary} (found: {killed}; the node restarts it)")
            }
            Fault::PauseWorker => {
                let Some(pod) = self.pick("worker", rng).await? else {
                    return Ok(Some("PauseWorker skipped (no worker pod)".into()));
                };
                let paused = self.signal_main(&ns, &pod, "workpool-worker", Signal::SIGSTOP);
                tokio::time::sleep(pause).await;
                self.signal_main(&ns, &pod, "workpool-worker", Signal::SIGCONT);
                format!("SIGSTOP {pod} for {pause:?} (found: {paused})")
            }
            Fault::ForceDeleteWorker | Fault::ForceDeleteApi => {
                let component = match fault {
                    Fault::ForceDeleteWorker => "worker",
                    _ => "api",
                };
                let Some(pod) = self.pick(component, rng).await? else {
                    return Ok(Some(format!("{fault:?} skipped (no {component} pod)")));
                };
                self.force_delete(&pod).await?
            }
            Fault::ScaleUp | Fault::ScaleDown => {
                let workers = match fault {
                    Fault::ScaleUp => self.workers + 1,
                    _ => self.workers - 1,
                };
                if !(1..=5).contains(&workers) {
                    return Ok(Some(format!("{fault:?} skipped (at {})", self.workers)));
                }
                self.patch_spec(json!({"worker": {"replicas": workers}}))
                    .await
                    .map_err(HarnessError::context("scaling the workers"))?;
                self.workers = workers;
                format!("workers scaled to {workers}")
            }
            Fault::RestartApiserver => {
                self.cluster.plane.stop_apiserver().await?;
                tokio::time::sleep(pause).await;
                self.cluster.plane.start_apiserver().await?;
                format!("kube-apiserver stopped for {pause:?} and started again")
            }
            Fault::ChangePartitions => {
                let refused = self
                    .patch_spec(json!({"worker": {"partitions": 13}}))
                    .await
                    .is_err();
                if refused {
                    "a change of worker.partitions, refused by the apiserver".to_owned()
                } else {
                    platform_broken
                        .push("worker.partitions changed: the apiserver accepted it".into());
                    "a change of worker.partitions, ACCEPTED".to_owned()
                }
            }
            _ => return Ok(None),
        }))
    }

    async fn patch_spec(&self, spec: Value) -> std::result::Result<WorkPool, kube::Error> {
        Api::<WorkPool>::namespaced(self.cluster.client.clone(), &self.namespace)
            .patch(
                POOL,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
    }

    /// `kubectl delete pod --force --grace-period=0`, then checks that the pod's processes
    /// are gone; those still running are recorded in `platform_broken`.
    /// A force delete removes the object at once, and kubelet then stops the containers
    /// as for any deletion: SIGTERM, and SIGKILL at the end of the pod's grace period. So
    /// the processes must be gone within that period, once kubelet has noticed. The
    /// check runs beside the next faults ([`Self::stop_checks_done`] has its findings).
    async fn force_delete(&mut self, pod: &str) -> Result<String> {
        let grace = self
            .pods()
            .get(pod)
            .await
            .map_err(HarnessError::context("reading a pod"))?
            .spec
            .and_then(|spec| spec.termination_grace_period_seconds)
            .unwrap_or(30);
        let within =
            KUBELET_NOTICES_WITHIN + Duration::from_secs(u64::try_from(grace).unwrap_or(30));
        self.pods()
            .delete(pod, &DeleteParams::default().grace_period(0))
            .await
            .map_err(HarnessError::context("force-deleting a pod"))?;
        let (ns, deleted) = (self.namespace.clone(), pod.to_owned());
        self.stop_checks.push(tokio::spawn(async move {
            let pod = deleted;
            let stopped = || async { pod_processes(&ns, &pod).is_empty() };
            let waited = wait_until("a force-deleted pod's processes to stop", within, stopped);
            match waited.await {
                Ok(()) => None,
                Err(_) => Some(format!(
                    "{pod}: processes {:?} still run {within:?} after a force delete",
                    pod_processes(&ns, &pod)
                )),
            }
        }));
        Ok(format!(
            "force-deleted {pod} (its processes must stop within {within:?})"
        ))
    }

    /// Waits for every force-deleted pod's check; what ran on past its bound.
    pub async fn stop_checks_done(&mut self) -> Vec<String> {
        let mut broken = Vec::new();
        for check in self.stop_checks.drain(..) {
            match check.await {
                Ok(Some(found)) => broken.push(found),
                Ok(None) => {}
                Err(err) => broken.push(format!("a force delete's check failed: {err}")),
            }
        }
        broken
    }
}

fn is_exec_guard(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|byte| *byte == 0)
            .any(|arg| arg == b"--exec-guard")
    })
}
