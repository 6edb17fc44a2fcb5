//! Pending records whose work never reached the stream, and their repair.
//!
//! The api records `pending` before it publishes the work, so an api that dies (or gives
//! up on a publish) in between leaves a record that says `pending` for work that will
//! never run. [`create_pending`] marks the api's record with [`PENDING_HEADER`]; workers
//! overwrite it without the header. [`sweep_stranded`] finds keys whose latest message
//! still carries it, long after it was written, whose work message is not in the stream,
//! and deletes them with a compare-and-set, so GET answers `404` and a retry starts afresh.
//! The operator runs the sweep.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{
    self,
    consumer::{self, AckPolicy, DeliverPolicy},
    context::{PublishError, PublishErrorKind},
    kv,
    stream::LastRawMessageErrorKind,
};
use futures::StreamExt;

use workpool_core::ids::WorkId;
use workpool_core::message::PENDING_HEADER;
use workpool_core::names::{PoolNames, partition_of};
use workpool_core::record::{WorkRecord, WorkStatus};
use workpool_core::spec::PoolSpec;

/// How long the scan of a bucket may take; a sweep that runs out of time fails and the
/// next one starts over.
const SCAN_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages per pull of the scan (headers only, so a batch is small).
const SCAN_BATCH: usize = 512;
/// Publishes of a create: the first expects no message on the key, the second the delete
/// or purge marker found there.
const CREATE_ATTEMPTS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum CreatePendingError {
    /// The key holds a record (not a delete or purge marker).
    #[error("the record already exists")]
    AlreadyExists,
    #[error("publishing the pending record of {id}: {source}")]
    Publish {
        id: WorkId,
        #[source]
        source: PublishError,
    },
    #[error("reading the record of {id} after a refused create: {source}")]
    Read {
        id: WorkId,
        #[source]
        source: kv::EntryError,
    },
    #[error("the record of {id} kept changing while it was created; retry")]
    Contended { id: WorkId },
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("opening bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: jetstream::context::KeyValueError,
    },
    #[error("opening stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("scanning bucket {bucket}: {source}")]
    Scan {
        bucket: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("scanning bucket {bucket} took longer than {timeout:?}")]
    ScanTimedOut { bucket: String, timeout: Duration },
    #[error("reading the record of {id}: {source}")]
    Read {
        id: WorkId,
        #[source]
        source: kv::EntryError,
    },
    #[error("looking for the work message of {id}: {source}")]
    Lookup {
        id: WorkId,
        #[source]
        source: jetstream::stream::LastRawMessageError,
    },
    #[error("deleting the stranded record of {id}: {source}")]
    Delete {
        id: WorkId,
        #[source]
        source: kv::DeleteError,
    },
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Keys of the bucket looked at (their latest message, headers only).
    pub scanned: u64,
    /// Untouched api records, older than the threshold, whose work message was not in
    /// the stream.
    pub stranded: u64,
    /// Of those, deleted; the others changed meanwhile and were left as they are.
    pub repaired: u64,
}

/// The subject of a record in the pool's results bucket.
pub fn record_subject(names: &PoolNames, id: &WorkId) -> String {
    format!("{}{id}", record_prefix(names))
}

fn record_prefix(names: &PoolNames) -> String {
    format!("$KV.{}.", names.bucket())
}

/// The subject of a work message, as the api publishes it.
pub fn work_message_subject(
    names: &PoolNames,
    spec: &PoolSpec,
    id: &WorkId,
    record: &WorkRecord,
) -> String {
    match record.key.as_deref() {
        Some(key) => names.keyed_subject(partition_of(key, spec.worker.partitions), id),
        None => names.work_subject(&record.task, id),
    }
}

/// Writes the api's `pending` record if the key holds none (or a delete or purge marker),
/// marked with [`PENDING_HEADER`], and returns its revision. The same create-only rule as
/// `kv::Store::create`, through a raw publish so the record can carry the header.
pub async fn create_pending(
    js: &jetstream::Context,
    kv: &kv::Store,
    names: &PoolNames,
    id: &WorkId,
    record: &WorkRecord,
) -> Result<u64, CreatePendingError> {
    let subject = record_subject(names, id);
    let body = record.to_json();
    let mut expected = 0;
    for _ in 0..CREATE_ATTEMPTS {
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.clone().into())
            .header(PENDING_HEADER, "1")
            .expected_last_subject_sequence(expected);
        let acked = async { js.send_publish(subject.clone(), publish).await?.await }.await;
        match acked {
            Ok(ack) => return Ok(ack.sequence),
            Err(err) if is_wrong_last_sequence(&err) => {}
            Err(source) => {
                return Err(CreatePendingError::Publish {
                    id: id.clone(),
                    source,
                });
            }
        }
        let entry = kv
            .entry(id.as_str())
            .await
            .map_err(|source| CreatePendingError::Read {
                id: id.clone(),
                source,
            })?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                return Err(CreatePendingError::AlreadyExists);
            }
            // Deleted or purged: created again over the marker.
            Some(marker) => expected = marker.revision,
            // Expired between the publish and the read.
            None => expected = 0,
        }
    }
    Err(CreatePendingError::Contended { id: id.clone() })
}

fn is_wrong_last_sequence(err: &PublishError) -> bool {
    err.kind() == PublishErrorKind::WrongLastSequence
        || std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .is_some_and(|js_err| {
                js_err.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
            })
}

/// A marked record found by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    id: WorkId,
    revision: u64,
}

/// Deletes the api's `pending` records written more than `older_than` ago whose work
/// message is not in the work stream: their publish never landed. Each delete is a
/// compare-and-set on the revision the scan saw, so a record a worker or a retry changed
/// meanwhile stays. A publish that still lands afterwards is harmless: the worker starts
/// work whose record is missing afresh.
pub async fn sweep_stranded(
    js: &jetstream::Context,
    names: &PoolNames,
    spec: &PoolSpec,
    older_than: Duration,
) -> Result<Swept, RepairError> {
    let bucket = names.bucket();
    let kv = js
        .get_key_value(&bucket)
        .await
        .map_err(|source| RepairError::Bucket {
            bucket: bucket.clone(),
            source,
        })?;
    let work = js
        .get_stream(names.stream())
        .await
        .map_err(|source| RepairError::Stream {
            stream: names.stream(),
            source,
        })?;
    let (scanned, candidates) = tokio::time::timeout(SCAN_TIMEOUT, scan(&kv, names, older_than))
        .await
        .map_err(|_| RepairError::ScanTimedOut {
            bucket: bucket.clone(),
            timeout: SCAN_TIMEOUT,
        })??;
    let mut swept = Swept {
        scanned,
        ..Swept::default()
    };
    for candidate in candidates {
        match repair(&kv, &work, names, spec, &candidate).await? {
            Repair::NotStranded => {}
            Repair::Changed => swept.stranded += 1,
            Repair::Deleted => {
                swept.stranded += 1;
                swept.repaired += 1;
                tracing::debug!(id = %candidate.id, "stranded pending record deleted");
            }
        }
    }
    Ok(swept)
}

/// Reads the latest message of every key, headers only, and returns how many keys there
/// were and the marked ones older than `older_than`.
async fn scan(
    kv: &kv::Store,
    names: &PoolNames,
    older_than: Duration,
) -> Result<(u64, Vec<Candidate>), RepairError> {
    let scan_error = |source: async_nats::Error| RepairError::Scan {
        bucket: names.bucket(),
        source,
    };
    let prefix = record_prefix(names);
    let consumer: consumer::PullConsumer = kv
        .stream
        .create_consumer(consumer::pull::Config {
            description: Some("workpool sweep of stranded pending records".into()),
            filter_subject: format!("{prefix}>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            // The bodies (results) are never needed, only the marker and the timestamp.
            headers_only: true,
            ack_policy: AckPolicy::None,
            memory_storage: true,
            // Left behind if we die mid-scan; the server removes it.
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|err| scan_error(Box::new(err)))?;
    let scanned = read_candidates(&consumer, &prefix, older_than)
        .await
        .map_err(scan_error);
    let name = consumer.cached_info().name.clone();
    if let Err(err) = kv.stream.delete_consumer(&name).await {
        tracing::debug!(%err, consumer = name, "sweep consumer not deleted; it expires");
    }
    scanned
}

async fn read_candidates(
    consumer: &consumer::PullConsumer,
    prefix: &str,
    older_than: Duration,
) -> Result<(u64, Vec<Candidate>), async_nats::Error> {
    let now = unix_nanos(SystemTime::now());
    let mut pending = consumer.cached_info().num_pending;
    let (mut scanned, mut candidates) = (0, Vec::new());
    while pending > 0 {
        let mut batch = consumer.fetch().max_messages(SCAN_BATCH).messages().await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message?;
            got += 1;
            let info = message.info()?;
            pending = info.pending;
            scanned += 1;
            let marked = message
                .headers
                .as_ref()
                .is_some_and(|headers| headers.get(PENDING_HEADER).is_some());
            let written = info.published.unix_timestamp_nanos();
            if !marked || !older(written, now, older_than) {
                continue;
            }
            let id = message
                .subject
                .as_str()
                .strip_prefix(prefix)
                .and_then(|key| key.parse::<WorkId>().ok());
            if let Some(id) = id {
                candidates.push(Candidate {
                    id,
                    revision: info.stream_sequence,
                });
            }
        }
        // The count taken at creation can go stale (keys expire before delivery): an
        // empty pull means everything there is was delivered.
        if got == 0 {
            break;
        }
    }
    Ok((scanned, candidates))
}

fn unix_nanos(time: SystemTime) -> i128 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i128::try_from(since.as_nanos()).unwrap_or(i128::MAX)
    })
}

/// Whether a message written at `written` (Unix nanoseconds, the server's clock) was
/// written more than `older_than` before `now`.
fn older(written: i128, now: i128, older_than: Duration) -> bool {
    let threshold = i128::try_from(older_than.as_nanos()).unwrap_or(i128::MAX);
    now.saturating_sub(written) > threshold
}

enum Repair {
    /// No longer the api's untouched record, or its work is queued.
    NotStranded,
    /// Stranded, but changed before the delete.
    Changed,
    Deleted,
}

async fn repair(
    kv: &kv::Store,
    work: &jetstream::stream::Stream,
    names: &PoolNames,
    spec: &PoolSpec,
    candidate: &Candidate,
) -> Result<Repair, RepairError> {
    let id = &candidate.id;
    let entry = kv
        .entry(id.as_str())
        .await
        .map_err(|source| RepairError::Read {
            id: id.clone(),
            source,
        })?;
    let Some(entry) = entry else {
        return Ok(Repair::NotStranded);
    };
    if entry.revision != candidate.revision || entry.operation != kv::Operation::Put {
        return Ok(Repair::NotStranded);
    }
    let record = match WorkRecord::from_json(&entry.value) {
        Ok(record) if record.status == WorkStatus::Pending => record,
        // Not a record the api wrote; not ours to judge.
        _ => return Ok(Repair::NotStranded),
    };
    let subject = work_message_subject(names, spec, id, &record);
    // The leader's answer, not a direct get's: a lagging replica would call queued work
    // stranded, and its record would be deleted under it.
    match work.get_last_raw_message_by_subject(&subject).await {
        Ok(_) => return Ok(Repair::NotStranded),
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {}
        Err(source) => {
            return Err(RepairError::Lookup {
                id: id.clone(),
                source,
            });
        }
    }
    match kv
        .delete_expect_revision(id.as_str(), Some(candidate.revision))
        .await
    {
        Ok(()) => Ok(Repair::Deleted),
        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Repair::Changed),
        Err(source) => Err(RepairError::Delete {
            id: id.clone(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_older_than_the_threshold_are_candidates() {
        let second = 1_000_000_000_i128;
        let now = 1_000 * second;
        let minute = Duration::from_secs(60);
        assert!(older(now - 61 * second, now, minute));
        assert!(!older(now - 60 * second, now, minute));
        assert!(!older(now - 5 * second, now, minute));
        // The server's clock ahead of ours: never old.
        assert!(!older(now + 5 * second, now, minute));
        assert!(older(now - 1, now, Duration::ZERO));
    }

    #[test]
    fn work_subjects_match_the_apis() {
        let names = PoolNames::new("default", "demo").expect("names");
        let spec = PoolSpec::from_json(r#"{"worker": {"partitions": 8}}"#).expect("spec");
        let id: WorkId = "0123456789abcdef0123456789abcdef".parse().expect("id");
        let now = chrono::Utc::now();
        let unkeyed = WorkRecord::pending("echo", None, "api-0", now);
        assert_eq!(
            work_message_subject(&names, &spec, &id, &unkeyed),
            names.work_subject("echo", &id)
        );
        let keyed = WorkRecord::pending("echo", Some("gate-7"), "api-0", now);
        assert_eq!(
            work_message_subject(&names, &spec, &id, &keyed),
            names.keyed_subject(partition_of("gate-7", 8), &id)
        );
        assert_eq!(
            record_subject(&names, &id),
            format!("$KV.WP_default_demo.{id}")
        );
    }
}
