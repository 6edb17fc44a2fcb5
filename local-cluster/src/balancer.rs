//! A small TCP load balancer (the HAProxy of the original sketch, and kube-proxy's part
//! for the local cluster): spreads connections round-robin over backends, skipping
//! backends that refuse connections. Backends are fixed, or follow the ready endpoints of
//! a Service's EndpointSlices as they change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::sync::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a connection attempt to one backend may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Balancer {
    backends: RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(backends: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(Self {
            backends: RwLock::new(backends),
            next: AtomicUsize::new(0),
        })
    }

    /// A balancer over the ready endpoints of Service `service` in `namespace`, on the
    /// endpoint port named `port_name`, kept current by a watch on its EndpointSlices.
    pub fn following(
        client: kube::Client,
        namespace: &str,
        service: &str,
        port_name: &str,
    ) -> Arc<Self> {
        let balancer = Self::new(Vec::new());
        let follower = balancer.clone();
        let slices: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let (reader, writer) = reflector::store();
        let port_name = port_name.to_owned();
        tokio::spawn(async move {
            // Every event, InitDone included: the store only shows a re-list once it is done.
            let mut changes = watcher(slices, config)
                .default_backoff()
                .reflect(writer)
                .boxed();
            while changes.next().await.is_some() {
                let backends = ready_backends(&reader.state(), &port_name);
                if let Ok(mut current) = follower.backends.write()
                    && *current != backends
                {
                    tracing::info!(?backends, "load balancer backends changed");
                    *current = backends;
                }
            }
        });
        balancer
    }

    /// A balancer in front of Service `namespace/service`: its one backend is the
    /// Service's ClusterIP and first port, so kube-proxy picks the pod, as for any client
    /// in the cluster.
    pub async fn to_service(
        client: &kube::Client,
        namespace: &str,
        service: &str,
    ) -> crate::Result<Arc<Self>> {
        let found = Api::<Service>::namespaced(client.clone(), namespace)
            .get(service)
            .await
            .map_err(crate::Error::context(format!("reading Service {service}")))?;
        let spec = found.spec.unwrap_or_default();
        let address = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let port = spec
            .ports
            .unwrap_or_default()
            .first()
            .and_then(|port| u16::try_from(port.port).ok());
        match (address, port) {
            (Some(address), Some(port)) => Ok(Self::new(vec![SocketAddr::new(address, port)])),
            _ => Err(crate::Error::Other(format!(
                "Service {namespace}/{service} has no ClusterIP and port"
            ))),
        }
    }

    pub fn backends(&self) -> Vec<SocketAddr> {
        self.backends.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Connects to the next backend that accepts, starting from the round-robin position.
    async fn connect(&self) -> Option<TcpStream> {
        let backends = self.backends();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..backends.len() {
            let backend = backends[(start + offset) % backends.len()];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
                Ok(Ok(stream)) => return Some(stream),
                Ok(Err(err)) => tracing::debug!(%backend, %err, "backend refused; trying the next"),
                Err(_) => tracing::debug!(%backend, "backend connect timed out; trying the next"),
            }
        }
        None
    }

    /// Serves until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (mut inbound, peer) = listener.accept().await?;
            let balancer = self.clone();
            tokio::spawn(async move {
                let Some(mut outbound) = balancer.connect().await else {
                    tracing::warn!(%peer, "no backend available; closing the connection");
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                relay(&mut inbound, &mut outbound).await;
                tracing::debug!(%peer, "connection ended");
            });
        }
    }
}

/// How long, after the backend closed, the client may go on sending (what it sends is
/// dropped) before its connection is closed.
const LINGER: Duration = Duration::from_secs(5);

/// Copies both ways until both sides are done. A backend may answer early and close
/// without reading the rest of the request (a `413` to a body it will not take), which
/// resets its connection: the answer is still passed on with a clean close, and what the
/// client goes on sending is read and dropped, for up to [`LINGER`] after the backend is
/// done. Closing the client's socket with its data unread would reset that connection
/// too, and a client still writing its body would never see the answer.
async fn relay(inbound: &mut TcpStream, outbound: &mut TcpStream) {
    let (mut from_client, mut to_client) = inbound.split();
    let (mut from_backend, mut to_backend) = outbound.split();
    let upstream = forward_until_client_done(&mut from_client, &mut to_backend);
    let downstream = async {
        let _ = tokio::io::copy(&mut from_backend, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::pin!(upstream, downstream);
    tokio::select! {
        () = &mut upstream => downstream.await,
        () = &mut downstream => {
            let _ = tokio::time::timeout(LINGER, upstream).await;
        }
    }
}

/// Forwards what the client sends until it is done sending; once the backend stops
/// taking data, goes on reading and drops it.
async fn forward_until_client_done<R, W>(from_client: &mut R, to_backend: &mut W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 64 << 10];
    let mut backend_takes = true;
    loop {
        let read = match from_client.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if backend_takes && to_backend.write_all(&buffer[..read]).await.is_err() {
            backend_takes = false;
        }
    }
    if backend_takes {
        let _ = to_backend.shutdown().await;
    }
}

/// Addresses of the ready endpoints on the named port, sorted for a stable rotation.
fn ready_backends(slices: &[Arc<EndpointSlice>], port_name: &str) -> Vec<SocketAddr> {
    let mut backends: Vec<SocketAddr> = slices
        .iter()
        .flat_map(|slice| {
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(port_name))
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok());
            slice
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                .flat_map(move |e| {
                    e.addresses
                        .iter()
                        .filter_map(move |a| Some(SocketAddr::new(a.parse().ok()?, port?)))
                })
        })
        .collect();
    backends.sort();
    backends.dedup();
    backends
}
