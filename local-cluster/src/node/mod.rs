//! A real Kubernetes node for a [`ControlPlane`]: a private containerd (with runc and the
//! CNI bridge `wpk0` on 10.89.0.0/24), kubelet, kube-scheduler, kube-proxy in iptables
//! mode and CoreDNS, running our own image. Every process runs under the shell guard of
//! [`crate::process`], so it stops when the test process does.
//!
//! Use: [`RealNode::prepare`] (checks the machine, makes the bridge so its host address
//! exists), then [`ControlPlane::start_for_pods`] on [`HOST_IP`], then
//! [`RealNode::start`]. [`RealNode::stop`] (also run on drop) removes every pod, process,
//! mount, cgroup, interface and iptables chain the node made, and says what is left.
//!
//! CoreDNS runs as a host process on the bridge address, behind a selector-less `kube-dns`
//! Service whose EndpointSlice we write: it needs no image of its own and no pod network
//! to be up first, and it starts in well under a second. The `kubernetes` Service gets a
//! hand-written EndpointSlice the same way, since the control plane runs without the
//! apiserver's endpoint reconciler.

pub mod config;
pub mod containerd;
mod leftovers;
mod machine;
pub mod network;
mod services;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::control_plane::{ControlPlane, spawn_guarded};
use crate::image::{self, Compression, IMAGE_REPOSITORY, PAUSE_BINARY, PAUSE_REFERENCE};
use crate::{Error, Result, paths};

pub use leftovers::remove_stale;
use leftovers::{
    kubelet_host_files, live_owners, processes_in_cgroup, remove_cni_cache,
    remove_kubelet_host_files,
};
use machine::{SYSCTLS_FILE, check_machine, make_cgroup_root, read_sysctls, restore_sysctls};
pub use network::{BRIDGE, HOST_IP, POD_SUBNET};
use services::publish_host_endpoints;
pub use services::{HostPort, publish_host_service};

/// The Workpool image the node imports (the chart's default reference).
pub fn workpool_image_reference() -> String {
    format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// The node directories' prefix under /tmp, and the file in each naming the process that
/// owns it (so a later run can tell a killed run's leftovers from a live node).
const DIR_PREFIX: &str = "wpk-";
const OWNER_FILE: &str = "owner.pid";
const CGROUP_PREFIX: &str = "workpool-node-";

const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// The upstream tools a node needs, as `scripts/tools.sh` names them.
struct Tools {
    kubelet: PathBuf,
    kube_proxy: PathBuf,
    kube_scheduler: PathBuf,
    coredns: PathBuf,
    crictl: PathBuf,
    cni_bin_dir: PathBuf,
}

impl Tools {
    fn find() -> Result<Self> {
        let cni_bridge = paths::tool("cni-plugins", "bridge")?;
        let cni_bin_dir = cni_bridge
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for plugin in ["host-local", "loopback", "portmap"] {
            if !cni_bin_dir.join(plugin).is_file() {
                return Err(Error::Missing(format!(
                    "the CNI plugin {plugin} is missing from {}: run scripts/tools.sh cni-plugins",
                    cni_bin_dir.display()
                )));
            }
        }
        Ok(Self {
            kubelet: paths::tool("kubelet", "kubelet")?,
            kube_proxy: paths::tool("kube-proxy", "kube-proxy")?,
            kube_scheduler: paths::tool("kube-scheduler", "kube-scheduler")?,
            coredns: paths::tool("coredns", "coredns")?,
            crictl: paths::tool("crictl", "crictl")?,
            cni_bin_dir,
        })
    }
}

/// One supervised process: its guard (whose SIGTERM stops the program) and its log.
#[derive(Debug)]
struct Component {
    name: &'static str,
    guard: Child,
    log: PathBuf,
}

impl Component {
    fn start(name: &'static str, program: &Path, args: &[String], logs: &Path) -> Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let guard = spawn_guarded(name, program, args, &log, None)?;
        Ok(Self { name, guard, log })
    }

    fn running(&mut self) -> bool {
        matches!(self.guard.try_wait(), Ok(None))
    }

    /// SIGTERM to the guard, which gives the program its grace period, then waits.
    fn stop(&mut self, timeout: Duration) {
        if let Ok(pid) = i32::try_from(self.guard.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.guard.kill();
        let _ = self.guard.wait();
    }
}

/// A real node; see the module documentation.
#[derive(Debug)]
pub struct RealNode {
    dir: PathBuf,
    pub node_name: String,
    cgroup_root: String,
    cri_socket: PathBuf,
    crictl: Option<PathBuf>,
    kube_proxy: Option<PathBuf>,
    components: Vec<Component>,
    sysctls_before: Vec<(String, String)>,
    stopped: bool,
}

impl RealNode {
    /// Checks that this machine can run a node (root, cgroups, overlayfs, iptables,
    /// containerd, runc and the built tools) and makes the bridge with [`HOST_IP`], so
    /// the control plane can be started on it. Fails with what is missing.
    pub fn prepare() -> Result<Self> {
        check_machine()?;
        let owners = live_owners();
        if !owners.is_empty() {
            // Two nodes on one machine would fight over wpk0 and kube-proxy's KUBE- chains.
            return Err(Error::Other(format!(
                "another real node runs here (process {}); only one can at a time",
                owners
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // A test process killed outright: its guards stopped kubelet and containerd, but
        // shims, containers, mounts and the network outlive it.
        let removed = remove_stale();
        if !removed.is_empty() {
            eprintln!(
                "real node: removed what a killed run left: {}",
                removed.join(", ")
            );
        }
        // A short path: containerd's unix sockets are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in("/tmp")
            .map_err(Error::io("the node's directory"))?
            .keep();
        let sysctls_before = read_sysctls();
        let node = Self {
            cri_socket: containerd::socket_path(&dir.join("containerd")),
            dir,
            node_name: format!("{CGROUP_PREFIX}{}", std::process::id()),
            cgroup_root: format!("{CGROUP_PREFIX}{}", std::process::id()),
            crictl: None,
            kube_proxy: None,
            components: Vec::new(),
            sysctls_before,
            stopped: false,
        };
        std::fs::write(node.dir.join(OWNER_FILE), std::process::id().to_string())
            .map_err(Error::io("writing the node's owner file"))?;
        let saved: String = node
            .sysctls_before
            .iter()
            .map(|(key, value)| format!("{key}={value}\n"))
            .collect();
        std::fs::write(node.dir.join(SYSCTLS_FILE), saved)
            .map_err(Error::io("saving the host's sysctls"))?;
        network::create_bridge()?;
        Ok(node)
    }

    /// The node's directory (configs, logs, containerd's and kubelet's state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a component's log is (`containerd`, `kubelet`, `kube-proxy`,
    /// `kube-scheduler`, `coredns`).
    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// Starts containerd (and imports the Workpool and pause images), kube-scheduler,
    /// kubelet, kube-proxy and CoreDNS against `plane`, and waits until the Node is
    /// Ready and DNS answers.
    pub async fn start(&mut self, plane: &ControlPlane) -> Result<()> {
        let tools = Tools::find()?;
        self.crictl = Some(tools.crictl.clone());
        self.kube_proxy = Some(tools.kube_proxy.clone());
        for sub in [
            "logs",
            "containerd",
            "cni/conf",
            "cni/ipam",
            "kubelet",
            "pod-logs",
            "volume-plugins",
            "images",
        ] {
            std::fs::create_dir_all(self.dir.join(sub))
                .map_err(Error::io(format!("creating the node's {sub} directory")))?;
        }
        make_cgroup_root(&self.cgroup_root)?;
        self.start_containerd(&tools).await?;
        self.import_images().await?;
        let [
            scheduler_port,
            kubelet_port,
            kubelet_healthz,
            proxy_healthz,
            proxy_metrics,
        ] = crate::free_ports::<5>()?;
        // kube-scheduler: it, not the test, binds pods to the node.
        let kubeconfig = plane.kubeconfig.display();
        self.start_component(
            "kube-scheduler",
            &tools.kube_scheduler,
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={scheduler_port}"),
            ],
        )?;
        // CoreDNS and the Services that lead to it and to the apiserver.
        self.publish_host_services(plane).await?;
        let corefile = self.dir.join("Corefile");
        std::fs::write(&corefile, config::corefile(&plane.kubeconfig))
            .map_err(Error::io("writing the Corefile"))?;
        let corefile = corefile.display().to_string();
        self.start_component("coredns", &tools.coredns, &["-conf".into(), corefile])?;
        self.start_kubelet(&tools, plane, kubelet_port, kubelet_healthz)?;
        let name = self.node_name.clone();
        let proxy = config::kube_proxy_args(&plane.kubeconfig, &name, proxy_healthz, proxy_metrics);
        self.start_component("kube-proxy", &tools.kube_proxy, &proxy)?;
        self.wait_ready(plane).await
    }

    /// Starts component `name` (`program args`) under the guard, logging to its log.
    fn start_component(
        &mut self,
        name: &'static str,
        program: &Path,
        args: &[String],
    ) -> Result<()> {
        let logs = self.dir.join("logs");
        self.components
            .push(Component::start(name, program, args, &logs)?);
        Ok(())
    }

    /// containerd with the CNI network, once it answers.
    async fn start_containerd(&mut self, tools: &Tools) -> Result<()> {
        let containerd_dir = self.dir.join("containerd");
        std::fs::write(
            self.dir.join("cni/conf/10-workpool-node.conflist"),
            network::conflist(&self.dir.join("cni/ipam")),
        )
        .map_err(Error::io("writing the CNI conflist"))?;
        let cni = containerd::CniDirs {
            bin_dir: tools.cni_bin_dir.clone(),
            conf_dir: self.dir.join("cni/conf"),
        };
        let containerd_config = containerd_dir.join("config.toml");
        std::fs::write(
            &containerd_config,
            containerd::config(&containerd_dir, Some(&cni)),
        )
        .map_err(Error::io("writing containerd's config"))?;
        let containerd_program = containerd::find_on_path("containerd")
            .ok_or_else(|| Error::Missing("containerd is not installed".into()))?;
        let config = containerd_config.display().to_string();
        self.start_component(
            "containerd",
            &containerd_program,
            &["--config".into(), config],
        )?;
        let socket = self.cri_socket.clone();
        let containerd_log = self.log("containerd");
        tokio::task::spawn_blocking(move || {
            containerd::wait_answering(&socket, Duration::from_secs(20), &containerd_log)
        })
        .await
        .map_err(Error::context("waiting for containerd"))?
    }

    /// kubelet, with its KubeletConfiguration and the pods' default resolv.conf.
    fn start_kubelet(
        &mut self,
        tools: &Tools,
        plane: &ControlPlane,
        port: u16,
        healthz_port: u16,
    ) -> Result<()> {
        let resolv_conf = self.dir.join("resolv.conf");
        std::fs::write(&resolv_conf, format!("nameserver {HOST_IP}\n"))
            .map_err(Error::io("writing the pods' default resolv.conf"))?;
        let kubelet_config = self.dir.join("kubelet-config.yaml");
        let settings = config::KubeletSettings {
            runtime_socket: &self.cri_socket,
            port,
            healthz_port,
            client_ca: &plane.kubelet_client_ca_file(),
            cgroup_root: &format!("/{}", self.cgroup_root),
            pod_logs_dir: &self.dir.join("pod-logs"),
            volume_plugin_dir: &self.dir.join("volume-plugins"),
            resolv_conf: &resolv_conf,
        };
        std::fs::write(&kubelet_config, config::kubelet(&settings))
            .map_err(Error::io("writing the KubeletConfiguration"))?;
        let args = [
            format!("--config={}", kubelet_config.display()),
            format!("--kubeconfig={}", plane.kubeconfig.display()),
            format!("--root-dir={}", self.dir.join("kubelet").display()),
            // Not under --root-dir by default, but /var/lib/kubelet/pki.
            format!("--cert-dir={}", self.dir.join("kubelet/pki").display()),
            format!("--hostname-override={}", self.node_name),
            format!("--node-ip={HOST_IP}"),
        ];
        self.start_component("kubelet", &tools.kubelet, &args)
    }

    /// Writes the uncompressed Workpool image (from this workspace's `target/<profile>`
    /// binaries), the test image and the pause image, and imports them into containerd's
    /// CRI namespace.
    async fn import_images(&self) -> Result<()> {
        let images = self.dir.join("images");
        let socket = self.cri_socket.clone();
        tokio::task::spawn_blocking(move || {
            let pause_binary = paths::workspace_binary(PAUSE_BINARY)?;
            let binary_dir = pause_binary
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let workpool = image::workpool_image(&binary_dir, &workpool_image_reference())?;
            let test = image::test_image(&binary_dir)?;
            let pause = image::pause_image(&pause_binary, PAUSE_REFERENCE)?;
            for (spec, file) in [
                (workpool, "workpool.oci.tar"),
                (test, "workpool-test.oci.tar"),
                (pause, "pause.oci.tar"),
            ] {
                let archive = images.join(file);
                // Debug binaries are large: uncompressed layers write and import faster.
                image::write_oci_archive(&spec, &archive, Compression::None)?;
                let output = containerd::ctr(
                    &socket,
                    &["images", "import", &archive.to_string_lossy()],
                    Duration::from_secs(120),
                )?;
                if !output.status.success() {
                    return Err(Error::Other(format!(
                        "importing {}: {}",
                        spec.reference,
                        String::from_utf8_lossy(&output.stderr)
                    )));
                }
                let _ = std::fs::remove_file(&archive);
            }
            Ok(())
        })
        .await
        .map_err(Error::context("importing images"))?
    }

    /// The `kube-dns` Service (ClusterIP [`config::CLUSTER_DNS_IP`]) and the `kubernetes`
    /// Service's endpoints, both at the host address.
    async fn publish_host_services(&self, plane: &ControlPlane) -> Result<()> {
        let client = plane.client().await?;
        let api_port = plane
            .server
            .rsplit(':')
            .next()
            .and_then(|port| port.parse::<u16>().ok())
            .ok_or_else(|| Error::Other(format!("no port in {}", plane.server)))?;
        let dns = [
            HostPort::new("dns", 53, 53, "UDP"),
            HostPort::new("dns-tcp", 53, 53, "TCP"),
        ];
        let labels = serde_json::json!({"k8s-app": "kube-dns"});
        let dns_ip = Some(config::CLUSTER_DNS_IP);
        publish_host_service(&client, "kube-system", "kube-dns", &dns, dns_ip, labels).await?;
        // The apiserver made the `kubernetes` Service; it lacks only its endpoints.
        let https = [HostPort::new("https", 443, api_port, "TCP")];
        publish_host_endpoints(&client, "default", "kubernetes", &https).await
    }

    /// Waits until the Node is Ready, CoreDNS listens and kube-proxy has the rules of the
    /// `kubernetes` and `kube-dns` Services (until then a ClusterIP leads out of the
    /// machine, where something else may answer); fails early (with the end of its
    /// log) when a component exits.
    async fn wait_ready(&mut self, plane: &ControlPlane) -> Result<()> {
        let nodes: Api<Node> = Api::all(plane.client().await?);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let exited = self.components.iter_mut().position(|c| !c.running());
            if let Some(exited) = exited.and_then(|index| self.components.get(index)) {
                return Err(Error::Other(format!(
                    "{} exited; the end of its log:\n{}",
                    exited.name,
                    containerd::log_tail(&exited.log, 25)
                )));
            }
            let ready = nodes
                .get_opt(&self.node_name)
                .await
                .ok()
                .flatten()
                .and_then(|node| node.status?.conditions)
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            let dns_listening = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([10, 89, 0, 1], 53)),
                Duration::from_millis(200),
            )
            .is_ok();
            let services_proxied = network::services_proxied(&[
                "default/kubernetes:https",
                "kube-system/kube-dns:dns",
            ]);
            if ready && dns_listening && services_proxied {
                return self.untaint_ready(&nodes).await;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "node {} to be Ready (ready: {ready}, CoreDNS listening: {dns_listening}, \
                     Services proxied: {services_proxied}); \
                     the end of kubelet's log:\n{}",
                    self.node_name,
                    containerd::log_tail(&self.log("kubelet"), 25)
                )));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// kubelet registers its Node with the `node.kubernetes.io/not-ready` taint, which
    /// kube-controller-manager's node lifecycle controller lifts once the Node is Ready.
    /// That controller is not run (on a one-node cluster its evictions, say while the
    /// checker restarts the apiserver, would have nowhere to go), so we lift it, as it
    /// would.
    async fn untaint_ready(&self, nodes: &Api<Node>) -> Result<()> {
        let node = nodes
            .get(&self.node_name)
            .await
            .map_err(Error::context(format!("reading node {}", self.node_name)))?;
        let taints = node.spec.and_then(|spec| spec.taints).unwrap_or_default();
        let kept: Vec<_> = taints
            .iter()
            .filter(|taint| taint.key != NOT_READY_TAINT)
            .collect();
        if kept.len() == taints.len() {
            return Ok(());
        }
        let patch = serde_json::json!({"spec": {"taints": kept}});
        nodes
            .patch(
                &self.node_name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(Error::context(format!(
                "untainting node {}",
                self.node_name
            )))?;
        Ok(())
    }

    /// Copies the components' and the pods' logs out of the node's directory (which
    /// [`RealNode::stop`] removes), to study a failed run; returns where they are.
    pub fn keep_logs(&self) -> Result<PathBuf> {
        let kept = tempfile::Builder::new()
            .prefix("workpool-node-logs-")
            .tempdir()
            .map_err(Error::io("a directory for the node's logs"))?
            .keep();
        for logs in ["logs", "pod-logs"] {
            let mut copy = std::process::Command::new("cp");
            copy.arg("-rL").arg(self.dir.join(logs)).arg(&kept);
            containerd::run_with_timeout(copy, Duration::from_secs(60))?;
        }
        Ok(kept)
    }

    /// Stops everything (pods first, through the CRI, so their networks are torn down by
    /// the CNI plugins) and removes what the node made. Fails listing what is left.
    pub fn stop(&mut self) -> Result<()> {
        if !self.stopped {
            self.stopped = true;
            self.tear_down();
        }
        let left = self.leftovers();
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "the real node left behind: {}",
                left.join(", ")
            )))
        }
    }

    fn component(&mut self, name: &str) -> Option<&mut Component> {
        self.components.iter_mut().find(|c| c.name == name)
    }

    fn tear_down(&mut self) {
        let grace = Duration::from_secs(10);
        let containerd_dir = self.dir.join("containerd");
        // kubelet first, so it does not start again what we remove.
        if let Some(kubelet) = self.component("kubelet") {
            kubelet.stop(grace);
        }
        if let Some(crictl) = self.crictl.clone()
            && self.component("containerd").is_some_and(Component::running)
        {
            self.remove_pods(&crictl);
        }
        if let Some(proxy) = self.component("kube-proxy") {
            proxy.stop(grace);
        }
        if let Some(kube_proxy) = self.kube_proxy.clone() {
            let mut cleanup = std::process::Command::new(kube_proxy);
            cleanup.arg("--cleanup");
            let _ = containerd::run_with_timeout(cleanup, Duration::from_secs(30));
        }
        for component in self.components.iter_mut().rev() {
            component.stop(grace);
        }
        // Shims outlive containerd (they name its socket, under our directory); a
        // container left running is in our cgroup.
        for pid in containerd::processes_mentioning(&self.dir)
            .into_iter()
            .chain(processes_in_cgroup(&self.cgroup_root))
        {
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(300));
        let ids = containerd::task_ids(&containerd_dir);
        containerd::remove_host_files(&containerd::host_files_of_tasks(&containerd_dir, &ids));
        remove_kubelet_host_files(&self.dir);
        containerd::unmount_all_under(&self.dir);
        network::remove_our_chains();
        network::delete_bridge();
        remove_cni_cache();
        restore_sysctls(&self.sysctls_before);
        containerd::remove_cgroup_tree(&self.cgroup_root);
        // Never remove through a mount that is still there (a pod's volume, a rootfs).
        if containerd::mounts_under(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Stops and removes every pod sandbox (and so its containers, network namespace and
    /// veth) through the CRI, while containerd still runs.
    fn remove_pods(&self, crictl: &Path) {
        let crictl_run = |arguments: &[&str], timeout: Duration| {
            let mut command = std::process::Command::new(crictl);
            command
                .arg(format!(
                    "--runtime-endpoint=unix://{}",
                    self.cri_socket.display()
                ))
                .arg("--timeout=60s")
                .args(arguments);
            containerd::run_with_timeout(command, timeout).ok()
        };
        let listed = crictl_run(&["pods", "--quiet"], Duration::from_secs(20));
        let pods: Vec<String> = listed
            .map(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if pods.is_empty() {
            return;
        }
        let ids: Vec<&str> = pods.iter().map(String::as_str).collect();
        let mut stop = vec!["stopp"];
        stop.extend(&ids);
        crictl_run(&stop, Duration::from_secs(90));
        let mut remove = vec!["rmp", "--force"];
        remove.extend(&ids);
        crictl_run(&remove, Duration::from_secs(60));
    }

    /// What of the node is still there: processes, mounts, the bridge, iptables chains,
    /// cgroups and its directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        left.extend(
            containerd::processes_mentioning(&self.dir)
                .into_iter()
                .chain(processes_in_cgroup(&self.cgroup_root))
                .map(|pid| format!("process {pid}")),
        );
        left.extend(
            containerd::mounts_under(&self.dir)
                .into_iter()
                .map(|mount| format!("mount {}", mount.display())),
        );
        let containerd_dir = self.dir.join("containerd");
        let ids = containerd::task_ids(&containerd_dir);
        left.extend(
            containerd::host_files_of_tasks(&containerd_dir, &ids)
                .into_iter()
                .chain(kubelet_host_files(&self.dir))
                .map(|file| format!("file {}", file.display())),
        );
        if network::bridge_exists() {
            left.push(format!("the bridge {BRIDGE}"));
        }
        left.extend(
            network::chains_left()
                .into_iter()
                .map(|chain| format!("chain {chain}")),
        );
        left.extend(
            containerd::cgroups_left(&self.cgroup_root)
                .into_iter()
                .map(|cgroup| format!("cgroup {}", cgroup.display())),
        );
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        left
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("{err}");
        }
    }
}
