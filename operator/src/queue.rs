//! The operator's side of NATS: connections per server, provisioning through
//! `workpool_runtime::provision`, and the queue figures for status and autoscaling.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Mutex;
use workpool_core::crd::AdoptedStatus;
use workpool_core::{PoolNames, PoolSpec};
use workpool_runtime::provision::{deprovision, provision};
pub use workpool_runtime::queue_figures::{self, FiguresError, QueueFigures};

use crate::error::{CredentialsError, Error, NatsError};

/// How long a connection attempt to a pool's NATS may take before the reconcile reports
/// the queue unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One client per server URL, shared by every pool on that server, all with the
/// operator's own credentials (if it has any).
#[derive(Default)]
pub struct NatsClients {
    clients: Mutex<HashMap<String, async_nats::Client>>,
    credentials_file: Option<std::path::PathBuf>,
    /// The CA of NATS servers with certificates of a private CA (TLS only, then).
    ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsClients")
    }
}

/// `url` (one or a comma-separated list) without user, password or token, for messages
/// that end up in conditions, events and logs.
pub fn redact(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => url.to_owned(),
    }
}

impl NatsClients {
    /// Clients that connect with the credentials in `file`, or with none.
    pub fn new(credentials_file: Option<std::path::PathBuf>) -> Self {
        Self {
            credentials_file,
            ..Self::default()
        }
    }

    /// The same, trusting the CA in `file` (and requiring TLS).
    pub fn with_ca_file(mut self, file: Option<std::path::PathBuf>) -> Self {
        self.ca_file = file;
        self
    }

    /// A JetStream context on `url`, connecting on first use. A client that lost its
    /// connection keeps reconnecting on its own; requests fail fast meanwhile.
    pub async fn jetstream(&self, url: &str) -> Result<jetstream::Context, Error> {
        let shown = redact(url);
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(url) {
            if client.connection_state() != async_nats::connection::State::Connected {
                return Err(Error::NatsUnreachable(NatsError::Reconnecting {
                    server: shown,
                }));
            }
            return Ok(jetstream::new(client.clone()));
        }
        // Read at each new connection, so a rotated Secret is picked up.
        let options = match &self.credentials_file {
            Some(file) => async_nats::ConnectOptions::with_credentials_file(file)
                .await
                .map_err(|source| {
                    Error::NatsCredentials(CredentialsError::Unreadable {
                        file: file.display().to_string(),
                        source,
                    })
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        // Every member of a cluster the URL lists, as the pods get them.
        let servers = workpool_core::crd::nats_servers(url);
        let options = workpool_runtime::config::with_ca(options, self.ca_file.as_deref());
        let connect = options
            .name("workpool-operator")
            .max_reconnects(None)
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(servers.as_slice());
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => {
                return Err(Error::NatsUnreachable(NatsError::Connect {
                    server: shown,
                    source,
                }));
            }
            Err(_) => {
                return Err(Error::NatsUnreachable(NatsError::ConnectTimeout {
                    server: shown,
                }));
            }
        };
        clients.insert(url.to_owned(), client.clone());
        Ok(jetstream::new(client))
    }
}

pub async fn ensure(
    js: &jetstream::Context,
    names: &PoolNames,
    spec: &PoolSpec,
) -> Result<(), Error> {
    provision(js, names, spec).await.map_err(|err| {
        if err.is_refusal() {
            Error::NatsConfigRejected(err)
        } else {
            Error::NatsUnreachable(NatsError::Provision(err))
        }
    })
}

/// The pool's NATS objects that exist already and what they hold, before a pool is first
/// provisioned; `None` when none does.
pub async fn existing(
    js: &jetstream::Context,
    names: &PoolNames,
) -> Result<Option<AdoptedStatus>, Error> {
    let mut adopted = AdoptedStatus::default();
    let objects = [
        ("stream", names.stream()),
        ("deadLetters", names.dead_letter_stream()),
        ("bucket", format!("KV_{}", names.bucket())),
    ];
    for (object, stream) in objects {
        let mut found = match js.get_stream(&stream).await {
            Ok(found) => found,
            Err(err) if is_not_found(&err) => continue,
            Err(source) => {
                let stream = stream.clone();
                return Err(figures_error(FiguresError::GetStream { stream, source }));
            }
        };
        let info = found.info().await.map_err(|source| {
            let stream = stream.clone();
            figures_error(FiguresError::StreamInfo { stream, source })
        })?;
        let held = info.state.messages;
        match object {
            "stream" => adopted.messages = held,
            "deadLetters" => adopted.dead_letters = held,
            _ => adopted.records = held,
        }
        adopted.objects.push(object.to_owned());
    }
    Ok((!adopted.objects.is_empty()).then_some(adopted))
}

fn is_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js_err)
            if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

pub async fn remove(js: &jetstream::Context, names: &PoolNames) -> Result<(), Error> {
    deprovision(js, names)
        .await
        .map_err(|err| Error::NatsUnreachable(NatsError::Provision(err)))
}

/// Reads the backlog through the JetStream API ([`queue_figures::figures`]): a figure
/// JetStream refused (an object is missing) is a queue problem, no answer an outage.
pub async fn figures(
    js: &jetstream::Context,
    names: &PoolNames,
    spec: &PoolSpec,
) -> Result<QueueFigures, Error> {
    queue_figures::figures(js, names, spec)
        .await
        .map_err(figures_error)
}

fn figures_error(err: FiguresError) -> Error {
    if err.is_missing() {
        Error::QueueFigures(NatsError::Figures(err))
    } else {
        Error::NatsUnreachable(NatsError::Figures(err))
    }
}

/// Workers the backlog asks for, within the autoscale bounds.
pub fn autoscaled_replicas(backlog: u64, target_per_replica: i64, min: i32, max: i32) -> i32 {
    let target = u64::try_from(target_per_replica.max(1)).unwrap_or(1);
    let wanted = backlog.div_ceil(target);
    i32::try_from(wanted)
        .unwrap_or(i32::MAX)
        .clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacting_drops_userinfo_only() {
        assert_eq!(redact("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(
            redact("nats://alice:s3cret@nats:4222,tls://token@other:4222"),
            "nats://***@nats:4222,tls://***@other:4222"
        );
        assert_eq!(redact("nats://nats:4222/a@b"), "nats://nats:4222/a@b");
    }

    #[test]
    fn autoscaling_follows_the_backlog_within_bounds() {
        assert_eq!(autoscaled_replicas(0, 100, 1, 20), 1);
        assert_eq!(autoscaled_replicas(0, 100, 0, 20), 0);
        assert_eq!(autoscaled_replicas(1, 100, 0, 20), 1);
        assert_eq!(autoscaled_replicas(250, 100, 1, 20), 3);
        assert_eq!(autoscaled_replicas(1_000_000, 100, 1, 20), 20);
        assert_eq!(
            autoscaled_replicas(50, 0, 1, 20),
            20,
            "a zero target is treated as one"
        );
    }
}
