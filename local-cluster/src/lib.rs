//! A local Kubernetes cluster with Workpool on it, no Docker needed: a control plane
//! (etcd, kube-apiserver, controller-manager, scheduler) from upstream sources, a real node
//! (kubelet, containerd, runc, a CNI bridge, kube-proxy, CoreDNS), nats-server on the host
//! behind a Service, and a small balancer that serves the api on 127.0.0.1:8080. The
//! supervisor behind `make up`/`make down` is [`supervisor`]; the tests build their
//! clusters from the same parts.

pub mod balancer;
pub mod control_plane;
pub mod helm;
pub mod http;
pub mod image;
pub mod nats;
pub mod node;
pub mod paths;
pub mod pools;
pub mod process;
pub mod prometheus;
pub mod supervisor;

/// Errors of the local cluster's parts; tests unwrap them with context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Missing(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// What was being done, and the error that stopped it.
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// `map_err(Error::context("doing what"))`: any error, with what was being done.
    pub fn context<E>(what: impl Into<String>) -> impl FnOnce(E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let what = what.into();
        move |source| Error::Failed {
            what,
            source: Box::new(source),
        }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `N` distinct free TCP ports: all are held at once before being released, so the
/// same port is never handed out twice (which separate calls to [`free_port`] can do).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("0.0.0.0:0").map_err(Error::io("binding a free port")))
        .collect::<Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(Error::io("reading a free port"))?
            .port();
    }
    Ok(ports)
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::io("binding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(Error::io("reading a free port"))?
        .port())
}
