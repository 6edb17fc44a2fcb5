//! The api's side of the queue: records in the results bucket and messages on the work
//! stream. The api binds to objects the operator provisioned; it never creates them.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream::LastRawMessageErrorKind};
use async_nats::{Client, connection::State};
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use workpool_core::cluster::{PeerReply, PeerRequest};
use workpool_core::message::{RECORD_REVISION_HEADER, WorkMessage, WorkSubmission};
use workpool_core::names::partition_of;
use workpool_core::unrecorded::unrecorded_run_limit;
use workpool_core::{PoolNames, PoolSpec, WorkId, WorkRecord, WorkStatus};
use workpool_runtime::records::RecordStore;
use workpool_runtime::repair::{self, CreatePendingError};

use crate::cluster::peer_payload;
use crate::error::ApiError;
use crate::waiters::{Waiter, Waiters, WaitersError};

/// Handles on one pool's stream and bucket.
#[derive(Debug, Clone)]
pub struct Queue {
    names: PoolNames,
    client: Client,
    js: jetstream::Context,
    kv: kv::Store,
    /// The bucket's writes of records that may expire.
    records: RecordStore,
    stream: jetstream::stream::Stream,
    partitions: u32,
    /// `queue.maxPayloadBytes`, the limit a 413 names.
    max_message_bytes: usize,
    /// How long an attempt may run before recording `working`
    /// ([`workpool_core::unrecorded`]): a cancel of `pending` work waits it out.
    unrecorded_limit: Duration,
    waiters: Waiters,
}

/// Why [`Queue::bind`] could not bind (yet): the operator may not have provisioned the
/// pool's objects, or NATS is unreachable.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("getting bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: jetstream::context::KeyValueError,
    },
    #[error("getting stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error(transparent)]
    Waiters(#[from] WaitersError),
}

/// What a POST did.
#[derive(Debug)]
pub enum Submitted {
    /// New work, durably queued.
    Accepted,
    /// The same work was already known; its current record.
    Existing(WorkRecord),
}

/// How many times a compare-and-set is retried when another writer got there first.
const CAS_ATTEMPTS: usize = 8;
/// How long a peer request waits for its answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long DELETE waits for a worker to record the cancellation of running work.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How long an api pod keeps trying to remove a cancelled work's message that a DELETE
/// could not remove (a NATS outage outlasting this is left to the client's retries).
const REMOVAL_RETRIES_FOR: Duration = Duration::from_secs(600);

impl Queue {
    /// Binds to the pool's bucket and stream; fails if they do not exist yet. At most
    /// `max_waiters` requests wait for records at once.
    pub async fn bind(
        client: Client,
        names: PoolNames,
        spec: &PoolSpec,
        max_waiters: usize,
    ) -> Result<Self, BindError> {
        let js = jetstream::new(client.clone());
        let bucket = names.bucket();
        let kv = js
            .get_key_value(&bucket)
            .await
            .map_err(|source| BindError::Bucket {
                bucket: bucket.clone(),
                source,
            })?;
        let stream = js
            .get_stream(names.stream())
            .await
            .map_err(|source| BindError::Stream {
                stream: names.stream(),
                source,
            })?;
        let waiters = Waiters::start(&js, kv.clone(), &bucket, max_waiters).await?;
        Ok(Self {
            records: RecordStore::new(kv.clone(), js.clone(), spec.result_ttl),
            names,
            client,
            js,
            kv,
            stream,
            partitions: spec.worker.partitions,
            max_message_bytes: spec.queue.max_payload_bytes,
            unrecorded_limit: unrecorded_run_limit(spec.worker.ack_wait),
            waiters,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn ensure_connected(&self) -> Result<(), ApiError> {
        if self.is_connected() {
            Ok(())
        } else {
            Err(ApiError::unavailable("NATS is not connected"))
        }
    }

    fn subject(&self, id: &WorkId, task: &str, key: Option<&str>) -> String {
        match key {
            Some(key) => self
                .names
                .keyed_subject(partition_of(key, self.partitions), id),
            None => self.names.work_subject(task, id),
        }
    }

    /// Records `pending`, then publishes the work; answers only once both are durable.
    pub async fn submit(
        &self,
        id: &WorkId,
        work: &WorkSubmission,
        pod: &str,
    ) -> Result<Submitted, ApiError> {
        self.ensure_connected()?;
        let message = new_message(id, work, pod);
        let record = message.pending_record();
        match self.create_pending(id, &record).await {
            Ok(revision) => self.queue_new(&message, revision).await,
            Err(CreatePendingError::AlreadyExists) => self.known(message).await,
            Err(err) => Err(ApiError::unavailable_from(err)),
        }
    }

    /// Publishes new work whose `pending` record was just created at `revision`; drops
    /// the record again when the message is certainly not queued.
    async fn queue_new(&self, message: &WorkMessage, revision: u64) -> Result<Submitted, ApiError> {
        let id = &message.id;
        match self.publish(message, revision).await {
            Ok(Published { duplicate: false }) => Ok(Submitted::Accepted),
            Ok(Published { duplicate: true }) => self.settle_duplicate(message, revision).await,
            Err(err) => {
                // The message is certainly not queued: drop the record so a retry of the
                // same POST starts afresh. (After a timeout the message may have landed;
                // the record stays and a retry re-checks the stream.)
                if matches!(err, ApiError::QueueFull | ApiError::PayloadTooLarge { .. }) {
                    self.drop_record(id, revision).await;
                }
                Err(err)
            }
        }
    }

    /// The stream already held this record generation's message. A concurrent POST of
    /// the same work that found our record before our message landed publishes the same
    /// generation ([`Self::known`]); then the work is queued (or already taken by a
    /// worker, which moved the record on) and this is answered `202`. Only when neither
    /// holds did the stream store nothing; the record is dropped and the client retries.
    async fn settle_duplicate(
        &self,
        message: &WorkMessage,
        revision: u64,
    ) -> Result<Submitted, ApiError> {
        if self.is_queued(message).await? {
            return Ok(Submitted::Accepted);
        }
        match self.record(&message.id).await? {
            Some((_, current)) if current != revision => Ok(Submitted::Accepted),
            _ => {
                self.drop_record(&message.id, revision).await;
                Err(ApiError::unavailable(
                    "the queue refused the work as a duplicate; retry",
                ))
            }
        }
    }

    /// Work whose record exists already: its record, after publishing it again if the
    /// first POST recorded `pending` but its message never landed.
    async fn known(&self, message: WorkMessage) -> Result<Submitted, ApiError> {
        let Some((existing, revision)) = self.record(&message.id).await? else {
            // Expired between our create and read: a retry will create it.
            return Err(ApiError::unavailable("record changed concurrently"));
        };
        if existing.status == WorkStatus::Pending && !self.is_queued(&message).await? {
            // Send the work as the first POST would have, so the message and the record
            // describe the same submission.
            let first = WorkMessage {
                accepted_by: existing.accepted_by.clone(),
                created_at: existing.created_at,
                ..message
            };
            self.publish(&first, revision).await?;
        }
        Ok(Submitted::Existing(existing))
    }

    /// Creates the `pending` record, marked as the api's own until a worker writes it, so
    /// the operator's sweep can repair it if the publish never lands
    /// (`workpool_runtime::repair`).
    async fn create_pending(
        &self,
        id: &WorkId,
        record: &WorkRecord,
    ) -> Result<u64, CreatePendingError> {
        repair::create_pending(&self.js, &self.kv, &self.names, id, record).await
    }

    async fn publish(
        &self,
        message: &WorkMessage,
        record_revision: u64,
    ) -> Result<Published, ApiError> {
        let subject = self.subject(&message.id, &message.task, message.key.as_deref());
        // The id names the record's generation, not only the content: once a record has
        // expired, the same content is a new submission and must not be deduplicated
        // against the old message (docs/reliability.md).
        let publish = jetstream::message::PublishMessage::build()
            .payload(message.to_json().into())
            .message_id(message_id(&message.id, record_revision).as_str())
            .header(RECORD_REVISION_HEADER, record_revision.to_string().as_str());
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|err| self.publish_error(err))?;
        let ack = ack.await.map_err(|err| self.publish_error(err))?;
        Ok(Published {
            duplicate: ack.duplicate,
        })
    }

    fn publish_error(&self, err: jetstream::context::PublishError) -> ApiError {
        match err.kind() {
            // async-nats refuses a message over the server's max_payload before sending.
            PublishErrorKind::MaxPayloadExceeded => ApiError::PayloadTooLarge {
                limit: self.client.server_info().max_payload,
            },
            PublishErrorKind::Other if is_stream_full(&err) => ApiError::QueueFull,
            // Under the body limit, yet the message grew past the stream's per-message
            // limit on the way (JSON numbers such as `1E2` become `100.0`).
            PublishErrorKind::Other
                if has_code(&err, jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) =>
            {
                ApiError::PayloadTooLarge {
                    limit: self.max_message_bytes,
                }
            }
            _ => ApiError::unavailable_from(err),
        }
    }

    async fn drop_record(&self, id: &WorkId, revision: u64) {
        if let Err(err) = self
            .kv
            .delete_expect_revision(id.as_str(), Some(revision))
            .await
        {
            tracing::warn!(%id, %err, "could not drop the record of work that was not queued");
        }
    }

    /// Whether the work's message is still in the stream (queued or being worked). Asked
    /// of the stream's leader, not with a direct get: any replica answers those, and a
    /// lagging one would call queued work missing (docs/reliability.md).
    async fn is_queued(&self, message: &WorkMessage) -> Result<bool, ApiError> {
        let subject = self.subject(&message.id, &message.task, message.key.as_deref());
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(err) => Err(ApiError::unavailable_from(err)),
        }
    }

    /// The current record and its revision, if it exists.
    pub async fn record(&self, id: &WorkId) -> Result<Option<(WorkRecord, u64)>, ApiError> {
        self.ensure_connected()?;
        let entry = self
            .kv
            .entry(id.as_str())
            .await
            .map_err(ApiError::unavailable_from)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let record = WorkRecord::from_json(&entry.value).map_err(|err| {
                    ApiError::unavailable_with(format!("unreadable record: {err}"), err)
                })?;
                Ok(Some((record, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// The record once it is terminal, or as it stands at the deadline. Waits on the
    /// process's one watch of the bucket, not a watch (a consumer) of its own.
    pub async fn wait_for_end(
        &self,
        id: &WorkId,
        wait: Duration,
    ) -> Result<Option<WorkRecord>, ApiError> {
        // Registered before the read, so a write between the two is still delivered.
        let waiter = self.waiter(id)?;
        self.wait_with(waiter, id, wait).await
    }

    /// One of this api pod's bounded waits on `id`'s record (429 when they are all taken).
    fn waiter(&self, id: &WorkId) -> Result<Waiter, ApiError> {
        self.waiters
            .register(id)
            .map_err(|full| ApiError::TooManyWaiters { limit: full.limit })
    }

    /// [`Self::wait_for_end`] with a waiter registered already.
    async fn wait_with(
        &self,
        mut waiter: Waiter,
        id: &WorkId,
        wait: Duration,
    ) -> Result<Option<WorkRecord>, ApiError> {
        /// Bounds the read at the deadline, so an answer never waits long past it.
        const DEADLINE_READ: Duration = Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + wait;
        let Some((mut latest, mut revision)) = self.record(id).await? else {
            return Ok(None);
        };
        loop {
            if let Some(seen) = waiter.latest()
                && seen.revision > revision
            {
                match seen.record {
                    Some(record) => (latest, revision) = (record, seen.revision),
                    None => return Ok(None), // deleted or purged meanwhile
                }
            }
            if latest.status.is_terminal() {
                return Ok(Some(latest));
            }
            tokio::select! {
                () = waiter.changed() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if waiter.covered() && self.is_connected() {
            return Ok(Some(latest));
        }
        // The watch was down during the wait and may have missed writes: answer what the
        // record says now, or 503, rather than wait on.
        drop(waiter);
        match tokio::time::timeout(DEADLINE_READ, self.record(id)).await {
            Ok(read) => Ok(read?.map(|(record, _)| record)),
            Err(elapsed) => Err(ApiError::unavailable_with(
                "the results watch is down and the record could not be read in time",
                elapsed,
            )),
        }
    }

    /// Cancels work that has not finished.
    /// - Queued work (or work between attempts, or whose attempt's lease has run out) is
    ///   marked `cancelled` and its message removed from the stream, so the cancel holds
    ///   however long the work waited, even after the record expires.
    /// - Running work: the worker that holds it is asked, by pod name over NATS, to abort
    ///   the handler; it records `cancelled` and terminates the message. When that worker
    ///   does not answer, the record asks instead (`cancel_requested`): the attempt's
    ///   heartbeat sees it and stops, or, if the attempt is gone, the next delivery
    ///   records `cancelled`. Never `cancelled` while a handler may still run.
    pub async fn cancel(&self, id: &WorkId) -> Result<Cancel, ApiError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut record, revision)) = self.record(id).await? else {
                return Err(ApiError::NotFound(id.to_string()));
            };
            if record.status == WorkStatus::Cancelled {
                // Again (a retry after a 503): make sure the message is gone.
                self.remove_or_keep_removing(id, &record).await?;
                return Ok(Cancel::Already(record));
            }
            if record.status.is_terminal() {
                return Err(finished(record.status));
            }
            if record.is_held(Utc::now()) {
                if let Some(worker) = record.worker.as_deref() {
                    // The wait for the worker's answer is taken first: an api pod with
                    // every wait taken answers 429 before it asks the worker anything.
                    let waiter = self.waiter(id)?;
                    if self.ask_to_cancel(worker, id).await? {
                        return self.cancelled_by_worker(id, waiter).await;
                    }
                }
                // Not confirmed by the holder: ask through the record.
                record.cancel_requested = true;
                match self.update(id, &record, revision).await? {
                    Some(_) => return Ok(Cancel::Requested(record)),
                    None => continue,
                }
            }
            let was_pending = record.status == WorkStatus::Pending;
            record
                .advance(WorkStatus::Cancelled, Utc::now())
                .map_err(|err| ApiError::Conflict {
                    code: "finished",
                    message: err.to_string(),
                })?;
            if self.update(id, &record, revision).await?.is_none() {
                continue;
            }
            self.remove_or_keep_removing(id, &record).await?;
            if was_pending {
                // A first attempt may have started unrecorded before the cancel; it
                // finds the record cancelled, or stops, within this limit.
                tokio::time::sleep(self.unrecorded_limit).await;
            }
            return Ok(Cancel::Done {
                record,
                by_worker: false,
            });
        }
        Err(ApiError::unavailable("the record kept changing; retry"))
    }

    /// After the holder confirmed it is aborting the work: its `cancelled` record.
    async fn cancelled_by_worker(&self, id: &WorkId, waiter: Waiter) -> Result<Cancel, ApiError> {
        match self.wait_with(waiter, id, CANCEL_WAIT).await? {
            Some(record) if record.status == WorkStatus::Cancelled => Ok(Cancel::Done {
                record,
                by_worker: true,
            }),
            // It finished in the same instant; its outcome stands.
            Some(record) if record.status.is_terminal() => Err(finished(record.status)),
            _ => Err(ApiError::unavailable(
                "the worker is cancelling the work; GET it in a moment",
            )),
        }
    }

    /// Compare-and-set of a record: `None` when another writer got there first.
    async fn update(
        &self,
        id: &WorkId,
        record: &WorkRecord,
        revision: u64,
    ) -> Result<Option<u64>, ApiError> {
        let value = record.to_json().into();
        match self
            .records
            .update(id.as_str(), value, revision, record.status)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(err) => Err(ApiError::unavailable_from(err)),
        }
    }

    /// Removes cancelled work's message, or answers why not (503) and keeps trying in the
    /// background: the `cancelled` record keeps workers from starting the work only
    /// while it lives, so the message must go before it expires, whether or not the
    /// client asks again.
    async fn remove_or_keep_removing(
        &self,
        id: &WorkId,
        record: &WorkRecord,
    ) -> Result<(), ApiError> {
        let Err(err) = self.remove_message(id, record).await else {
            return Ok(());
        };
        let (queue, id, record) = (self.clone(), id.clone(), record.clone());
        tokio::spawn(async move {
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times()
                .with_total_delay(Some(REMOVAL_RETRIES_FOR));
            let removal = || queue.remove_message(&id, &record);
            match removal.retry(backoff).await {
                Ok(()) => tracing::info!(%id, "the cancelled work's message is removed"),
                Err(err) => {
                    tracing::error!(%id, %err, "the cancelled work's message could not be removed")
                }
            }
        });
        Err(err)
    }

    /// Removes cancelled work's message from the stream, so it is never delivered: the
    /// `cancelled` record alone would be forgotten once it expires, and the work would
    /// then run. Only this record's generation is removed (a later resubmission of the
    /// same content is not). Failing that, the DELETE is answered 503 and its retry
    /// tries again. Both reads go to the stream's leader, as in [`Self::is_queued`].
    async fn remove_message(&self, id: &WorkId, record: &WorkRecord) -> Result<(), ApiError> {
        let subject = self.subject(id, &record.task, record.key.as_deref());
        let message = match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(err) => return Err(not_removed(err)),
        };
        let same_generation = serde_json::from_slice::<WorkMessage>(&message.payload)
            .is_ok_and(|work| work.created_at == record.created_at);
        if !same_generation {
            return Ok(());
        }
        match self.stream.delete_message(message.sequence).await {
            Ok(_) => Ok(()),
            // Acknowledged (and so removed) meanwhile by a worker that skipped it.
            Err(_) if !self.is_in_stream(message.sequence).await? => Ok(()),
            Err(err) => Err(not_removed(err)),
        }
    }

    /// Whether message `sequence` is still in the stream. Only the leader's "no message"
    /// says it is gone: a failed lookup (no leader during an election, say) is no answer,
    /// and taking it for one would answer `cancelled` while the message stays queued.
    async fn is_in_stream(&self, sequence: u64) -> Result<bool, ApiError> {
        match self.stream.get_raw_message(sequence).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(err) => Err(not_removed(err)),
        }
    }

    /// Asks `worker` to abort the running attempt of `id`: true if it confirmed that it
    /// runs the work and is stopping it. Any other answer, or none, is not a
    /// confirmation.
    async fn ask_to_cancel(&self, worker: &str, id: &WorkId) -> Result<bool, ApiError> {
        let request = peer_payload(&PeerRequest::Cancel { id: id.to_string() });
        let subject = self.names.peer_subject(worker);
        let answer =
            tokio::time::timeout(PEER_TIMEOUT, self.client.request(subject, request)).await;
        Ok(match answer {
            Ok(Ok(message)) => matches!(
                serde_json::from_slice(&message.payload),
                Ok(PeerReply::Cancel { cancelled: true })
            ),
            _ => false,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// What a DELETE did.
#[derive(Debug)]
pub enum Cancel {
    /// The work is `cancelled`; `by_worker` when its worker aborted it (and counted it).
    Done { record: WorkRecord, by_worker: bool },
    /// A running attempt was asked to stop through its record; it is still `working`.
    Requested(WorkRecord),
    /// It was cancelled before (this DELETE is a retry); nothing new happened.
    Already(WorkRecord),
}

fn not_removed(err: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::unavailable_with(
        format!("the work is cancelled but its message is not removed yet ({err}); DELETE again"),
        err,
    )
}

fn finished(status: WorkStatus) -> ApiError {
    ApiError::Conflict {
        code: "finished",
        message: format!("the work is already {}", status.as_str()),
    }
}

/// The message of a new submission, accepted now by `pod`.
fn new_message(id: &WorkId, work: &WorkSubmission, pod: &str) -> WorkMessage {
    WorkMessage {
        id: id.clone(),
        task: work.task().to_owned(),
        key: work.key.clone(),
        data: work.data.clone(),
        accepted_by: pod.to_owned(),
        created_at: Utc::now(),
    }
}

/// What the stream said of a publish.
struct Published {
    /// The stream already held a message of this id (and record generation).
    duplicate: bool,
}

/// The `Nats-Msg-Id` of work: its id and the revision of the record it was accepted under.
pub fn message_id(id: &WorkId, record_revision: u64) -> String {
    format!("{id}.{record_revision}")
}

/// Whether JetStream itself answered the publish with `code`.
fn has_code(err: &jetstream::context::PublishError, code: jetstream::ErrorCode) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|js_err| js_err.error_code() == code)
}

/// A publish refused because the stream hit `max_messages` (or its byte limit).
fn is_stream_full(err: &jetstream::context::PublishError) -> bool {
    has_code(err, jetstream::ErrorCode::STREAM_STORE_FAILED)
        || has_code(err, jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED)
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
