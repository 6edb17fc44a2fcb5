//! Creates or updates a pool's NATS objects on a server. The operator calls this (and tests
//! call it directly); api and worker never create NATS objects themselves.

use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt;

use workpool_core::names::PoolNames;
use workpool_core::spec::PoolSpec;
use workpool_core::streams;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("creating or updating stream {name}: {source}")]
    Stream {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("creating or updating bucket {name}: {source}")]
    Bucket {
        name: String,
        #[source]
        source: jetstream::context::CreateKeyValueError,
    },
    #[error("creating or updating consumer {name}: {source}")]
    Consumer {
        name: String,
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    #[error("listing consumers of {stream}: {message}")]
    ListConsumers { stream: String, message: String },
    #[error(
        "consumer {name}, beyond worker.partitions, still holds {pending} keyed messages; it is removed once they are done"
    )]
    PartitionNotEmpty { name: String, pending: u64 },
    #[error(
        "the stream already has {existing} keyed partitions (left by an earlier WorkPool of this name) holding {pending} messages; worker.partitions {wanted} would send their keys' new work to other partitions: use {existing}, or let that work finish first"
    )]
    PartitionCountChanged {
        existing: usize,
        wanted: usize,
        pending: u64,
    },
    #[error(
        "queue.maxPayloadBytes {max_payload_bytes} plus the {envelope} byte envelope is {needed} bytes, over the NATS server's max_payload of {server_max_payload} bytes; raise the server's max_payload or lower maxPayloadBytes"
    )]
    PayloadOverServerLimit {
        max_payload_bytes: usize,
        envelope: usize,
        needed: usize,
        server_max_payload: usize,
    },
    #[error("deleting {what} {name}: {message}")]
    Delete {
        what: &'static str,
        name: String,
        message: String,
    },
}

impl ProvisionError {
    /// NATS answered and refused the configuration (an immutable setting changed, a
    /// limit the server cannot meet), as opposed to not answering at all. Retrying the
    /// same spec cannot fix a refusal.
    pub fn is_refusal(&self) -> bool {
        use jetstream::context::{CreateStreamError, CreateStreamErrorKind};
        let refused =
            |err: &CreateStreamError| matches!(err.kind(), CreateStreamErrorKind::JetStream(_));
        match self {
            ProvisionError::Stream { source, .. } => refused(source),
            ProvisionError::Bucket { source, .. } => std::error::Error::source(source)
                .and_then(|inner| inner.downcast_ref::<CreateStreamError>())
                .is_some_and(refused),
            ProvisionError::Consumer { source, .. } => {
                matches!(
                    source.kind(),
                    jetstream::stream::ConsumerErrorKind::JetStream(_)
                )
            }
            ProvisionError::PartitionNotEmpty { .. }
            | ProvisionError::PartitionCountChanged { .. }
            | ProvisionError::PayloadOverServerLimit { .. } => true,
            ProvisionError::ListConsumers { .. } | ProvisionError::Delete { .. } => false,
        }
    }
}

/// The consumer of the results bucket's writes for completion webhooks.
async fn provision_webhook_consumer(
    js: &jetstream::Context,
    names: &PoolNames,
    spec: &PoolSpec,
) -> Result<(), ProvisionError> {
    let stream = js.get_stream(names.bucket_stream()).await.map_err(|err| {
        ProvisionError::ListConsumers {
            stream: names.bucket_stream(),
            message: err.to_string(),
        }
    })?;
    let config = streams::webhook_consumer(names, spec);
    let name = config.durable_name.clone().unwrap_or_default();
    stream
        .create_consumer(config)
        .await
        .map_err(|source| ProvisionError::Consumer { name, source })?;
    Ok(())
}

/// Makes the pool's stream, dead-letter stream, bucket and consumers match `spec`.
/// Idempotent; safe to call on every reconcile.
pub async fn provision(
    js: &jetstream::Context,
    names: &PoolNames,
    spec: &PoolSpec,
) -> Result<(), ProvisionError> {
    check_payload_fits(js, spec)?;
    for config in [
        streams::work_stream(names, spec),
        streams::dead_letter_stream(names, spec),
    ] {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|source| ProvisionError::Stream { name, source })?;
    }
    js.create_or_update_key_value(streams::results_bucket(names, spec))
        .await
        .map_err(|source| ProvisionError::Bucket {
            name: names.bucket(),
            source,
        })?;

    if spec.webhooks.enabled() {
        provision_webhook_consumer(js, names, spec).await?;
    }
    let stream =
        js.get_stream(names.stream())
            .await
            .map_err(|err| ProvisionError::ListConsumers {
                stream: names.stream(),
                message: err.to_string(),
            })?;
    let wanted: Vec<consumer::pull::Config> = streams::work_consumers(names, spec)
        .into_iter()
        .chain([streams::delayed_consumer(names, spec)])
        .chain(streams::keyed_consumers(names, spec))
        .collect();
    check_partition_count(&stream, &wanted).await?;
    for config in &wanted {
        let name = config.durable_name.clone().unwrap_or_default();
        stream
            .create_consumer(config.clone())
            .await
            .map_err(|source| ProvisionError::Consumer { name, source })?;
    }
    remove_surplus_partitions(&stream, &wanted).await
}

/// Refuses a pool whose largest message the server would not accept: the stream would take
/// it, but every publish of such work would fail.
fn check_payload_fits(js: &jetstream::Context, spec: &PoolSpec) -> Result<(), ProvisionError> {
    let server_max_payload = js.client().server_info().max_payload;
    let needed = spec
        .queue
        .max_payload_bytes
        .saturating_add(streams::ENVELOPE_BYTES);
    // 0: the server did not say (no INFO yet); the publish errors would still tell.
    if server_max_payload > 0 && needed > server_max_payload {
        return Err(ProvisionError::PayloadOverServerLimit {
            max_payload_bytes: spec.queue.max_payload_bytes,
            envelope: streams::ENVELOPE_BYTES,
            needed,
            server_max_payload,
        });
    }
    Ok(())
}

/// Refuses another partition count while keyed work is queued: a key's partition is
/// `hash(key) mod partitions`, so its new work would go to another partition than its
/// queued work and two of its jobs could run at once. A WorkPool's count is fixed, but a
/// pool recreated under the same name finds what a retained one left.
async fn check_partition_count(
    stream: &jetstream::stream::Stream,
    wanted: &[consumer::pull::Config],
) -> Result<(), ProvisionError> {
    let existing = keyed_consumers(stream).await?;
    let wanted: Vec<&str> = wanted
        .iter()
        .filter_map(|c| c.durable_name.as_deref())
        .filter(|name| PoolNames::is_keyed_consumer(name))
        .collect();
    let same =
        existing.len() == wanted.len() && existing.iter().all(|n| wanted.contains(&n.as_str()));
    if existing.is_empty() || same {
        return Ok(());
    }
    let mut pending = 0;
    for name in &existing {
        pending += consumer_pending(stream, name).await?;
    }
    if pending > 0 {
        return Err(ProvisionError::PartitionCountChanged {
            existing: existing.len(),
            wanted: wanted.len(),
            pending,
        });
    }
    Ok(())
}

/// Deletes keyed consumers beyond the partition count, if they hold no work (checked
/// again here: work may have arrived since [`check_partition_count`]).
async fn remove_surplus_partitions(
    stream: &jetstream::stream::Stream,
    wanted: &[consumer::pull::Config],
) -> Result<(), ProvisionError> {
    for name in keyed_consumers(stream).await? {
        let surplus = !wanted
            .iter()
            .any(|c| c.durable_name.as_deref() == Some(&name));
        if !surplus {
            continue;
        }
        let pending = consumer_pending(stream, &name).await?;
        if pending > 0 {
            return Err(ProvisionError::PartitionNotEmpty { name, pending });
        }
        stream
            .delete_consumer(&name)
            .await
            .map_err(|err| ProvisionError::Delete {
                what: "consumer",
                name: name.clone(),
                message: err.to_string(),
            })?;
    }
    Ok(())
}

fn list_error(stream: &jetstream::stream::Stream, err: &dyn std::fmt::Display) -> ProvisionError {
    ProvisionError::ListConsumers {
        stream: stream.cached_info().config.name.clone(),
        message: err.to_string(),
    }
}

/// The names of the stream's keyed (per-partition) consumers.
async fn keyed_consumers(
    stream: &jetstream::stream::Stream,
) -> Result<Vec<String>, ProvisionError> {
    stream
        .consumer_names()
        .try_filter(|name| std::future::ready(PoolNames::is_keyed_consumer(name)))
        .try_collect()
        .await
        .map_err(|err| list_error(stream, &err))
}

/// Messages a consumer has yet to deliver or to see acknowledged.
async fn consumer_pending(
    stream: &jetstream::stream::Stream,
    name: &str,
) -> Result<u64, ProvisionError> {
    let info = stream
        .consumer_info(name)
        .await
        .map_err(|err| list_error(stream, &err))?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

/// Deletes the pool's streams and bucket (the operator's finalizer, unless `Retain`).
/// Objects already gone are not an error.
pub async fn deprovision(js: &jetstream::Context, names: &PoolNames) -> Result<(), ProvisionError> {
    use jetstream::context::DeleteStreamErrorKind;
    for (what, name) in [
        ("stream", names.stream()),
        ("stream", names.dead_letter_stream()),
        ("bucket", format!("KV_{}", names.bucket())),
    ] {
        match js.delete_stream(&name).await {
            Ok(_) => {}
            Err(err)
                if matches!(err.kind(), DeleteStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
            Err(err) => {
                return Err(ProvisionError::Delete {
                    what,
                    name,
                    message: err.to_string(),
                });
            }
        }
    }
    Ok(())
}
