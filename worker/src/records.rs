//! The worker's writes to the results bucket: every change is a compare-and-set on the
//! KV revision and obeys the forward-only status rule, so a late or duplicate writer
//! never moves a record back.

use std::time::Duration;

use async_nats::jetstream::kv;
use backon::Retryable;
use chrono::{DateTime, Utc};
use workpool_core::message::WorkMessage;
use workpool_core::{WorkId, WorkRecord, WorkStatus};
use workpool_runtime::records::RecordStore;

/// How many times a compare-and-set is retried when another writer got there first.
const CAS_ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("results bucket unreachable: reading record {id}: {source}")]
    Read {
        id: WorkId,
        #[source]
        source: kv::EntryError,
    },
    #[error("results bucket unreachable: writing record {id}: {source}")]
    Write {
        id: WorkId,
        #[source]
        source: kv::UpdateError,
    },
    #[error("record {0} kept changing under us")]
    Contended(WorkId),
}

impl RecordError {
    fn read(id: &WorkId) -> impl FnOnce(kv::EntryError) -> Self {
        let id = id.clone();
        move |source| Self::Read { id, source }
    }

    fn write(id: &WorkId) -> impl FnOnce(kv::UpdateError) -> Self {
        let id = id.clone();
        move |source| Self::Write { id, source }
    }
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
    /// The message is of an earlier generation of the work than the record: ack it
    /// and run nothing.
    Stale,
    /// Another attempt holds the work until `until` (it may still run): start nothing.
    Held { until: DateTime<Utc> },
}

/// How renewing the hold of a running attempt went.
#[derive(Debug)]
pub enum Renewed {
    /// Still ours, until `ackWait` from now.
    Held { record: WorkRecord, revision: u64 },
    /// Still ours, and a DELETE asked for the work to be cancelled.
    CancelRequested { record: WorkRecord, revision: u64 },
    /// Another attempt (or a terminal record) took its place: stop, write nothing.
    Lost,
}

/// How a finishing write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    Written,
    /// Someone else finished the work first; our outcome is dropped.
    AlreadyFinished(WorkStatus),
    /// Our attempt lost its hold and another one runs now; our outcome is dropped and
    /// the message must not be acknowledged (that would release it under the other).
    Lost,
}

#[derive(Debug, Clone)]
pub struct Records {
    /// The bucket, and the writes that give a terminal record its expiry.
    store: RecordStore,
    pod: String,
    /// How long an attempt's hold lasts without renewal: the consumer's `ackWait`, after
    /// which the server redelivers the message anyway.
    lease: Duration,
}

enum Cas {
    Done(u64),
    Conflict,
}

impl Records {
    pub fn new(store: RecordStore, pod: String, lease: Duration) -> Self {
        Self { store, pod, lease }
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// When a hold taken now runs out: `ackWait` from now.
    pub(crate) fn lease_from_now(&self) -> DateTime<Utc> {
        lease_end(Utc::now(), self.lease)
    }

    /// The work's record, if there is one, and the revision a write compares against
    /// (that of a delete or expiry marker where there is none, or 0 for nothing).
    async fn read(&self, id: &WorkId) -> Result<(Option<WorkRecord>, u64), RecordError> {
        let entry = retry_transient(|| self.store.kv.entry(id.as_str()))
            .await
            .map_err(RecordError::read(id))?;
        Ok(match entry {
            Some(entry) => {
                let record = (entry.operation == kv::Operation::Put)
                    .then(|| WorkRecord::from_json(&entry.value).ok())
                    .flatten();
                (record, entry.revision)
            }
            None => (None, 0),
        })
    }

    /// The record of `id` and its revision, as [`Self::read`], for the webhook loop.
    pub(crate) async fn current(
        &self,
        id: &WorkId,
    ) -> Result<(Option<WorkRecord>, u64), RecordError> {
        self.read(id).await
    }

    /// Writes a finished record again with its webhook's delivery state, if it is still
    /// at `revision`; false if a newer revision took its place.
    pub(crate) async fn write_delivery(
        &self,
        id: &WorkId,
        record: &WorkRecord,
        revision: u64,
    ) -> Result<bool, RecordError> {
        Ok(matches!(
            self.write(id, record, revision).await?,
            Cas::Done(_)
        ))
    }

    /// Whether the bucket shows `work` handled: a record of its submission or a later
    /// one (its `created_at` is its message's), whatever its status.
    ///
    /// Work put aside by its group's limits (`parked`) may have a record of its own
    /// earlier attempts: it is handled only once that record is finished.
    pub async fn is_handled(&self, work: &WorkMessage) -> Result<bool, RecordError> {
        let (record, _) = self.read(&work.id).await?;
        Ok(record.is_some_and(|record| {
            record.created_at > work.created_at
                || (record.created_at == work.created_at
                    && (work.parked == 0 || record.status.is_terminal()))
        }))
    }

    /// The bucket, for state kept beside the records (group limits).
    pub(crate) fn store(&self) -> &RecordStore {
        &self.store
    }

    /// Compare-and-set of the record at `revision`.
    async fn write(
        &self,
        id: &WorkId,
        record: &WorkRecord,
        revision: u64,
    ) -> Result<Cas, RecordError> {
        let value: bytes::Bytes = record.to_json().into();
        retry_transient(|| async {
            let update = self
                .store
                .update(id.as_str(), value.clone(), revision, record);
            match update.await {
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Ok(Cas::Conflict)
                }
                other => other.map(Cas::Done),
            }
        })
        .await
        .map_err(RecordError::write(id))
    }

    fn start_attempt(&self, record: &mut WorkRecord) {
        record.status = WorkStatus::Working;
        record.attempts += 1;
        record.worker = Some(self.pod.clone());
        record.lease_until = Some(self.lease_from_now());
        record.updated_at = Utc::now();
        // The previous attempt's progress says nothing of this one.
        record.progress = None;
    }

    /// The record of the first attempt at fresh work, as it will be recorded if it runs
    /// on: `working`, attempt 1, this worker.
    pub fn first_attempt(&self, work: &WorkMessage) -> WorkRecord {
        let mut record = work.pending_record();
        self.start_attempt(&mut record);
        record
    }

    /// Marks the work `working` for a new attempt. `hint` is the bucket revision the
    /// api accepted the work on; with it the common case needs no read.
    pub async fn begin(
        &self,
        work: &WorkMessage,
        hint: Option<u64>,
        max_attempts: u32,
    ) -> Result<Begin, RecordError> {
        if let Some(revision) = hint {
            let record = self.first_attempt(work);
            if let Cas::Done(revision) = self.write(&work.id, &record, revision).await? {
                return Ok(Begin::Run { record, revision });
            }
        }
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, revision) = match self.read(&work.id).await? {
                (Some(record), revision) => (record, revision),
                // No record: the message is the work's `pending` state (an earlier
                // attempt, if any, ended before it recorded anything).
                (None, revision) => (work.pending_record(), revision),
            };
            if record.created_at > work.created_at {
                // A later submission of the same id owns the record; this message's
                // work is finished, and the record's own message runs the new one.
                return Ok(Begin::Stale);
            }
            if record.created_at < work.created_at && !record.is_held(Utc::now()) {
                // The record of an earlier submission of the same id, which finished:
                // this message is the new one the api accepted on it.
                record = work.pending_record();
            }
            if record.status.is_terminal() {
                return Ok(Begin::Skip(record.status));
            }
            if record.is_held(Utc::now())
                && let Some(until) = record.lease_until
            {
                return Ok(Begin::Held { until });
            }
            if record.cancel_requested {
                // Cancelled while it ran, and the attempt that ran it is gone.
                record.advance(WorkStatus::Cancelled, Utc::now()).ok();
                record.lease_until = None;
                match self.write(&work.id, &record, revision).await? {
                    Cas::Done(_) => return Ok(Begin::Skip(WorkStatus::Cancelled)),
                    Cas::Conflict => continue,
                }
            }
            if record.attempts >= max_attempts {
                return Ok(Begin::Exhausted { record, revision });
            }
            self.start_attempt(&mut record);
            if let Cas::Done(revision) = self.write(&work.id, &record, revision).await? {
                return Ok(Begin::Run { record, revision });
            }
        }
        Err(RecordError::Contended(work.id.clone()))
    }

    /// Renews the hold of our running attempt (one try: the caller's fence decides when
    /// failures have lasted too long). A compare-and-set conflict is re-read: if the
    /// record still shows our attempt (the api asked to cancel), the hold is renewed on
    /// top of it; otherwise the hold is lost.
    pub async fn renew(
        &self,
        id: &WorkId,
        mut record: WorkRecord,
        mut revision: u64,
    ) -> Result<Renewed, RecordError> {
        let attempt = record.attempts;
        for _ in 0..2 {
            record.lease_until = Some(self.lease_from_now());
            let value: bytes::Bytes = record.to_json().into();
            match self.store.kv.update(id.as_str(), value, revision).await {
                Ok(revision) if record.cancel_requested => {
                    return Ok(Renewed::CancelRequested { record, revision });
                }
                Ok(revision) => return Ok(Renewed::Held { record, revision }),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(source) => {
                    return Err(RecordError::Write {
                        id: id.clone(),
                        source,
                    });
                }
            }
            let entry = self
                .store
                .kv
                .entry(id.as_str())
                .await
                .map_err(RecordError::read(id))?;
            let current = entry
                .filter(|entry| entry.operation == kv::Operation::Put)
                .and_then(|entry| {
                    WorkRecord::from_json(&entry.value)
                        .ok()
                        .map(|record| (record, entry.revision))
                });
            match current {
                Some((current, current_revision)) if current.is_attempt_of(&self.pod, attempt) => {
                    record = current;
                    revision = current_revision;
                }
                _ => return Ok(Renewed::Lost),
            }
        }
        Err(RecordError::Contended(id.clone()))
    }

    /// Writes the outcome of an attempt: `status` (`working` while retrying, or a terminal
    /// status) with its result or error, and releases the hold. If another writer changed
    /// the record meanwhile, it is re-read: a terminal record wins; a record that shows
    /// another attempt means ours lost its hold; otherwise our outcome goes on top.
    pub async fn settle(
        &self,
        id: &WorkId,
        mut record: WorkRecord,
        mut revision: u64,
        status: WorkStatus,
        result: Option<serde_json::Value>,
        error: Option<String>,
    ) -> Result<Settled, RecordError> {
        let attempt = record.attempts;
        for _ in 0..CAS_ATTEMPTS {
            if record.advance(status, Utc::now()).is_err() {
                return Ok(Settled::AlreadyFinished(record.status));
            }
            record.result.clone_from(&result);
            record.error.clone_from(&error);
            record.lease_until = None;
            if let Cas::Done(_) = self.write(id, &record, revision).await? {
                return Ok(Settled::Written);
            }
            match self.read(id).await? {
                (Some(current), _) if current.status.is_terminal() => {
                    return Ok(Settled::AlreadyFinished(current.status));
                }
                (Some(current), _) if !current.is_attempt_of(&self.pod, attempt) => {
                    return Ok(Settled::Lost);
                }
                (Some(current), current_revision) => {
                    record = current;
                    revision = current_revision;
                }
                // Our attempt's record is gone: deleted (with its pool, say), or an
                // unrecorded attempt's base changed. Nothing is ours to write.
                (None, _) => return Ok(Settled::Lost),
            }
        }
        Err(RecordError::Contended(id.clone()))
    }
}

/// The end of a lease of `lease` taken at `now`. Only a lease of some hundred million
/// years overflows; it lasts for ever.
fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|lease| now.checked_add_signed(lease))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Retries a KV call while NATS is unreachable
/// ([`workpool_runtime::retry::RESULTS_BUCKET`]), and gives the last error back once it
/// has been made [`workpool_runtime::retry::RESULTS_BUCKET_CALLS`] times; compare-and-set
/// conflicts are results, not errors, so they come back at once.
async fn retry_transient<T, E, F, Fut>(call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut attempt = 0;
    call.retry(workpool_runtime::retry::RESULTS_BUCKET)
        .notify(|err: &E, _| {
            tracing::debug!(%err, attempt, "results bucket call failed; retrying");
            attempt += 1;
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_lease_ends_ack_wait_from_now_and_an_endless_one_never() {
        let now = Utc::now();
        assert_eq!(
            lease_end(now, Duration::from_secs(30)),
            now + chrono::Duration::seconds(30)
        );
        assert_eq!(lease_end(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        let far = Duration::from_secs(400_000 * 365 * 24 * 3600 * 1000);
        assert_eq!(lease_end(now, far), DateTime::<Utc>::MAX_UTC);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_call_is_retried_until_it_answers() {
        let calls = Cell::new(0);
        let answer = retry_transient(|| {
            calls.set(calls.get() + 1);
            let call = calls.get();
            async move {
                if call < 4 {
                    Err("unreachable")
                } else {
                    Ok(call)
                }
            }
        })
        .await;
        assert_eq!(answer, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_call_gives_up_with_the_last_error() {
        let calls = Cell::new(0);
        let started = tokio::time::Instant::now();
        let answer: Result<(), String> = retry_transient(|| {
            calls.set(calls.get() + 1);
            let call = calls.get();
            async move { Err(format!("unreachable ({call})")) }
        })
        .await;
        assert_eq!(calls.get(), workpool_runtime::retry::RESULTS_BUCKET_CALLS);
        assert_eq!(
            answer,
            Err(format!(
                "unreachable ({})",
                workpool_runtime::retry::RESULTS_BUCKET_CALLS
            ))
        );
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(31)..Duration::from_secs(32)).contains(&waited),
            "{waited:?}"
        );
    }
}
