//! Services whose endpoints are processes on the host: CoreDNS, the apiserver, NATS.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;

use super::HOST_IP;
use crate::{Error, Result};

/// A port of a Service whose endpoint is a process on the host (at [`HOST_IP`]).
#[derive(Debug, Clone, Copy)]
pub struct HostPort {
    pub name: &'static str,
    /// The Service's port (on its ClusterIP).
    pub port: u16,
    /// Where the host process listens.
    pub host_port: u16,
    pub protocol: &'static str,
}

impl HostPort {
    pub fn new(name: &'static str, port: u16, host_port: u16, protocol: &'static str) -> Self {
        Self {
            name,
            port,
            host_port,
            protocol,
        }
    }
}

/// A selector-less Service `namespace/name` (ClusterIP `cluster_ip`, or one the apiserver
/// picks) whose endpoints are processes on the host, as pods reach them at [`HOST_IP`]:
/// so pods find CoreDNS, NATS and the like by their DNS names.
pub async fn publish_host_service(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ports: &[HostPort],
    cluster_ip: Option<&str>,
    labels: serde_json::Value,
) -> Result<()> {
    let service_ports: Vec<_> = ports
        .iter()
        .map(|p| serde_json::json!({"name": p.name, "port": p.port, "protocol": p.protocol}))
        .collect();
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"clusterIP": cluster_ip, "ports": service_ports}
    }))
    .map_err(Error::context(format!("the {name} Service")))?;
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await
        .map_err(Error::context(format!("creating the {name} Service")))?;
    publish_host_endpoints(client, namespace, name, ports).await
}

/// The EndpointSlice that leads Service `namespace/name`'s `ports` to the host.
pub(super) async fn publish_host_endpoints(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    ports: &[HostPort],
) -> Result<()> {
    let slice_ports: Vec<_> = ports
        .iter()
        .map(|p| serde_json::json!({"name": p.name, "port": p.host_port, "protocol": p.protocol}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{service}-host"), "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service,
                       // Not the endpointslice controller's: it leaves these alone.
                       "endpointslice.kubernetes.io/managed-by": "workpool-local-cluster"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [HOST_IP], "conditions": {"ready": true}}],
        "ports": slice_ports,
    }))
    .map_err(Error::context(format!("the {service} EndpointSlice")))?;
    Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &slice)
        .await
        .map_err(Error::context(format!(
            "creating the {service} EndpointSlice"
        )))?;
    Ok(())
}
