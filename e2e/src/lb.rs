//! A small TCP load balancer (the HAProxy of the original sketch): spreads connections
//! round-robin over backends, skipping backends that refuse connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long a connection attempt to one backend may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Balancer {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(backends: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(Self {
            backends,
            next: AtomicUsize::new(0),
        })
    }

    /// Connects to the next backend that accepts, starting from the round-robin position.
    async fn connect(&self) -> Option<TcpStream> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.backends.len() {
            let backend = self.backends[(start + offset) % self.backends.len()];
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
                if let Err(err) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                    tracing::debug!(%peer, %err, "connection ended with an error");
                }
            });
        }
    }
}
