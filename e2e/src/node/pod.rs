//! One pod on this node: its network namespace, its containers as local processes, probes,
//! restarts, status reports, and graceful termination.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Shared;

/// Status of one container, as reported in `containerStatuses`.
struct ContainerRun {
    spec: Container,
    child: Option<tokio::process::Child>,
    started_at: Option<String>,
    restarts: i32,
    ready: bool,
    liveness_failures: i32,
    readiness_failures: i32,
    last_exit: Option<i32>,
    /// Exited and, per the pod's `restartPolicy`, never started again.
    finished: bool,
    next_start: Instant,
    waiting: Option<(String, String)>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub struct PodRunner {
    shared: Arc<Shared>,
    index: u8,
    pod: Pod,
    dir: PathBuf,
    netns: Option<String>,
    start_time: String,
    last_status: Value,
}

impl PodRunner {
    pub fn new(shared: Arc<Shared>, index: u8, pod: Pod) -> Self {
        let dir = super::logs::pod_dir(
            &shared.config.pods_dir(),
            &pod.namespace().unwrap_or_default(),
            &pod.name_any(),
        );
        Self {
            shared,
            index,
            pod,
            dir,
            netns: None,
            start_time: now_rfc3339(),
            last_status: Value::Null,
        }
    }

    fn ip(&self) -> String {
        self.shared.network.pod_ip(self.index)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(
            self.shared.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        )
    }

    /// Runs the pod until it is deleted (or `gone` says the API object vanished).
    pub async fn run(mut self, mut updates: watch::Receiver<Pod>) {
        let name = format!(
            "{}/{}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        );
        let mut containers = match self.prepare().await {
            Ok(containers) => containers,
            Err(err) => {
                tracing::warn!(pod = %name, %err, "pod cannot start");
                self.report_failure(&err).await;
                Vec::new()
            }
        };
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&mut containers).await;
                let _ = self
                    .pods()
                    .delete(
                        &self.pod.name_any(),
                        &DeleteParams::default().grace_period(0),
                    )
                    .await;
                break;
            }
            for container in &mut containers {
                self.step(container).await;
            }
            if !containers.is_empty() {
                self.report(&containers).await;
            }
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        // The pod object is gone from the API: stop at once.
                        self.pod.metadata.deletion_timestamp = None;
                        for container in &mut containers {
                            stop(container, Duration::from_secs(2)).await;
                        }
                        break;
                    }
                    self.pod = updates.borrow_and_update().clone();
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        kill_pod_processes(self.pod.metadata.uid.as_deref().unwrap_or_default());
        self.shared.network.delete_pod(self.index);
        tracing::info!(pod = %name, "pod removed");
    }

    async fn prepare(&mut self) -> Result<Vec<ContainerRun>, String> {
        std::fs::create_dir_all(&self.dir).map_err(|err| err.to_string())?;
        self.netns = Some(
            self.shared
                .network
                .create_pod(self.index)
                .map_err(|err| err.to_string())?,
        );
        self.write_kubeconfig().await?;
        let spec = self.pod.spec.clone().ok_or("pod has no spec")?;
        Ok(spec
            .containers
            .into_iter()
            .map(|spec| ContainerRun {
                spec,
                child: None,
                started_at: None,
                restarts: 0,
                ready: false,
                liveness_failures: 0,
                readiness_failures: 0,
                last_exit: None,
                finished: false,
                next_start: Instant::now(),
                waiting: None,
            })
            .collect())
    }

    /// The pod's service-account credentials, as a kubeconfig its processes find
    /// through `KUBECONFIG`.
    async fn write_kubeconfig(&self) -> Result<(), String> {
        let namespace = self.pod.namespace().unwrap_or_default();
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600 * 24),
                bound_object_ref: Some(BoundObjectReference {
                    kind: Some("Pod".into()),
                    api_version: Some("v1".into()),
                    name: Some(self.pod.name_any()),
                    uid: self.pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(self.shared.client.clone(), &namespace);
        let token: TokenRequest = accounts
            .create_subresource("token", &account, &PostParams::default(), &request)
            .await
            .map_err(|err| format!("token for service account {account}: {err}"))?;
        let token = token.status.map(|s| s.token).unwrap_or_default();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: cluster, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: pod, user: {{token: \"{token}\"}}}}]\n\
             contexts: [{{name: pod, context: {{cluster: cluster, user: pod, namespace: {namespace}}}}}]\ncurrent-context: pod\n",
            self.shared.config.pod_api_server,
            self.shared.config.ca_file.display()
        );
        std::fs::write(self.dir.join("kubeconfig"), text).map_err(|err| err.to_string())
    }

    async fn env(&self, container: &Container) -> Result<Vec<(String, String)>, String> {
        let namespace = self.pod.namespace().unwrap_or_default();
        let mut env = vec![
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
            ("HOSTNAME".to_owned(), self.pod.name_any()),
            (
                "KUBECONFIG".to_owned(),
                self.dir.join("kubeconfig").display().to_string(),
            ),
            pod_marker(self.pod.metadata.uid.as_deref().unwrap_or_default()),
        ];
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(source)) => {
                    if let Some(field) = &source.field_ref {
                        match field.field_path.as_str() {
                            "metadata.name" => self.pod.name_any(),
                            "metadata.namespace" => namespace.clone(),
                            "metadata.uid" => self.pod.metadata.uid.clone().unwrap_or_default(),
                            "status.podIP" => self.ip(),
                            "status.hostIP" => self.shared.network.host_ip(),
                            "spec.nodeName" => self.shared.config.node_name.clone(),
                            "spec.serviceAccountName" => self
                                .pod
                                .spec
                                .as_ref()
                                .and_then(|s| s.service_account_name.clone())
                                .unwrap_or_default(),
                            other => return Err(format!("unsupported fieldRef {other}")),
                        }
                    } else if let Some(key) = &source.secret_key_ref {
                        let secret =
                            Api::<Secret>::namespaced(self.shared.client.clone(), &namespace)
                                .get(&key.name)
                                .await
                                .map_err(|err| format!("secret {}: {err}", key.name))?;
                        let bytes = secret
                            .data
                            .and_then(|d| d.get(&key.key).cloned())
                            .ok_or(format!("secret {} has no {}", key.name, key.key))?;
                        String::from_utf8_lossy(&bytes.0).into_owned()
                    } else if let Some(key) = &source.config_map_key_ref {
                        let map =
                            Api::<ConfigMap>::namespaced(self.shared.client.clone(), &namespace)
                                .get(&key.name)
                                .await
                                .map_err(|err| format!("configmap {}: {err}", key.name))?;
                        map.data
                            .and_then(|d| d.get(&key.key).cloned())
                            .ok_or(format!("configmap {} has no {}", key.name, key.key))?
                    } else {
                        return Err(format!("unsupported valueFrom for {}", var.name));
                    }
                }
                (None, None) => String::new(),
            };
            env.push((var.name.clone(), value));
        }
        Ok(env)
    }

    /// The local binary for a container, if its image is ours.
    fn binary(&self, container: &Container) -> Result<(PathBuf, Vec<String>), (String, String)> {
        let image = container.image.clone().unwrap_or_default();
        let repository = image
            .rsplit_once(':')
            .map_or(image.as_str(), |(repo, _)| repo);
        if repository != self.shared.config.image_repository {
            return Err((
                "ErrImagePull".into(),
                format!(
                    "image {image} is not available on this node (only {}:*)",
                    self.shared.config.image_repository
                ),
            ));
        }
        let mut words: Vec<String> = container.command.clone().unwrap_or_default();
        words.extend(container.args.clone().unwrap_or_default());
        let Some(program) = words.first().cloned() else {
            return Err(("CreateContainerError".into(), "no command given".into()));
        };
        let path = self.shared.config.bin_dir.join(&program);
        if !path.is_file() {
            return Err((
                "CreateContainerError".into(),
                format!("{program} is not a binary of this image"),
            ));
        }
        Ok((path, words.split_off(1)))
    }

    async fn start(&self, run: &mut ContainerRun) {
        let (program, args) = match self.binary(&run.spec) {
            Ok(found) => found,
            Err(reason) => {
                run.waiting = Some(reason);
                return;
            }
        };
        let env = match self.env(&run.spec).await {
            Ok(env) => env,
            Err(message) => {
                run.waiting = Some(("CreateContainerConfigError".into(), message));
                run.next_start = Instant::now() + Duration::from_secs(2);
                return;
            }
        };
        let log = super::logs::log_path(&self.dir, &run.spec.name);
        let (Ok(out), Some(netns)) = (
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log),
            &self.netns,
        ) else {
            run.waiting = Some(("CreateContainerError".into(), "cannot open the log".into()));
            return;
        };
        let err = out.try_clone().ok();
        // Under a guard, so the process dies with this agent however the agent ends.
        let grace = Duration::from_secs(u64::try_from(self.grace_seconds()).unwrap_or(30));
        let child = tokio::process::Command::new("sh")
            .args(crate::process::guard_args(&run.spec.name, None, grace))
            .args(["ip", "netns", "exec", netns])
            .arg(&program)
            .args(&args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err.map_or(Stdio::null(), Stdio::from))
            // Its own process group, so stopping the container reaches every process in
            // it, as a runtime's cgroup does, not only the guard shell.
            .process_group(0)
            .spawn();
        match child {
            Ok(child) => {
                if let Some(pid) = child.id() {
                    self.shared.record_pid(pid);
                }
                run.child = Some(child);
                run.started_at = Some(now_rfc3339());
                run.waiting = None;
                run.ready = false;
                run.liveness_failures = 0;
                run.readiness_failures = 0;
                tracing::info!(pod = %self.pod.name_any(), container = %run.spec.name, ip = %self.ip(), "container started");
            }
            Err(err) => run.waiting = Some(("CreateContainerError".into(), err.to_string())),
        }
    }

    async fn probe(&self, probe: &Probe) -> bool {
        let Some(http) = &probe.http_get else {
            return true;
        };
        let port = match &http.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => *port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                let ports = self
                    .pod
                    .spec
                    .as_ref()
                    .map(|s| {
                        s.containers
                            .iter()
                            .flat_map(|c| c.ports.clone().unwrap_or_default())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                match ports.iter().find(|p| p.name.as_deref() == Some(name)) {
                    Some(port) => port.container_port,
                    None => return false,
                }
            }
        };
        let url = format!(
            "http://{}:{port}{}",
            self.ip(),
            http.path.clone().unwrap_or_else(|| "/".into())
        );
        let timeout =
            Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1)).unwrap_or(1));
        matches!(self.shared.http.get(&url).timeout(timeout).send().await, Ok(response) if response.status().is_success() || response.status().is_redirection())
    }

    /// One look at a container: reap, restart, probe.
    async fn step(&self, run: &mut ContainerRun) {
        if let Some(child) = &mut run.child
            && let Ok(Some(status)) = child.try_wait()
        {
            let code = status.code().unwrap_or(137);
            run.child = None;
            run.ready = false;
            run.last_exit = Some(code);
            run.finished = match self.restart_policy().as_str() {
                "Never" => true,
                "OnFailure" => code == 0,
                _ => false,
            };
            if !run.finished {
                run.restarts += 1;
                // Crash-loop backoff: 1s, 2s, 4s ... up to 30s.
                let delay = Duration::from_secs(1 << run.restarts.clamp(0, 5) as u32)
                    .min(Duration::from_secs(30));
                run.next_start = Instant::now() + delay;
            }
            tracing::info!(pod = %self.pod.name_any(), container = %run.spec.name, code, restart = !run.finished, "container exited");
        }
        if run.child.is_none() {
            if !run.finished
                && Instant::now() >= run.next_start
                && run
                    .waiting
                    .as_ref()
                    .is_none_or(|(reason, _)| reason != "ErrImagePull")
            {
                self.start(run).await;
            }
            return;
        }
        let age = run
            .started_at
            .as_ref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| (chrono::Utc::now() - t.to_utc()).num_seconds());
        if let Some(probe) = run.spec.readiness_probe.clone() {
            if age >= i64::from(probe.initial_delay_seconds.unwrap_or(0)) {
                if self.probe(&probe).await {
                    run.readiness_failures = 0;
                    run.ready = true;
                } else {
                    run.readiness_failures += 1;
                    if run.readiness_failures >= probe.failure_threshold.unwrap_or(3) || !run.ready
                    {
                        run.ready = false;
                    }
                }
            }
        } else {
            run.ready = true;
        }
        if let Some(probe) = run.spec.liveness_probe.clone()
            && age >= i64::from(probe.initial_delay_seconds.unwrap_or(0))
        {
            if self.probe(&probe).await {
                run.liveness_failures = 0;
            } else {
                run.liveness_failures += 1;
                if run.liveness_failures >= probe.failure_threshold.unwrap_or(3) {
                    tracing::warn!(pod = %self.pod.name_any(), container = %run.spec.name, "liveness probe failed; restarting");
                    stop(
                        run,
                        Duration::from_secs(u64::try_from(self.grace_seconds()).unwrap_or(30)),
                    )
                    .await;
                }
            }
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn grace_seconds(&self) -> i64 {
        self.pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
    }

    async fn terminate(&self, containers: &mut [ContainerRun]) {
        let grace = Duration::from_secs(u64::try_from(self.grace_seconds()).unwrap_or(30));
        futures::future::join_all(containers.iter_mut().map(|run| stop(run, grace))).await;
    }

    async fn report_failure(&mut self, message: &str) {
        let status = json!({"status": {"phase": "Pending", "hostIP": self.shared.network.host_ip(),
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "message": message, "reason": "NodeAgentError"}});
        let _ = self
            .pods()
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await;
    }

    async fn report(&mut self, containers: &[ContainerRun]) {
        let statuses: Vec<Value> = containers
            .iter()
            .map(|run| {
                let terminated = |code: i32| json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }}});
                let state = match (&run.child, &run.waiting, run.last_exit) {
                    (Some(_), _, _) => json!({"running": {"startedAt": run.started_at}}),
                    (None, _, Some(code)) if run.finished => terminated(code),
                    (None, Some((reason, message)), _) => json!({"waiting": {"reason": reason, "message": message}}),
                    (None, None, _) => json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                };
                let last = match run.last_exit {
                    Some(code) if !run.finished => terminated(code),
                    _ => json!({}),
                };
                json!({"name": run.spec.name, "image": run.spec.image, "imageID": "", "ready": run.ready,
                       "started": run.child.is_some(), "restartCount": run.restarts, "state": state, "lastState": last})
            })
            .collect();
        let all_ready = containers.iter().all(|run| run.ready);
        let any_running = containers.iter().any(|run| run.child.is_some());
        let truth = |ok: bool| if ok { "True" } else { "False" };
        let conditions: BTreeMap<&str, &str> = BTreeMap::from([
            ("PodScheduled", "True"),
            ("Initialized", "True"),
            ("ContainersReady", truth(all_ready)),
            ("Ready", truth(all_ready)),
        ]);
        // Succeeded or Failed once every container has exited for good (restartPolicy
        // Never or OnFailure), as kubelet reports it.
        let phase = if containers.iter().all(|run| run.finished) {
            if containers.iter().all(|run| run.last_exit == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if any_running || containers.iter().any(|run| run.started_at.is_some()) {
            "Running"
        } else {
            "Pending"
        };
        let status = json!({"status": {
            "phase": phase,
            "hostIP": self.shared.network.host_ip(),
            "hostIPs": [{"ip": self.shared.network.host_ip()}],
            "podIP": self.ip(),
            "podIPs": [{"ip": self.ip()}],
            "startTime": self.start_time,
            "conditions": conditions.iter().map(|(kind, status)| json!({"type": kind, "status": status})).collect::<Vec<_>>(),
            "containerStatuses": statuses,
        }});
        if status == self.last_status {
            return;
        }
        match self
            .pods()
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
        {
            Ok(_) => self.last_status = status,
            Err(err) => tracing::debug!(pod = %self.pod.name_any(), %err, "status not reported"),
        }
    }
}

/// SIGTERM to the container's process group, wait up to `grace` for its first process,
/// then SIGKILL to the whole group.
async fn stop(run: &mut ContainerRun, grace: Duration) {
    let Some(mut child) = run.child.take() else {
        return;
    };
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    // Whatever of the group outlived its first process (or ignored SIGTERM) goes too.
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    run.ready = false;
}

/// The variable that marks every process of a pod, including what its containers start
/// in process groups of their own: this agent's stand-in for a runtime's cgroup.
fn pod_marker(uid: &str) -> (String, String) {
    ("WORKPOOL_NODE_POD_UID".to_owned(), uid.to_owned())
}

/// SIGKILL to every process of the pod with `uid`, wherever it is: what stopping a
/// runtime's cgroup does, so nothing of a deleted pod runs on.
pub fn kill_pod_processes(uid: &str) {
    if uid.is_empty() {
        return;
    }
    let (name, value) = pod_marker(uid);
    for pid in crate::pods::processes_with_env(&[format!("{name}={value}")]) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
