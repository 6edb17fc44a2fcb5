//! The configuration files of the real node's components.

use std::path::Path;

use super::network::{HOST_IP, POD_SUBNET};

/// The cluster's DNS Service address (in the control plane's 10.96.0.0/16 range), which
/// kubelet writes into every pod's resolv.conf.
pub const CLUSTER_DNS_IP: &str = "10.96.0.10";
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// What the KubeletConfiguration is made from.
pub struct KubeletSettings<'a> {
    pub runtime_socket: &'a Path,
    pub port: u16,
    pub healthz_port: u16,
    pub client_ca: &'a Path,
    pub cgroup_root: &'a str,
    pub pod_logs_dir: &'a Path,
    pub volume_plugin_dir: &'a Path,
    pub resolv_conf: &'a Path,
}

pub fn kubelet(settings: &KubeletSettings<'_>) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Kubernetes 1.35's kubelet refuses cgroup v1 unless told otherwise; these machines mount
# the v1 controllers (a hybrid layout: only name=systemd's companion is unified).
failCgroupV1: false
cgroupDriver: cgroupfs
# A cgroup of this node's own (made before kubelet starts), so pods' cgroups are found
# and removed on stop without touching anyone else's.
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix://{runtime_socket}
failSwapOn: false
address: {HOST_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
clusterDNS: [{CLUSTER_DNS_IP}]
clusterDomain: {CLUSTER_DOMAIN}
# The host's resolv.conf names resolvers pods cannot reach; pods with dnsPolicy Default
# get this one (no search list of the host's).
resolvConf: {resolv_conf}
# The apiserver calls (logs, exec, port-forward) carry its kubelet client certificate;
# bearer tokens are checked with a TokenReview; what is allowed is asked of RBAC.
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {client_ca}
authorization:
  mode: Webhook
podLogsDir: {pod_logs_dir}
volumePluginDir: {volume_plugin_dir}
# The images are imported, never pulled: garbage collecting them would lose them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A busy shared disk must not evict the test's pods: absolute floors, since a share of a
# large, thinly provisioned disk can exceed what is really free (at 1% of a 252 GB
# volume, a node with 1.3 GB free refused every pod with DiskPressure).
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "256Mi"
  imagefs.available: "256Mi"
  nodefs.inodesFree: "1%"
# Pods come up and go away promptly in tests.
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
"#,
        cgroup_root = settings.cgroup_root,
        runtime_socket = settings.runtime_socket.display(),
        port = settings.port,
        healthz_port = settings.healthz_port,
        resolv_conf = settings.resolv_conf.display(),
        client_ca = settings.client_ca.display(),
        pod_logs_dir = settings.pod_logs_dir.display(),
        volume_plugin_dir = settings.volume_plugin_dir.display(),
    )
}

/// kube-proxy's command line: iptables mode, and nothing that changes host-wide sysctls
/// (conntrack sizes and timeouts, route_localnet) behind the other users' backs.
pub fn kube_proxy_args(
    kubeconfig: &Path,
    node_name: &str,
    healthz_port: u16,
    metrics_port: u16,
) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--proxy-mode=iptables".into(),
        format!("--cluster-cidr={POD_SUBNET}"),
        format!("--hostname-override={node_name}"),
        format!("--bind-address={HOST_IP}"),
        format!("--healthz-bind-address=127.0.0.1:{healthz_port}"),
        format!("--metrics-bind-address=127.0.0.1:{metrics_port}"),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--iptables-localhost-nodeports=false".into(),
        // Pod to ClusterIP to a pod on the same bridge: without SNAT the answer would go
        // straight back over the bridge and miss the reverse translation.
        "--masquerade-all".into(),
    ]
}

/// CoreDNS serving the cluster domain from the apiserver, on the host address only (a
/// host process behind the kube-dns Service; see [`super::RealNode`]).
pub fn corefile(kubeconfig: &Path) -> String {
    format!(
        r#"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {HOST_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa
    }}
}}
.:53 {{
    bind {HOST_IP}
    errors
}}
"#,
        kubeconfig = kubeconfig.display()
    )
}
