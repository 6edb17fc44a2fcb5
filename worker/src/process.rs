//! One delivery of one message, from `working` to its outcome.
//!
//! # Delivery contract
//! - At least once: a message is acked only after its outcome is in the results bucket,
//!   so a worker that dies mid-job leaves the message to be redelivered after `ackWait`.
//! - Idempotent results: a delivery whose record is already terminal (or cancelled) is
//!   acked and skipped; two workers racing on one record settle through compare-and-set,
//!   and the first terminal write wins.
//! - While the handler runs, its heartbeat sends an in-progress ack and renews the
//!   attempt's lease in the record, so `timeout` bounds one attempt, not the time spent
//!   queued. One attempt at a time: a delivery whose record shows another attempt's live
//!   lease starts nothing, and an attempt whose heartbeat cannot be proven for half of
//!   `ackWait` stops before the server may redeliver (module `hold`).
//! - A failed attempt naks with the pool's backoff; the last attempt, a permanent error,
//!   or a delivery after every attempt was used up copies the message to the dead-letter
//!   stream, records `failed` and terminates the message.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use workpool_core::WorkStatus;
use workpool_core::events::{WorkEvent, WorkEventKind};
use workpool_core::message::{RECORD_REVISION_HEADER, WorkMessage};
use workpool_runtime::events::PublishEvent;

use crate::Worker;
use crate::handlers::HandlerError;
use crate::hold::{Beat, Current, Hold, beat_interval};
use crate::records::{Begin, Settled};

/// Header of a dead letter: the error that ended the work.
pub const DEAD_LETTER_ERROR_HEADER: &str = "Workpool-Error";
/// Header of a dead letter: attempts made.
pub const DEAD_LETTER_ATTEMPTS_HEADER: &str = "Workpool-Attempts";

async fn acknowledge(message: &jetstream::Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        // The server redelivers an unacknowledged message; results stay idempotent.
        tracing::warn!(%err, "acknowledgement not sent");
    }
}

fn heartbeat(
    message: Arc<jetstream::Message>,
    every: std::time::Duration,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(err) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(%err, "heartbeat not sent");
            }
        }
    }))
}

impl Worker {
    /// Handles one delivered message to its end. Never panics and never drops a message
    /// silently: every path acks, naks or terminates it (or leaves it to redelivery).
    pub(crate) async fn process(
        self: Arc<Self>,
        message: jetstream::Message,
        abort: CancellationToken,
    ) {
        let work: WorkMessage = match serde_json::from_slice(&message.payload) {
            Ok(work) => work,
            Err(err) => return self.dead_letter_unreadable(message, &err.to_string()).await,
        };
        let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
        // JetStream's delivery count is the attempt number (each retry is a redelivery).
        let span = tracing::info_span!("work", id = %work.id, pool = %self.config.names.pool, task = %work.task, attempt = delivered);
        self.process_work(message, work, delivered, abort)
            .instrument(span)
            .await;
    }

    async fn process_work(
        &self,
        message: jetstream::Message,
        work: WorkMessage,
        delivered: i64,
        abort: CancellationToken,
    ) {
        let message = Arc::new(message);
        let hint = (delivered == 1)
            .then(|| {
                message
                    .headers
                    .as_ref()?
                    .get(RECORD_REVISION_HEADER)?
                    .as_str()
                    .parse()
                    .ok()
            })
            .flatten();
        let max_attempts = self.config.spec.worker.max_attempts;
        let ack_wait = self.config.spec.worker.ack_wait;
        // Registered before the record says `working` and kept until the outcome is
        // written, so a peer's cancel always finds work this worker has marked running.
        let Some(running) = self.running.start(work.id.as_str()) else {
            // This worker still runs an earlier delivery of the same work.
            let until = Utc::now() + chrono::Duration::from_std(ack_wait).unwrap_or_default();
            return self.wait_for_holder(&message, &work, until, &abort).await;
        };
        // The first write below proves this in-progress ack reached the server: from
        // here it waits a full ackWait before it may hand the message to anyone else.
        let proven_at = tokio::time::Instant::now();
        acknowledge(&message, AckKind::Progress).await;
        let (record, revision) = match self.records.begin(&work, hint, max_attempts).await {
            Ok(Begin::Run { record, revision }) => (record, revision),
            Ok(Begin::Skip(status)) => {
                tracing::debug!(status = status.as_str(), "already finished; skipping");
                self.metrics.skipped(&work.task);
                return acknowledge(&message, AckKind::Ack).await;
            }
            Ok(skipped @ (Begin::Stale | Begin::Expired)) => {
                let why = match skipped {
                    Begin::Stale => "a later submission of the same id owns the record",
                    _ => "the work finished and its record expired",
                };
                tracing::info!(why, "skipping a message");
                self.metrics.skipped(&work.task);
                return acknowledge(&message, AckKind::Ack).await;
            }
            Ok(Begin::Held { until }) => {
                drop(running);
                return self.wait_for_holder(&message, &work, until, &abort).await;
            }
            Ok(Begin::Exhausted { record, revision }) => {
                let error = format!(
                    "attempt {} of {max_attempts} never finished (its worker was lost); no attempts left",
                    record.attempts
                );
                return self
                    .fail_for_good(&message, &work, Current { record, revision }, error)
                    .await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot record the start of the work; it will be redelivered");
                return acknowledge(
                    &message,
                    AckKind::Nak(Some(self.config.spec.worker.backoff_after(1))),
                )
                .await;
            }
        };
        let attempt = record.attempts;
        let beat = Beat {
            id: work.id.clone(),
            records: self.records.clone(),
            message: message.clone(),
            ack_wait,
            every: beat_interval(ack_wait),
            proven_at,
        };
        let hold = Hold::start(beat, record, revision);
        self.metrics.started(&work.task);
        self.event(WorkEventKind::Started, &work, attempt, None)
            .await;

        self.metrics.in_flight.inc();
        let started = Instant::now();
        let timeout = self.config.spec.worker.timeout;
        // The select only decides; acting on it comes after, once the handler's future
        // (and with it an exec child) is gone, so no outcome is written while it runs.
        let stopped = tokio::select! {
            outcome = tokio::time::timeout(timeout, self.handler.run(&work, attempt)) => Stop::Ran(outcome),
            () = abort.cancelled() => Stop::Shutdown,
            () = hold.lost() => Stop::Lost,
            () = running.cancelled() => Stop::Cancelled("cancelled while running"),
            () = hold.cancel_requested() => Stop::Cancelled("cancel requested through the record; stopped"),
        };
        let outcome = match stopped {
            Stop::Ran(outcome) => Some(outcome),
            Stop::Shutdown => None,
            // The message stays unacknowledged: whoever holds it next decides.
            Stop::Lost => {
                self.metrics.in_flight.dec();
                return;
            }
            Stop::Cancelled(why) => {
                self.metrics.in_flight.dec();
                tracing::info!(attempt, why);
                return self
                    .finish(&message, &work, hold.current(), Outcome::Cancelled)
                    .await;
            }
        };
        self.metrics
            .handler_ran(&work.task, started.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
        let current = hold.current();

        let error = match outcome {
            None => {
                tracing::info!(attempt, "shutting down mid-attempt; handing the work back");
                return acknowledge(&message, AckKind::Nak(None)).await;
            }
            Some(Ok(Ok(result))) => {
                return self.complete(&message, &work, current, result).await;
            }
            Some(Ok(Err(HandlerError::Permanent(error)))) => {
                return self.fail_for_good(&message, &work, current, error).await;
            }
            Some(Ok(Err(HandlerError::Retryable(error)))) => error,
            Some(Err(_elapsed)) => format!("attempt timed out after {}", humantime_like(timeout)),
        };
        if attempt >= max_attempts {
            return self.fail_for_good(&message, &work, current, error).await;
        }
        // Between attempts the work is not running here: a cancel now goes through the
        // record (the api marks it cancelled, and the next delivery is skipped).
        drop(hold);
        drop(running);
        self.retry_later(&message, &work, current, attempt, error, &abort)
            .await;
    }

    /// Records a failed attempt (releasing its hold) and hands the message back after
    /// the pool's backoff.
    async fn retry_later(
        &self,
        message: &Arc<jetstream::Message>,
        work: &WorkMessage,
        current: Current,
        attempt: u32,
        error: String,
        abort: &CancellationToken,
    ) {
        let delay = self.config.spec.worker.backoff_after(attempt);
        tracing::info!(attempt, %error, retry_in = ?delay, "attempt failed; will retry");
        // Keyed work keeps the message (the heartbeat keeps it ours) through the backoff.
        let _heartbeat = heartbeat(
            message.clone(),
            self.config.spec.worker.heartbeat_interval(),
        );
        match self
            .records
            .settle(
                &work.id,
                current.record,
                current.revision,
                WorkStatus::Working,
                None,
                Some(error.clone()),
            )
            .await
        {
            // Another attempt holds the work now: leave the message to it.
            Ok(Settled::Lost) => return,
            Ok(_) => {}
            // The retry is recorded best-effort; the nak is what schedules it.
            Err(err) => tracing::warn!(%err, "could not record the failed attempt"),
        }
        self.metrics.retried(&work.task);
        self.event(WorkEventKind::Retried, work, attempt, Some(error))
            .await;
        if work.key.is_some() {
            // Keyed work keeps its key's order: the message is held through the backoff
            // and then handed straight back, so it is its partition's next delivery. A
            // nak with a delay would free the partition and let the key's later work
            // overtake it.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = abort.cancelled() => {}
            }
            return acknowledge(message, AckKind::Nak(None)).await;
        }
        acknowledge(message, AckKind::Nak(Some(delay))).await;
    }

    /// Another attempt holds the work until `until`; start nothing before then. Keyed
    /// work keeps its message (and so its partition) meanwhile, so the key's next job
    /// cannot start while the holder may still run; unkeyed work comes back later.
    async fn wait_for_holder(
        &self,
        message: &Arc<jetstream::Message>,
        work: &WorkMessage,
        until: chrono::DateTime<Utc>,
        abort: &CancellationToken,
    ) {
        let wait = (until - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_add(std::time::Duration::from_millis(50));
        tracing::info!(?wait, "another attempt holds the work; waiting for it");
        if work.key.is_none() {
            return acknowledge(message, AckKind::Nak(Some(wait))).await;
        }
        let _heartbeat = heartbeat(
            message.clone(),
            self.config.spec.worker.heartbeat_interval(),
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = abort.cancelled() => {}
        }
        acknowledge(message, AckKind::Nak(None)).await;
    }

    async fn complete(
        &self,
        message: &jetstream::Message,
        work: &WorkMessage,
        current: Current,
        result: serde_json::Value,
    ) {
        let outcome = Outcome::Worked(result);
        self.finish(message, work, current, outcome).await;
    }

    async fn fail_for_good(
        &self,
        message: &jetstream::Message,
        work: &WorkMessage,
        current: Current,
        error: String,
    ) {
        tracing::warn!(attempt = current.record.attempts, %error, "work failed for good; dead-lettering it");
        // Dead letter first: if we die before recording `failed`, the redelivery finds the
        // work unfinished and dead-letters it again (deduplicated by id).
        let subject = self.config.names.dead_letter_subject(&work.id);
        let payload = message.payload.clone();
        let stored = self.publish_dead_letter(
            subject,
            work.id.as_str(),
            payload,
            &error,
            current.record.attempts,
        );
        if let Err(err) = stored.await {
            tracing::warn!(%err, "dead letter not stored; the work will be redelivered");
            let retry_in = self.config.spec.worker.backoff_after(1);
            return acknowledge(message, AckKind::Nak(Some(retry_in))).await;
        }
        self.finish(message, work, current, Outcome::Failed(error))
            .await;
    }

    /// Writes the terminal record, then acks (worked) or terminates (failed) the message.
    /// If the write fails the message goes back to the queue; if another worker finished
    /// first, its outcome stands and ours is dropped; if another attempt holds the work
    /// now, the message is left to it.
    async fn finish(
        &self,
        message: &jetstream::Message,
        work: &WorkMessage,
        current: Current,
        outcome: Outcome,
    ) {
        let Current { record, revision } = current;
        let attempt = record.attempts;
        let (status, result, error, event, ack) = match outcome {
            Outcome::Worked(result) => (
                WorkStatus::Worked,
                Some(result),
                None,
                WorkEventKind::Worked,
                AckKind::Ack,
            ),
            Outcome::Failed(error) => (
                WorkStatus::Failed,
                None,
                Some(error),
                WorkEventKind::Failed,
                AckKind::Term,
            ),
            // Terminated, not redelivered: nobody wants this work any more.
            Outcome::Cancelled => (
                WorkStatus::Cancelled,
                None,
                Some("cancelled while running".to_owned()),
                WorkEventKind::Cancelled,
                AckKind::Term,
            ),
        };
        match self
            .records
            .settle(&work.id, record, revision, status, result, error.clone())
            .await
        {
            Ok(Settled::Written) => {
                let latency = seconds_since(work);
                // Debug: at thousands of items a second, a line each is for debugging.
                tracing::debug!(status = status.as_str(), latency, "work finished");
                match status {
                    WorkStatus::Worked => self.metrics.worked(&work.task, latency),
                    WorkStatus::Cancelled => self.metrics.cancelled(&work.task),
                    _ => self.metrics.failed(&work.task, latency),
                }
                self.event(event, work, attempt, error).await;
            }
            Ok(Settled::AlreadyFinished(status)) => {
                tracing::info!(
                    status = status.as_str(),
                    "another worker finished this work first"
                );
            }
            Ok(Settled::Lost) => {
                tracing::warn!("another attempt took over this work; our outcome is dropped");
                return;
            }
            Err(err) => {
                tracing::warn!(%err, "could not record the outcome; the work will be redelivered");
                return acknowledge(message, AckKind::Nak(None)).await;
            }
        }
        acknowledge(message, ack).await;
    }

    async fn dead_letter_unreadable(&self, message: jetstream::Message, error: &str) {
        tracing::error!(subject = %message.subject, %error, "unreadable work message; dead-lettering it");
        let subject = self.config.names.dead_letter_unreadable_subject();
        let id = message
            .info()
            .map(|info| info.stream_sequence.to_string())
            .unwrap_or_default();
        match self
            .publish_dead_letter(subject, &id, message.payload.clone(), error, 0)
            .await
        {
            Ok(()) => acknowledge(&message, AckKind::Term).await,
            Err(err) => {
                tracing::warn!(%err, "dead letter not stored; the message will be redelivered")
            }
        }
    }

    async fn publish_dead_letter(
        &self,
        subject: String,
        id: &str,
        payload: bytes::Bytes,
        error: &str,
        attempts: u32,
    ) -> Result<(), async_nats::Error> {
        // Header values cannot hold line breaks.
        let error_header = error.replace(['\r', '\n'], " ");
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id)
            .header(DEAD_LETTER_ERROR_HEADER, error_header.as_str())
            .header(DEAD_LETTER_ATTEMPTS_HEADER, attempts.to_string().as_str());
        self.js.send_publish(subject, publish).await?.await?;
        Ok(())
    }

    async fn event(
        &self,
        kind: WorkEventKind,
        work: &WorkMessage,
        attempt: u32,
        error: Option<String>,
    ) {
        WorkEvent {
            event: kind,
            id: work.id.clone(),
            task: work.task.clone(),
            by: self.config.pod.clone(),
            attempt,
            error,
            at: Utc::now(),
        }
        .publish(&self.client, &self.config.names)
        .await;
    }
}

/// Why an attempt's handler stopped.
enum Stop<T> {
    Ran(T),
    Shutdown,
    Lost,
    Cancelled(&'static str),
}

/// How an attempt ended for good.
enum Outcome {
    Worked(serde_json::Value),
    Failed(String),
    Cancelled,
}

fn seconds_since(work: &WorkMessage) -> f64 {
    (Utc::now() - work.created_at).num_milliseconds().max(0) as f64 / 1000.0
}

fn humantime_like(duration: std::time::Duration) -> String {
    format!("{:.3}s", duration.as_secs_f64()).replace(".000s", "s")
}
