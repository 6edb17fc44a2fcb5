//! The worker's writes to the results bucket: every change is a compare-and-set on the
//! KV revision and obeys the forward-only status rule, so a late or duplicate writer
//! never moves a record back.

use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::Utc;
use workpool_core::message::WorkMessage;
use workpool_core::{WorkId, WorkRecord, WorkStatus};

/// How many times a compare-and-set is retried when another writer got there first.
const CAS_ATTEMPTS: usize = 16;
/// How many times a write is retried while NATS is unreachable (about half a minute).
const TRANSIENT_ATTEMPTS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("results bucket unreachable: {0}")]
    Unavailable(String),
    #[error("record {0} kept changing under us")]
    Contended(WorkId),
}

/// What the worker should do with a delivered message.
#[derive(Debug)]
pub enum Begin {
    /// Run attempt `record.attempts`; `revision` is the record's revision now.
    Run { record: WorkRecord, revision: u64 },
    /// The work is already finished (or cancelled): ack and skip it.
    Skip(WorkStatus),
    /// Every attempt has been started before (the last one never finished, e.g. its
    /// worker died): fail it for good.
    Exhausted { record: WorkRecord, revision: u64 },
}

/// How a finishing write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    Written,
    /// Someone else finished the work first; our outcome is dropped.
    AlreadyFinished(WorkStatus),
}

#[derive(Debug, Clone)]
pub struct Records {
    kv: kv::Store,
    pod: String,
}

enum Cas {
    Done(u64),
    Conflict,
}

impl Records {
    pub fn new(kv: kv::Store, pod: String) -> Self {
        Self { kv, pod }
    }

    async fn read(&self, id: &WorkId) -> Result<Option<(WorkRecord, u64)>, RecordError> {
        let entry = retry_transient(|| self.kv.entry(id.as_str())).await?;
        Ok(entry.and_then(|entry| match entry.operation {
            kv::Operation::Put => WorkRecord::from_json(&entry.value)
                .ok()
                .map(|record| (record, entry.revision)),
            _ => None,
        }))
    }

    async fn write(
        &self,
        id: &WorkId,
        record: &WorkRecord,
        revision: Option<u64>,
    ) -> Result<Cas, RecordError> {
        let value: bytes::Bytes = record.to_json().into();
        let result = retry_transient(|| async {
            match revision {
                Some(revision) => {
                    match self.kv.update(id.as_str(), value.clone(), revision).await {
                        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            Ok(Cas::Conflict)
                        }
                        other => other.map(Cas::Done).map_err(|err| err.to_string()),
                    }
                }
                None => match self.kv.create(id.as_str(), value.clone()).await {
                    Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                        Ok(Cas::Conflict)
                    }
                    other => other.map(Cas::Done).map_err(|err| err.to_string()),
                },
            }
        })
        .await?;
        Ok(result)
    }

    fn start_attempt(&self, record: &mut WorkRecord) {
        record.status = WorkStatus::Working;
        record.attempts += 1;
        record.worker = Some(self.pod.clone());
        record.updated_at = Utc::now();
    }

    /// Marks the work `working` for a new attempt. `hint` is the revision of the
    /// `pending` record the api wrote; with it the common case needs no read.
    pub async fn begin(
        &self,
        work: &WorkMessage,
        hint: Option<u64>,
        max_attempts: u32,
    ) -> Result<Begin, RecordError> {
        if let Some(revision) = hint {
            let mut record = work.pending_record();
            self.start_attempt(&mut record);
            if let Cas::Done(revision) = self.write(&work.id, &record, Some(revision)).await? {
                return Ok(Begin::Run { record, revision });
            }
        }
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, revision) = match self.read(&work.id).await? {
                Some((record, revision)) => (record, Some(revision)),
                // The record expired while the work was queued: start it afresh.
                None => (work.pending_record(), None),
            };
            if record.status.is_terminal() {
                return Ok(Begin::Skip(record.status));
            }
            if let Some(revision) = revision
                && record.attempts >= max_attempts
            {
                return Ok(Begin::Exhausted { record, revision });
            }
            self.start_attempt(&mut record);
            if let Cas::Done(revision) = self.write(&work.id, &record, revision).await? {
                return Ok(Begin::Run { record, revision });
            }
        }
        Err(RecordError::Contended(work.id.clone()))
    }

    /// Writes the outcome of an attempt: `status` (`working` while retrying, or a terminal
    /// status) with its result or error. If another writer changed the record meanwhile,
    /// it is re-read: a terminal record wins; otherwise our outcome is applied on top.
    pub async fn settle(
        &self,
        id: &WorkId,
        mut record: WorkRecord,
        mut revision: u64,
        status: WorkStatus,
        result: Option<serde_json::Value>,
        error: Option<String>,
    ) -> Result<Settled, RecordError> {
        for _ in 0..CAS_ATTEMPTS {
            if record.advance(status, Utc::now()).is_err() {
                return Ok(Settled::AlreadyFinished(record.status));
            }
            record.result.clone_from(&result);
            record.error.clone_from(&error);
            if let Cas::Done(_) = self.write(id, &record, Some(revision)).await? {
                return Ok(Settled::Written);
            }
            match self.read(id).await? {
                Some((current, current_revision)) => {
                    record = current;
                    revision = current_revision;
                }
                // Expired under us: nothing left to protect; write it afresh.
                None => {
                    if let Cas::Done(_) = self.write(id, &record, None).await? {
                        return Ok(Settled::Written);
                    }
                }
            }
        }
        Err(RecordError::Contended(id.clone()))
    }
}

/// Retries a KV call while NATS is unreachable; compare-and-set conflicts are results,
/// not errors, so they come back at once.
async fn retry_transient<T, E, F, Fut>(mut call: F) -> Result<T, RecordError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt + 1 >= TRANSIENT_ATTEMPTS => {
                return Err(RecordError::Unavailable(err.to_string()));
            }
            Err(err) => {
                tracing::debug!(%err, attempt, "results bucket call failed; retrying");
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
