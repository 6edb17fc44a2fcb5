//! The operator's side of NATS: connections per server, provisioning through
//! `workpool_runtime::provision`, and the queue figures for status and autoscaling.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use workpool_core::crd::AdoptedStatus;
use workpool_core::names::DELAYED_CONSUMER;
use workpool_core::streams::{keyed_consumers, work_consumers};
use workpool_core::{PoolNames, PoolSpec};
use workpool_runtime::provision::{deprovision, provision};

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

/// Queue figures of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueFigures {
    pub pending: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
    /// Delayed work waiting for its time (module `delayed` of the worker).
    pub scheduled: u64,
    /// When the oldest work not yet delivered to a worker was queued.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// The work stream's last sequence (every message it ever stored) and what it holds
    /// now: two looks give the rates in and out ([`crate::rates`]).
    pub published: u64,
    pub stored: u64,
}

impl QueueFigures {
    /// Work that still needs a worker: queued plus running.
    pub fn backlog(&self) -> u64 {
        self.pending + self.in_flight
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
            Err(err) => return Err(stream_error(&stream, err)),
        };
        let info = found.info().await.map_err(|source| {
            Error::NatsUnreachable(NatsError::StreamInfo {
                stream: stream.clone(),
                source,
            })
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

/// Reads the backlog through the JetStream API. A missing consumer is an error: guessing
/// (and scaling to max) would be worse than not scaling.
pub async fn figures(
    js: &jetstream::Context,
    names: &PoolNames,
    spec: &PoolSpec,
) -> Result<QueueFigures, Error> {
    let mut stream = js
        .get_stream(names.stream())
        .await
        .map_err(|err| stream_error(&names.stream(), err))?;
    let state = stream
        .info()
        .await
        .map_err(|source| {
            Error::NatsUnreachable(NatsError::StreamInfo {
                stream: names.stream(),
                source,
            })
        })?
        .state
        .clone();
    let mut figures = QueueFigures {
        published: state.last_sequence,
        stored: state.messages,
        ..QueueFigures::default()
    };
    let consumers = work_consumers(names, spec)
        .into_iter()
        .chain(keyed_consumers(names, spec))
        .filter_map(|c| {
            let filter = c
                .filter_subjects
                .first()
                .cloned()
                .unwrap_or(c.filter_subject);
            Some((c.durable_name?, filter))
        });
    for (name, filter) in consumers {
        let info = consumer_info(&stream, &name).await?;
        figures.pending += info.num_pending;
        figures.in_flight += info.num_ack_pending as u64;
        if info.num_pending > 0 {
            let queued_at = next_queued_at(&stream, &filter, info.delivered.stream_sequence).await;
            figures.oldest_pending = match (figures.oldest_pending, queued_at) {
                (Some(oldest), Some(queued_at)) => Some(oldest.min(queued_at)),
                (oldest, queued_at) => oldest.or(queued_at),
            };
        }
    }
    let delayed = consumer_info(&stream, DELAYED_CONSUMER).await?;
    figures.scheduled = delayed.num_pending + delayed.num_ack_pending as u64;
    let mut dead = js
        .get_stream(names.dead_letter_stream())
        .await
        .map_err(|err| stream_error(&names.dead_letter_stream(), err))?;
    figures.dead_letters = dead
        .info()
        .await
        .map_err(|source| {
            Error::NatsUnreachable(NatsError::StreamInfo {
                stream: names.dead_letter_stream(),
                source,
            })
        })?
        .state
        .messages;
    Ok(figures)
}

async fn consumer_info(
    stream: &jetstream::stream::Stream,
    name: &str,
) -> Result<jetstream::consumer::Info, Error> {
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(name).await.map_err(|source| {
            // Only an answer from JetStream means the consumer is missing.
            let missing = answered_by_jetstream(source.as_ref());
            let err = NatsError::GetConsumer {
                consumer: name.to_owned(),
                source,
            };
            figures_error(missing, err)
        })?;
    let info = consumer.info().await.map_err(|source| {
        Error::NatsUnreachable(NatsError::ConsumerInfo {
            consumer: name.to_owned(),
            source,
        })
    })?;
    Ok(info.clone())
}

/// When the first message on `filter` after `delivered` (a consumer's last delivered
/// stream sequence) was stored: its oldest work not yet delivered. `None` if it cannot
/// be read: the figure is left out rather than failing the others.
async fn next_queued_at(
    stream: &jetstream::stream::Stream,
    filter: &str,
    delivered: u64,
) -> Option<DateTime<Utc>> {
    let message = stream
        .direct_get_next_for_subject(filter, Some(delivered + 1))
        .await
        .ok()?;
    let nanos = i64::try_from(message.time.unix_timestamp_nanos()).ok()?;
    Some(DateTime::from_timestamp_nanos(nanos))
}

/// Whether an error is JetStream's answer (rather than no answer at all).
fn answered_by_jetstream(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<jetstream::Error>().is_some()
            || e.downcast_ref::<jetstream::stream::ConsumerError>()
                .is_some_and(|c| {
                    matches!(c.kind(), jetstream::stream::ConsumerErrorKind::JetStream(_))
                })
    })
}

/// A stream JetStream says is missing is a queue problem; no answer is an outage.
/// A figure JetStream refused (the object is missing), or NATS that did not answer.
fn figures_error(answered_missing: bool, err: NatsError) -> Error {
    if answered_missing {
        Error::QueueFigures(err)
    } else {
        Error::NatsUnreachable(err)
    }
}

fn stream_error(stream: &str, source: jetstream::context::GetStreamError) -> Error {
    let missing = matches!(
        source.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(_)
    );
    let err = NatsError::GetStream {
        stream: stream.to_owned(),
        source,
    };
    figures_error(missing, err)
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
