//! The api's side of the queue: records in the results bucket and messages on the work
//! stream. The api binds to objects the operator provisioned; it never creates them.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv, stream::LastRawMessageErrorKind};
use async_nats::{Client, connection::State};
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use workpool_core::cluster::{PeerReply, PeerRequest};
use workpool_core::expiry::is_expired;
use workpool_core::message::{
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, RECORD_REVISION_HEADER, SubmissionError, TraceContext,
    WorkMessage, WorkSubmission,
};
use workpool_core::peer_auth::PeerKey;
use workpool_core::unrecorded::unrecorded_run_limit;
use workpool_core::webhook::WebhookSpec;
use workpool_core::{PoolNames, PoolSpec, WorkId, WorkRecord, WorkStatus};
use workpool_runtime::publish_errors::{
    has_code, is_sequence_check_failed, is_stream_full, is_subject_taken,
};
use workpool_runtime::records::RecordStore;

use crate::cluster::peer_payload;
use crate::dead_letters::DeadLetters;
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
    /// When terminal records expire for clients (`resultTTL`).
    result_ttl: Duration,
    /// The callback URLs submissions may name.
    webhooks: WebhookSpec,
    /// `queue.maxPayloadBytes`, the limit a 413 names.
    max_message_bytes: usize,
    /// The key peer requests are signed with (none: workers are not asked).
    peer_key: Option<PeerKey>,
    /// How long an attempt may run before recording `working`
    /// ([`workpool_core::unrecorded`]): a cancel of `pending` work waits it out.
    unrecorded_limit: Duration,
    waiters: Waiters,
    dead_letters: DeadLetters,
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
    #[error("getting stream {stream}: {source}")]
    DeadLetters {
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
    Existing(Box<WorkRecord>),
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
        peer_key: Option<PeerKey>,
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
        let dead_letters =
            DeadLetters::bind(&js, &names)
                .await
                .map_err(|source| BindError::DeadLetters {
                    stream: names.dead_letter_stream(),
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
            result_ttl: spec.result_ttl,
            webhooks: spec.webhooks.clone(),
            peer_key,
            max_message_bytes: spec.queue.max_payload_bytes,
            unrecorded_limit: unrecorded_run_limit(spec.worker.ack_wait),
            waiters,
            dead_letters,
        })
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    pub(crate) fn kv(&self) -> &kv::Store {
        &self.kv
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

    /// Where `message` goes: its queue, or, delayed, where it waits for its time.
    fn subject(&self, message: &WorkMessage) -> String {
        match message.run_at {
            Some(_) => self.names.delayed_subject(&message.task, &message.id),
            None => self.names.queue_subject(message, self.partitions),
        }
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// The work stream.
    pub(crate) fn work_stream(&self) -> &jetstream::stream::Stream {
        &self.stream
    }

    /// The stream of the results bucket: every record write.
    pub(crate) fn records_stream(&self) -> &jetstream::stream::Stream {
        &self.kv.stream
    }

    /// When terminal records expire for clients.
    pub(crate) fn result_ttl(&self) -> Duration {
        self.result_ttl
    }

    /// Queues new work, or answers what is known of the same work: one JetStream write,
    /// the message, which is the work's `pending` state until a worker writes a record.
    /// `202` comes only after the stream's ack.
    pub async fn submit(
        &self,
        id: &WorkId,
        work: &WorkSubmission,
        accepted: Accepted<'_>,
    ) -> Result<Submitted, ApiError> {
        self.ensure_connected()?;
        if let Some(url) = &work.callback_url {
            self.webhooks
                .allow(url)
                .map_err(|err| ApiError::bad_request("callback_not_allowed", err.to_string()))?;
        }
        let message = new_message(id, work, accepted, self.result_ttl)?;
        for _ in 0..CAS_ATTEMPTS {
            let stored = self.stored(id).await?;
            if let Some(record) = self.live(&stored)
                && !self.is_stranded(record, id).await?
            {
                return Ok(Submitted::Existing(Box::new(record.clone())));
            }
            match self.publish(&message, stored.revision).await? {
                Published::New => return Ok(Submitted::Accepted),
                Published::Duplicate { sequence } => {
                    // A concurrent POST (or a retried publish) queued it first.
                    if let Some(queued) = self.message_at(sequence).await? {
                        return Ok(Submitted::Existing(Box::new(queued.pending_record())));
                    }
                    // Taken from there, perhaps onto another subject: put aside by its
                    // group's limits, it waits on the delayed one.
                    if let Some(queued) = self.queued(id, &stored).await? {
                        return Ok(Submitted::Existing(Box::new(queued.pending_record())));
                    }
                }
                Published::SubjectTaken => {
                    if let Some(queued) = self.queued(id, &stored).await? {
                        return Ok(Submitted::Existing(Box::new(queued.pending_record())));
                    }
                }
            }
            // Taken by a worker meanwhile, or a finished message removed: read again.
        }
        Err(ApiError::unavailable("the work kept changing; retry"))
    }

    /// A `pending` record whose message is not queued: written by an api of an earlier
    /// version (which recorded `pending` before publishing) that died between the two.
    /// Its work is queued again on top of it.
    async fn is_stranded(&self, record: &WorkRecord, id: &WorkId) -> Result<bool, ApiError> {
        Ok(record.status == WorkStatus::Pending && self.queued_message(id).await?.is_none())
    }

    /// The work of `id` waiting in the stream, if any. A message the bucket's record
    /// shows finished (a worker died between writing the outcome and acking) or
    /// superseded is no queued work: it is removed, so the same content can be queued
    /// again, as its ack would have done.
    pub(crate) async fn queued(
        &self,
        id: &WorkId,
        stored: &Stored,
    ) -> Result<Option<WorkMessage>, ApiError> {
        let Some((message, sequence)) = self.queued_message(id).await? else {
            return Ok(None);
        };
        if !is_left_over(stored, &message) {
            return Ok(Some(message));
        }
        match self.stream.delete_message(sequence).await {
            Ok(_) => Ok(None),
            Err(_) if !self.is_in_stream(sequence).await? => Ok(None),
            Err(err) => Err(ApiError::unavailable_from(err)),
        }
    }

    /// The last message queued for `id` on any of its subjects, and its sequence. Asked of
    /// the stream's leader, not with a direct get: any replica answers those, and a
    /// lagging one would call queued work missing.
    async fn queued_message(&self, id: &WorkId) -> Result<Option<(WorkMessage, u64)>, ApiError> {
        let subject = self.names.any_work_subject(id);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(raw) => Ok(Some((read_message(&raw.payload)?, raw.sequence))),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(ApiError::unavailable_from(err)),
        }
    }

    /// The message at `sequence`, if it is still in the stream (the leader says).
    async fn message_at(&self, sequence: u64) -> Result<Option<WorkMessage>, ApiError> {
        match self.stream.get_raw_message(sequence).await {
            Ok(raw) => Ok(Some(read_message(&raw.payload)?)),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(ApiError::unavailable_from(err)),
        }
    }

    /// Publishes `message`, accepted on the bucket's `revision` for its id.
    pub(crate) async fn publish(
        &self,
        message: &WorkMessage,
        revision: u64,
    ) -> Result<Published, ApiError> {
        let subject = self.subject(message);
        // The message id names what the work was accepted on, not only its content: once
        // a record has expired, the same content is a new submission and must not be
        // deduplicated against the old message (docs/reliability.md).
        // Refused if the work has a message on any of its subjects (queued, keyed, or
        // delayed: put aside, or to run later): the same work is never in the stream
        // twice, and no lookup before the publish is needed to know it.
        let publish = jetstream::message::PublishMessage::build()
            .payload(message.to_json().into())
            .message_id(message_id(&message.id, revision).as_str())
            .header(RECORD_REVISION_HEADER, revision.to_string().as_str())
            .expected_last_subject_sequence(0)
            .header(
                EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                self.names.any_work_subject(&message.id).as_str(),
            );
        let ack = match self.js.send_publish(subject, publish).await {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        match ack {
            Ok(ack) if ack.duplicate => Ok(Published::Duplicate {
                sequence: ack.sequence,
            }),
            Ok(_) => Ok(Published::New),
            Err(err) if is_subject_taken(&err) || is_sequence_check_failed(&err) => {
                Ok(Published::SubjectTaken)
            }
            Err(err) => Err(self.publish_error(err)),
        }
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

    /// What the bucket holds for `id`.
    pub(crate) async fn stored(&self, id: &WorkId) -> Result<Stored, ApiError> {
        self.ensure_connected()?;
        let entry = self
            .kv
            .entry(id.as_str())
            .await
            .map_err(ApiError::unavailable_from)?;
        let Some(entry) = entry else {
            return Ok(Stored::default());
        };
        let record = match entry.operation {
            kv::Operation::Put => Some(WorkRecord::from_json(&entry.value).map_err(|err| {
                ApiError::unavailable_with(format!("unreadable record: {err}"), err)
            })?),
            // Deleted, or the marker the server leaves where a record ran out.
            _ => None,
        };
        Ok(Stored {
            record,
            revision: entry.revision,
        })
    }

    /// The stored record, unless it has expired ([`is_expired`]).
    pub(crate) fn live<'a>(&self, stored: &'a Stored) -> Option<&'a WorkRecord> {
        stored
            .record
            .as_ref()
            .filter(|record| !is_expired(record, self.result_ttl, Utc::now()))
    }

    /// The work's state now, and the bucket revision it stands on: its live record, or
    /// `pending` while its message is queued and no worker has written a record yet.
    pub async fn record(&self, id: &WorkId) -> Result<Option<(WorkRecord, u64)>, ApiError> {
        let stored = self.stored(id).await?;
        if let Some(record) = self.live(&stored) {
            return Ok(Some((record.clone(), stored.revision)));
        }
        if let Some((message, _)) = self.queued_message(id).await?
            && !is_left_over(&stored, &message)
        {
            return Ok(Some((message.pending_record(), stored.revision)));
        }
        // No message: a worker may have written the outcome and acked between the two
        // reads, so the bucket has the last word.
        let stored = self.stored(id).await?;
        Ok(self
            .live(&stored)
            .map(|record| (record.clone(), stored.revision)))
    }

    /// The record once it is terminal, or as it stands at the deadline. Waits on the
    /// process's one watch of the bucket, not a watch (a consumer) of its own. Work of
    /// another `tenant` than the caller's is none, as work that does not exist.
    pub async fn wait_for_end(
        &self,
        id: &WorkId,
        wait: Duration,
        tenant: Option<&str>,
    ) -> Result<Option<WorkRecord>, ApiError> {
        // Registered before the read, so a write between the two is still delivered.
        let waiter = self.waiter(id)?;
        self.wait_with(waiter, id, wait, tenant).await
    }

    /// One of this api pod's bounded waits on `id`'s record (429 when they are all taken).
    pub(crate) fn waiter(&self, id: &WorkId) -> Result<Waiter, ApiError> {
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
        tenant: Option<&str>,
    ) -> Result<Option<WorkRecord>, ApiError> {
        /// Bounds the read at the deadline, so an answer never waits long past it.
        const DEADLINE_READ: Duration = Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + wait;
        let Some((mut latest, mut revision)) = self.record(id).await? else {
            return Ok(None);
        };
        // A work's tenant never changes (its id is derived within it): one look decides.
        if latest.tenant.as_deref() != tenant {
            return Ok(None);
        }
        loop {
            if let Some(seen) = waiter.latest()
                && seen.revision > revision
            {
                match seen.record {
                    Some(record) => (latest, revision) = (record, seen.revision),
                    // Deleted, or an earlier generation's record ran out under queued
                    // work: ask again.
                    None => match self.record(id).await? {
                        Some((record, read)) => {
                            (latest, revision) = (record, read.max(seen.revision))
                        }
                        None => return Ok(None),
                    },
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
    ///
    /// Work of another `tenant` than the caller's is `404`, as work that does not exist.
    pub async fn cancel(&self, id: &WorkId, tenant: Option<&str>) -> Result<Cancel, ApiError> {
        for _ in 0..CAS_ATTEMPTS {
            let stored = self.stored(id).await?;
            let (mut record, revision) = match self.live(&stored) {
                Some(record) => (record.clone(), stored.revision),
                // Queued, with no record yet: the cancel is the first write.
                None => match self.queued(id, &stored).await? {
                    Some(message) => (message.pending_record(), stored.revision),
                    None => return Err(ApiError::NotFound(id.to_string())),
                },
            };
            if record.tenant.as_deref() != tenant {
                return Err(ApiError::NotFound(id.to_string()));
            }
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
                        return self.cancelled_by_worker(id, waiter, tenant).await;
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
            if was_pending && record.key.is_none() {
                // A first attempt may have started unrecorded before the cancel; it
                // finds the record cancelled, or stops, within this limit. (Keyed work
                // records its start first: the cancel won, so none runs.)
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
    async fn cancelled_by_worker(
        &self,
        id: &WorkId,
        waiter: Waiter,
        tenant: Option<&str>,
    ) -> Result<Cancel, ApiError> {
        match self.wait_with(waiter, id, CANCEL_WAIT, tenant).await? {
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
            .update(id.as_str(), value, revision, record)
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
        // Queued or delayed: wherever its message waits.
        let subject = self.names.any_work_subject(id);
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
        let cancel = PeerRequest::Cancel { id: id.to_string() };
        let Some(request) = peer_payload(self.peer_key.as_ref(), &cancel) else {
            return Ok(false);
        };
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

/// How a submission came: the api pod that accepts it, the tenant it is for, and the
/// trace it was sent in.
#[derive(Debug, Clone, Copy)]
pub struct Accepted<'a> {
    pub pod: &'a str,
    pub tenant: Option<&'a str>,
    pub trace: Option<&'a TraceContext>,
}

/// The message of a new submission, accepted now; `400` for a `ttl` over the pool's
/// `result_ttl` or a delay too far ahead.
fn new_message(
    id: &WorkId,
    work: &WorkSubmission,
    accepted: Accepted<'_>,
    result_ttl: Duration,
) -> Result<WorkMessage, ApiError> {
    let invalid = |err: SubmissionError| ApiError::bad_request("invalid_work", err.to_string());
    let now = Utc::now();
    Ok(WorkMessage {
        id: id.clone(),
        task: work.task().to_owned(),
        key: work.key.clone(),
        data: work.data.clone(),
        accepted_by: accepted.pod.to_owned(),
        created_at: now,
        tenant: accepted.tenant.map(str::to_owned),
        ttl: work.ttl_within(result_ttl).map_err(invalid)?,
        run_at: work.not_before(now).map_err(invalid)?,
        priority: work.priority.unwrap_or_default(),
        callback_url: work.callback_url.clone(),
        group: work.group.clone(),
        parked: 0,
        trace: accepted.trace.cloned(),
    })
}

/// What the stream said of a publish.
pub(crate) enum Published {
    /// Stored: the work is queued.
    New,
    /// The stream holds a message of this id accepted on the same revision already, at
    /// `sequence` (or held one, in its dedupe window).
    Duplicate { sequence: u64 },
    /// A subject of the work holds a message already: work of this id is queued or
    /// delayed (put aside), or a finished message of it was never acked.
    SubjectTaken,
}

/// What the results bucket holds for an id.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// The record, if the latest entry is one (not a delete or an expiry marker).
    pub(crate) record: Option<WorkRecord>,
    /// The revision a write compares against: that entry's, or 0 for none.
    pub(crate) revision: u64,
}

/// Whether `message` is finished or superseded work: the bucket holds a record of its
/// generation or a later one (a record's `created_at` is its message's). Only a
/// terminal record can be that and not live.
fn is_left_over(stored: &Stored, message: &WorkMessage) -> bool {
    stored
        .record
        .as_ref()
        .is_some_and(|record| record.created_at >= message.created_at)
}

fn read_message(payload: &[u8]) -> Result<WorkMessage, ApiError> {
    serde_json::from_slice(payload)
        .map_err(|err| ApiError::unavailable_with(format!("unreadable work message: {err}"), err))
}

/// The `Nats-Msg-Id` of work: its id and the bucket revision it was accepted on.
pub fn message_id(id: &WorkId, revision: u64) -> String {
    format!("{id}.{revision}")
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
