//! The test harness of Workpool: a real `nats-server` (or a 3-node cluster) per test,
//! the real api and worker binaries as child processes, and helpers to talk to them. Also
//! the small TCP load balancer and the tools behind `make up` and `make bench`.

pub mod bench;
pub mod browser;
pub mod chaos;
pub mod cluster;
pub mod helm;
pub mod http;
pub mod image;
pub mod kubelet;
pub mod lb;
pub mod local_cluster;
pub mod metrics;
pub mod nats;
pub mod nats_cluster;
pub mod operator;
pub mod paths;
pub mod pods;
pub mod pool;
pub mod process;
pub mod prometheus;

/// Errors of the harness; tests unwrap them with context.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
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
    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// `N` distinct free TCP ports: all are held at once before being released, so the
/// same port is never handed out twice (which separate calls to [`free_port`] can do).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| {
            std::net::TcpListener::bind("0.0.0.0:0")
                .map_err(HarnessError::io("binding a free port"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(HarnessError::io("reading a free port"))?
            .port();
    }
    Ok(ports)
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(HarnessError::io("binding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(HarnessError::io("reading a free port"))?
        .port())
}
