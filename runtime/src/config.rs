//! Command-line and environment settings every pool component shares, and the NATS
//! connection they all open the same way.

use std::path::PathBuf;
use std::time::Duration;

use workpool_core::names::{InvalidName, PoolNames};
use workpool_core::peer_auth::{InvalidPeerKey, PeerKey};
use workpool_core::spec::{PoolSpec, SpecError};

/// Which pool a process serves, and where its settings are.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolArgs {
    /// Namespace of the WorkPool.
    #[arg(long, env = "WORKPOOL_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Name of the WorkPool.
    #[arg(long, env = "WORKPOOL_POOL")]
    pub pool: String,
    /// JSON file with the pool spec (the operator mounts it from a ConfigMap); defaults
    /// apply when absent.
    #[arg(long, env = "WORKPOOL_SPEC_FILE", conflicts_with = "spec")]
    pub spec_file: Option<PathBuf>,
    /// The pool spec as inline JSON (the operator sets this on its pods).
    #[arg(long, env = "WORKPOOL_SPEC")]
    pub spec: Option<String>,
    /// NATS credentials file (`.creds`), when the server requires them.
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// PEM certificates of the CA that signed the NATS server's certificate; when set,
    /// the connection must be TLS.
    #[arg(long, env = "NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// NATS server URL; overrides `nats.url` of the spec.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// This pod's name (downward API); defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The pool's peer key (hex; the operator gives it from the pool's Secret). Without
    /// it, peer requests are neither sent nor acted on.
    #[arg(long, env = workpool_core::peer_auth::PEER_KEY_ENV, hide_env_values = true)]
    pub peer_key: Option<String>,
}

/// The settings a component runs with.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub names: PoolNames,
    pub spec: PoolSpec,
    pub pod: String,
    pub nats_creds_file: Option<PathBuf>,
    pub nats_ca_file: Option<PathBuf>,
    /// The key peer requests are signed and checked with.
    pub peer_key: Option<PeerKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("WORKPOOL_PEER_KEY: {0}")]
    PeerKey(#[from] InvalidPeerKey),
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error("reading spec file {path}: {source}")]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spec file {path}: {source}")]
    Spec {
        path: PathBuf,
        #[source]
        source: SpecError,
    },
}

impl PoolArgs {
    pub fn load(&self) -> Result<PoolConfig, ConfigError> {
        let names = PoolNames::new(&self.namespace, &self.pool)?;
        let mut spec = match &self.spec_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadSpec {
                        path: path.clone(),
                        source,
                    })?;
                PoolSpec::from_json(&text).map_err(|source| ConfigError::Spec {
                    path: path.clone(),
                    source,
                })?
            }
            None => match &self.spec {
                Some(text) => PoolSpec::from_json(text).map_err(|source| ConfigError::Spec {
                    path: PathBuf::from("$WORKPOOL_SPEC"),
                    source,
                })?,
                None => PoolSpec::default(),
            },
        };
        if let Some(url) = &self.nats_url {
            spec.nats.url.clone_from(url);
        }
        let pod = self.pod_name.clone().unwrap_or_else(host_name);
        let peer_key = self
            .peer_key
            .as_deref()
            .map(PeerKey::from_hex)
            .transpose()?;
        Ok(PoolConfig {
            names,
            spec,
            pod,
            nats_creds_file: self.nats_creds_file.clone(),
            nats_ca_file: self.nats_ca_file.clone(),
            peer_key,
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Connects to NATS, retrying forever in the background: the caller gets a client at once
/// and requests fail fast (rather than hang) while the server is away.
pub async fn connect_nats(
    config: &PoolConfig,
    component: &str,
) -> Result<async_nats::Client, ConnectError> {
    let url = config.spec.nats.url.as_str();
    let options = match &config.nats_creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.clone(),
                source,
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    let options = with_ca(options, config.nats_ca_file.as_deref());
    let url_for_log = url.to_owned();
    let name = format!("{component} {}", config.pod);
    options
        .name(&name)
        // The pool's NATS user may subscribe to replies under this prefix only.
        .custom_inbox_prefix(config.names.inbox_prefix())
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .event_callback(move |event| {
            let url = url_for_log.clone();
            async move { tracing::info!(%url, %event, "nats connection event") }
        })
        .connect(workpool_core::crd::nats_servers(url).as_slice())
        .await
        .map_err(ConnectError::Connect)
}

/// TLS only, trusting the CA in `file` beside the system's, when a file is given.
pub fn with_ca(
    options: async_nats::ConnectOptions,
    file: Option<&std::path::Path>,
) -> async_nats::ConnectOptions {
    match file {
        Some(file) => options
            .add_root_certificates(file.to_owned())
            .require_tls(true),
        None => options,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading NATS credentials {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(async_nats::ConnectError),
}
