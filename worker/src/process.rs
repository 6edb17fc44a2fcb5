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
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use workpool_core::WorkStatus;
use workpool_core::events::{WorkEvent, WorkEventKind};
use workpool_core::message::{RECORD_REVISION_HEADER, TraceContext, WorkMessage};
use workpool_core::spec::WorkerSpec;
use workpool_core::unrecorded;
use workpool_runtime::events::PublishEvent;

use crate::Worker;
use crate::cluster::RunningGuard;
use crate::handlers::HandlerError;
use crate::hold::{Beat, Current, Hold, beat_interval, fence};
use crate::records::{Begin, RecordError, Settled};
use crate::spans::AttemptSpan;

use workpool_core::message::{DEAD_LETTER_ATTEMPTS_HEADER, DEAD_LETTER_ERROR_HEADER};

pub(crate) async fn acknowledge(message: &jetstream::Message, kind: AckKind) {
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
        pulled_at: tokio::time::Instant,
        abort: CancellationToken,
    ) {
        let work: WorkMessage = match serde_json::from_slice(&message.payload) {
            Ok(work) => work,
            Err(err) => return self.dead_letter_unreadable(message, &err.to_string()).await,
        };
        let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
        crate::spans::queue_wait(&message, &work, &self.config.names);
        // JetStream's delivery count is the attempt number (each retry is a redelivery).
        let span = tracing::info_span!("work", id = %work.id, pool = %self.config.names.pool, task = %work.task, attempt = delivered);
        async {
            let crate::groups::Admission::Run(slot) = self.admit(&message, &work).await else {
                return;
            };
            self.process_work(message, work, delivered, pulled_at, abort)
                .await;
            if let Some(slot) = slot {
                self.release(slot).await;
            }
        }
        .instrument(span)
        .await;
    }

    async fn process_work(
        &self,
        message: jetstream::Message,
        work: WorkMessage,
        delivered: i64,
        pulled_at: tokio::time::Instant,
        abort: CancellationToken,
    ) {
        let message = Arc::new(message);
        let spec = &self.config.spec.worker;
        // Registered before the record says `working` and kept until the outcome is
        // written, so a peer's cancel always finds work this worker has marked running.
        let Some(running) = self.running.start(work.id.as_str()) else {
            // This worker still runs an earlier delivery of the same work.
            let until = self.records.lease_from_now();
            return self.wait_for_holder(&message, &work, until, &abort).await;
        };
        // Work put aside by its group may have a record of earlier attempts: read it.
        let hint = revision_hint(message.headers.as_ref(), delivered).filter(|_| work.parked == 0);
        let ack_wait = spec.ack_wait;
        if let Some(revision) = hint
            && unrecorded::may_start_unrecorded(work.key.is_some(), pulled_at.elapsed(), ack_wait)
        {
            // Fresh work starts at once; the hold records `working` if it runs on.
            let current = Current {
                record: self.records.first_attempt(&work),
                revision,
            };
            let proof = Proof {
                first_beat_at: pulled_at + unrecorded::first_record_after(ack_wait),
                first_fence_at: pulled_at + unrecorded::unrecorded_run_limit(ack_wait),
            };
            return self
                .attempt(&message, &work, current, running, proof, &abort)
                .await;
        }
        // The first write below proves this in-progress ack reached the server: from
        // here it waits a full ackWait before it may hand the message to anyone else.
        let proven_at = tokio::time::Instant::now();
        acknowledge(&message, AckKind::Progress).await;
        let begun = self.records.begin(&work, hint, spec.max_attempts).await;
        let current = match start(begun, spec) {
            Start::Run(current) => current,
            Start::Skip(skipped) => return self.skip(&message, &work, skipped).await,
            Start::WaitForHolder { until } => {
                drop(running);
                return self.wait_for_holder(&message, &work, until, &abort).await;
            }
            Start::FailForGood { current, error } => {
                return self.fail_for_good(&message, &work, current, error).await;
            }
            Start::Redeliver { err, after } => {
                tracing::warn!(%err, "cannot record the start of the work; it will be redelivered");
                return acknowledge(&message, AckKind::Nak(Some(after))).await;
            }
        };
        let proof = Proof {
            first_beat_at: proven_at + beat_interval(ack_wait),
            first_fence_at: proven_at + fence(ack_wait),
        };
        self.attempt(&message, &work, current, running, proof, &abort)
            .await;
    }

    /// Runs the attempt `current` shows, holding the work meanwhile, and acts on how it
    /// ended.
    async fn attempt(
        &self,
        message: &Arc<jetstream::Message>,
        work: &WorkMessage,
        current: Current,
        running: RunningGuard<'_>,
        proof: Proof,
        abort: &CancellationToken,
    ) {
        let attempt = current.record.attempts;
        let hold = self.hold(work, message, current, proof);
        self.metrics.started(&work.task);
        self.event(WorkEventKind::Started, work, attempt, None)
            .await;
        let span = AttemptSpan::start(message, work, attempt, &self.config.names);
        let stopped = self
            .run_attempt(work, attempt, &hold, &running, abort, span.trace())
            .await;
        let spec = &self.config.spec.worker;
        let verdict = verdict(stopped, spec.timeout);
        let (outcome, error) = verdict.traced();
        span.end(outcome, error);
        match verdict {
            // The message stays unacknowledged: whoever holds it next decides.
            Verdict::Lost => {}
            Verdict::Cancelled(why) => {
                tracing::info!(attempt, why);
                self.finish(message, work, hold.current(), Outcome::Cancelled)
                    .await;
            }
            Verdict::HandBack => {
                tracing::info!(attempt, "shutting down mid-attempt; handing the work back");
                acknowledge(message, AckKind::Nak(None)).await;
            }
            Verdict::Worked(result) => {
                self.complete(message, work, hold.current(), result).await;
            }
            Verdict::FailedForGood(error) => {
                self.fail_for_good(message, work, hold.current(), error)
                    .await;
            }
            Verdict::Failed(error) => match retry_plan(attempt, work.key.is_some(), spec) {
                Retry::FailForGood => {
                    self.fail_for_good(message, work, hold.current(), error)
                        .await;
                }
                Retry::Later(later) => {
                    let current = hold.current();
                    // Between attempts the work is not running here: a cancel now goes
                    // through the record (the api marks it cancelled, and the next
                    // delivery is skipped).
                    drop(hold);
                    drop(running);
                    self.retry_later(message, work, current, error, later, abort)
                        .await;
                }
            },
        }
    }

    /// Acks a delivery that runs nothing.
    async fn skip(&self, message: &jetstream::Message, work: &WorkMessage, skipped: Skipped) {
        match skipped {
            Skipped::Finished(status) => {
                tracing::debug!(status = status.as_str(), "already finished; skipping");
            }
            Skipped::Stale => {
                tracing::info!(why = skipped.why(), "skipping a message");
            }
        }
        self.metrics.skipped(&work.task);
        acknowledge(message, AckKind::Ack).await;
    }

    /// Holds the attempt's message and record (the heartbeat) while it runs.
    fn hold(
        &self,
        work: &WorkMessage,
        message: &Arc<jetstream::Message>,
        current: Current,
        proof: Proof,
    ) -> Hold {
        let ack_wait = self.config.spec.worker.ack_wait;
        let beat = Beat {
            id: work.id.clone(),
            records: self.records.clone(),
            message: message.clone(),
            ack_wait,
            every: beat_interval(ack_wait),
            first_beat_at: proof.first_beat_at,
            first_fence_at: proof.first_fence_at,
        };
        Hold::start(beat, current.record, current.revision)
    }

    /// Runs the handler under the pool's timeout until it ends or something stops it.
    async fn run_attempt(
        &self,
        work: &WorkMessage,
        attempt: u32,
        hold: &Hold,
        running: &RunningGuard<'_>,
        abort: &CancellationToken,
        trace: Option<&TraceContext>,
    ) -> Stop {
        self.metrics.in_flight.inc();
        let started = Instant::now();
        let timeout = self.config.spec.worker.timeout;
        // The select only decides; acting on it comes after, once the handler's future
        // (and with it an exec child) is gone, so no outcome is written while it runs.
        let stopped = tokio::select! {
            outcome = tokio::time::timeout(timeout, self.handler.run_traced(work, attempt, trace, hold.reporter())) => {
                outcome.map_or(Stop::TimedOut, Stop::Ran)
            }
            () = abort.cancelled() => Stop::Shutdown,
            () = hold.lost() => Stop::Lost,
            () = running.cancelled() => Stop::Cancelled("cancelled while running"),
            () = hold.cancel_requested() => Stop::Cancelled("cancel requested through the record; stopped"),
        };
        if stopped.handler_timed() {
            self.metrics
                .handler_ran(&work.task, started.elapsed().as_secs_f64());
        }
        self.metrics.in_flight.dec();
        stopped
    }

    /// Records a failed attempt (releasing its hold) and hands the message back after
    /// the pool's backoff.
    async fn retry_later(
        &self,
        message: &Arc<jetstream::Message>,
        work: &WorkMessage,
        current: Current,
        error: String,
        later: Later,
        abort: &CancellationToken,
    ) {
        let Later {
            attempt,
            delay,
            hand_back,
        } = later;
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
        match hand_back {
            HandBack::HoldThenNak => {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = abort.cancelled() => {}
                }
                acknowledge(message, AckKind::Nak(None)).await;
            }
            HandBack::NakWithDelay => acknowledge(message, AckKind::Nak(Some(delay))).await,
        }
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
        // A lease already over (negative, so no `std` duration) waits only the margin.
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
        // work unfinished and dead-letters it again (deduplicated by its submission).
        let subject = self.config.names.dead_letter_subject(&work.id);
        let payload = message.payload.clone();
        let letter_id = work.dead_letter_id();
        let stored = self.publish_dead_letter(
            subject,
            Some(&letter_id),
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
        let Ending {
            status,
            result,
            error,
            event,
            ack,
        } = outcome.ending();
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

    pub(crate) async fn dead_letter_unreadable(&self, message: jetstream::Message, error: &str) {
        tracing::error!(subject = %message.subject, %error, "unreadable work message; dead-lettering it");
        let subject = self.config.names.dead_letter_unreadable_subject();
        // Deduplicated by its stream sequence, if it has one (a message pulled from a
        // consumer always has).
        let id = match message.info() {
            Ok(info) => Some(info.stream_sequence.to_string()),
            Err(err) => {
                tracing::warn!(%err, "no stream sequence: the dead letter is not deduplicated");
                None
            }
        };
        match self
            .publish_dead_letter(subject, id.as_deref(), message.payload.clone(), error, 0)
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
        id: Option<&str>,
        payload: bytes::Bytes,
        error: &str,
        attempts: u32,
    ) -> Result<(), async_nats::Error> {
        // Header values cannot hold line breaks.
        let error_header = error.replace(['\r', '\n'], " ");
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .header(DEAD_LETTER_ERROR_HEADER, error_header.as_str())
            .header(DEAD_LETTER_ATTEMPTS_HEADER, attempts.to_string().as_str());
        if let Some(id) = id {
            publish = publish.message_id(id);
        }
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

/// The bucket revision the api accepted the work on, from the message's header: on a
/// first delivery it is most likely the revision still, and saves a read.
fn revision_hint(headers: Option<&async_nats::HeaderMap>, delivered: i64) -> Option<u64> {
    if delivered != 1 {
        return None;
    }
    headers?.get(RECORD_REVISION_HEADER)?.as_str().parse().ok()
}

/// When an attempt's hold must first be renewed, and when it is lost unless it was.
#[derive(Debug, Clone, Copy)]
struct Proof {
    first_beat_at: tokio::time::Instant,
    first_fence_at: tokio::time::Instant,
}

/// What a delivery does once its start is (or is not) recorded.
#[derive(Debug)]
enum Start {
    /// Run the attempt the record now shows.
    Run(Current),
    /// Ack the message and run nothing.
    Skip(Skipped),
    /// Another attempt holds the work until `until`: start nothing before then.
    WaitForHolder { until: DateTime<Utc> },
    /// Every attempt was started before: dead-letter the work and record `failed`.
    FailForGood { current: Current, error: String },
    /// The start could not be recorded: hand the message back, to come again `after`.
    Redeliver { err: RecordError, after: Duration },
}

/// Why a delivery runs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skipped {
    /// The work is already finished (or cancelled).
    Finished(WorkStatus),
    Stale,
}

impl Skipped {
    fn why(self) -> &'static str {
        match self {
            Self::Finished(_) => "the work is already finished",
            Self::Stale => "a later submission of the same id owns the record",
        }
    }
}

/// What to do with a delivery, given how recording its start went.
fn start(begun: Result<Begin, RecordError>, spec: &WorkerSpec) -> Start {
    match begun {
        Ok(Begin::Run { record, revision }) => Start::Run(Current { record, revision }),
        Ok(Begin::Skip(status)) => Start::Skip(Skipped::Finished(status)),
        Ok(Begin::Stale) => Start::Skip(Skipped::Stale),
        Ok(Begin::Held { until }) => Start::WaitForHolder { until },
        Ok(Begin::Exhausted { record, revision }) => Start::FailForGood {
            error: format!(
                "attempt {} of {} never finished (its worker was lost); no attempts left",
                record.attempts, spec.max_attempts
            ),
            current: Current { record, revision },
        },
        Err(err) => Start::Redeliver {
            err,
            after: spec.backoff_after(1),
        },
    }
}

/// Why an attempt's handler stopped.
#[derive(Debug)]
enum Stop {
    Ran(Result<serde_json::Value, HandlerError>),
    TimedOut,
    Shutdown,
    Lost,
    Cancelled(&'static str),
}

impl Stop {
    /// Whether the handler's time goes into its duration metric: it ran until it ended,
    /// timed out, or the worker shut down.
    fn handler_timed(&self) -> bool {
        matches!(self, Self::Ran(_) | Self::TimedOut | Self::Shutdown)
    }
}

/// What an attempt's end means for the work.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The attempt lost its hold: write nothing, acknowledge nothing.
    Lost,
    /// Cancelled (by a peer, or through the record): record `cancelled`.
    Cancelled(&'static str),
    /// The worker is shutting down: hand the message back at once.
    HandBack,
    Worked(serde_json::Value),
    /// A permanent error: fail for good, whatever attempts are left.
    FailedForGood(String),
    /// Worth another attempt, if one is left ([`retry_plan`]).
    Failed(String),
}

impl Verdict {
    /// How the attempt's span ends: its outcome, and the error of one that did not work.
    fn traced(&self) -> (&'static str, Option<&str>) {
        match self {
            Verdict::Lost => ("lost", Some("the attempt lost its hold on the work")),
            Verdict::Cancelled(why) => ("cancelled", Some(why)),
            Verdict::HandBack => ("handed back", None),
            Verdict::Worked(_) => ("worked", None),
            Verdict::FailedForGood(error) => ("failed", Some(error)),
            Verdict::Failed(error) => ("failed, to retry", Some(error)),
        }
    }
}

fn verdict(stopped: Stop, timeout: Duration) -> Verdict {
    match stopped {
        Stop::Ran(Ok(result)) => Verdict::Worked(result),
        Stop::Ran(Err(HandlerError::Permanent(error))) => Verdict::FailedForGood(error),
        Stop::Ran(Err(HandlerError::Retryable(error))) => Verdict::Failed(error),
        Stop::TimedOut => Verdict::Failed(format!(
            "attempt timed out after {}",
            humantime_like(timeout)
        )),
        Stop::Shutdown => Verdict::HandBack,
        Stop::Lost => Verdict::Lost,
        Stop::Cancelled(why) => Verdict::Cancelled(why),
    }
}

/// What follows a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// That was the last attempt: dead-letter the work and record `failed`.
    FailForGood,
    Later(Later),
}

/// Another attempt after `attempt`, once `delay` has passed.
#[derive(Debug, PartialEq, Eq)]
struct Later {
    attempt: u32,
    delay: Duration,
    hand_back: HandBack,
}

/// How the message goes back for the next attempt.
#[derive(Debug, PartialEq, Eq)]
enum HandBack {
    /// Nak it with the delay: the server redelivers it then (to any worker).
    NakWithDelay,
    /// Keep it through the delay (its heartbeat keeps it ours), then nak it at once, so
    /// it is its partition's next delivery. Keyed work keeps its key's order this way: a
    /// nak with a delay would free the partition and let the key's later work overtake
    /// it.
    HoldThenNak,
}

/// After failed attempt `attempt` (1 for the first), of work with a key or not.
fn retry_plan(attempt: u32, keyed: bool, spec: &WorkerSpec) -> Retry {
    if attempt >= spec.max_attempts {
        return Retry::FailForGood;
    }
    Retry::Later(Later {
        attempt,
        delay: spec.backoff_after(attempt),
        hand_back: if keyed {
            HandBack::HoldThenNak
        } else {
            HandBack::NakWithDelay
        },
    })
}

/// How an attempt ended for good.
#[derive(Debug)]
enum Outcome {
    Worked(serde_json::Value),
    Failed(String),
    Cancelled,
}

/// What an outcome writes, announces and does with the message.
#[derive(Debug)]
struct Ending {
    status: WorkStatus,
    result: Option<serde_json::Value>,
    error: Option<String>,
    event: WorkEventKind,
    ack: AckKind,
}

impl Outcome {
    fn ending(self) -> Ending {
        match self {
            Self::Worked(result) => Ending {
                status: WorkStatus::Worked,
                result: Some(result),
                error: None,
                event: WorkEventKind::Worked,
                ack: AckKind::Ack,
            },
            Self::Failed(error) => Ending {
                status: WorkStatus::Failed,
                result: None,
                error: Some(error),
                event: WorkEventKind::Failed,
                ack: AckKind::Term,
            },
            // Terminated, not redelivered: nobody wants this work any more.
            Self::Cancelled => Ending {
                status: WorkStatus::Cancelled,
                result: None,
                error: Some("cancelled while running".to_owned()),
                event: WorkEventKind::Cancelled,
                ack: AckKind::Term,
            },
        }
    }
}

fn seconds_since(work: &WorkMessage) -> f64 {
    (Utc::now() - work.created_at).num_milliseconds().max(0) as f64 / 1000.0
}

fn humantime_like(duration: std::time::Duration) -> String {
    format!("{:.3}s", duration.as_secs_f64()).replace(".000s", "s")
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use workpool_core::{WorkId, WorkRecord};

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Three attempts, with pauses of 1 s, then 5 s, then 30 s for good.
    fn spec() -> WorkerSpec {
        WorkerSpec {
            max_attempts: 3,
            backoff: vec![SECOND, 5 * SECOND, 30 * SECOND],
            ..WorkerSpec::default()
        }
    }

    fn record(attempts: u32) -> WorkRecord {
        let mut record = WorkRecord::pending("default", None, "api-0", Utc::now());
        record.attempts = attempts;
        record
    }

    fn later(attempt: u32, delay: Duration, hand_back: HandBack) -> Retry {
        Retry::Later(Later {
            attempt,
            delay,
            hand_back,
        })
    }

    #[test]
    fn the_last_attempt_fails_for_good() {
        assert_eq!(retry_plan(3, false, &spec()), Retry::FailForGood);
        assert_eq!(retry_plan(3, true, &spec()), Retry::FailForGood);
        // A delivery past the last attempt (the limit was lowered meanwhile) too.
        assert_eq!(retry_plan(7, false, &spec()), Retry::FailForGood);
        let once = WorkerSpec {
            max_attempts: 1,
            ..spec()
        };
        assert_eq!(retry_plan(1, false, &once), Retry::FailForGood);
    }

    #[test]
    fn unkeyed_work_is_nakked_with_the_delay() {
        assert_eq!(
            retry_plan(1, false, &spec()),
            later(1, SECOND, HandBack::NakWithDelay)
        );
    }

    #[test]
    fn keyed_work_is_held_through_the_delay_not_nakked_with_it() {
        // A nak with a delay would free the key's partition, and the key's later work
        // would overtake the failed job.
        assert_eq!(
            retry_plan(1, true, &spec()),
            later(1, SECOND, HandBack::HoldThenNak)
        );
        assert_eq!(
            retry_plan(2, true, &spec()),
            later(2, 5 * SECOND, HandBack::HoldThenNak)
        );
    }

    #[test]
    fn the_backoff_grows_by_attempt_and_its_last_entry_repeats() {
        let spec = WorkerSpec {
            max_attempts: 10,
            ..spec()
        };
        let delays: Vec<Duration> = (1..10)
            .map(|attempt| match retry_plan(attempt, false, &spec) {
                Retry::Later(later) => later.delay,
                Retry::FailForGood => panic!("attempt {attempt} of 10 has a retry"),
            })
            .collect();
        assert_eq!(delays[..3], [SECOND, 5 * SECOND, 30 * SECOND]);
        assert!(
            delays[3..].iter().all(|&delay| delay == 30 * SECOND),
            "{delays:?}"
        );
        assert_eq!(retry_plan(10, false, &spec), Retry::FailForGood);
    }

    #[test]
    fn a_started_attempt_runs_on_the_record_it_wrote() {
        match start(
            Ok(Begin::Run {
                record: record(1),
                revision: 7,
            }),
            &spec(),
        ) {
            Start::Run(current) => {
                assert_eq!((current.record.attempts, current.revision), (1, 7));
            }
            other => panic!("expected to run, got {other:?}"),
        }
    }

    #[test]
    fn finished_and_stale_work_is_skipped() {
        for (begun, skipped) in [
            (
                Begin::Skip(WorkStatus::Worked),
                Skipped::Finished(WorkStatus::Worked),
            ),
            (
                Begin::Skip(WorkStatus::Cancelled),
                Skipped::Finished(WorkStatus::Cancelled),
            ),
            (Begin::Stale, Skipped::Stale),
        ] {
            match start(Ok(begun), &spec()) {
                Start::Skip(got) => assert_eq!(got, skipped),
                other => panic!("expected {skipped:?}, got {other:?}"),
            }
        }
        assert_eq!(
            Skipped::Stale.why(),
            "a later submission of the same id owns the record"
        );
    }

    #[test]
    fn held_work_waits_for_its_holder() {
        let until = Utc::now() + chrono::Duration::seconds(10);
        match start(Ok(Begin::Held { until }), &spec()) {
            Start::WaitForHolder { until: got } => assert_eq!(got, until),
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn work_whose_attempts_were_all_started_fails_for_good() {
        match start(
            Ok(Begin::Exhausted {
                record: record(3),
                revision: 9,
            }),
            &spec(),
        ) {
            Start::FailForGood { current, error } => {
                assert_eq!(current.revision, 9);
                assert_eq!(
                    error,
                    "attempt 3 of 3 never finished (its worker was lost); no attempts left"
                );
            }
            other => panic!("expected to fail for good, got {other:?}"),
        }
    }

    #[test]
    fn a_start_that_cannot_be_recorded_comes_back_after_the_first_backoff() {
        let err = RecordError::Contended(WorkId::from_idempotency_key("t"));
        match start(Err(err), &spec()) {
            Start::Redeliver { err, after } => {
                assert!(matches!(err, RecordError::Contended(_)), "{err:?}");
                assert_eq!(after, SECOND);
            }
            other => panic!("expected a redelivery, got {other:?}"),
        }
    }

    #[test]
    fn only_a_first_delivery_uses_the_revision_header() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(RECORD_REVISION_HEADER, "42");
        assert_eq!(revision_hint(Some(&headers), 1), Some(42));
        assert_eq!(revision_hint(Some(&headers), 2), None);
        assert_eq!(revision_hint(None, 1), None);
        let mut unreadable = async_nats::HeaderMap::new();
        unreadable.insert(RECORD_REVISION_HEADER, "forty-two");
        assert_eq!(revision_hint(Some(&unreadable), 1), None);
    }

    #[test]
    fn an_attempt_end_decides_the_work() {
        let timeout = Duration::from_millis(1500);
        assert_eq!(
            verdict(Stop::Ran(Ok(json!({"x": 1}))), timeout),
            Verdict::Worked(json!({"x": 1}))
        );
        assert_eq!(
            verdict(
                Stop::Ran(Err(HandlerError::Permanent("4xx".into()))),
                timeout
            ),
            Verdict::FailedForGood("4xx".into())
        );
        assert_eq!(
            verdict(
                Stop::Ran(Err(HandlerError::Retryable("5xx".into()))),
                timeout
            ),
            Verdict::Failed("5xx".into())
        );
        assert_eq!(
            verdict(Stop::TimedOut, timeout),
            Verdict::Failed("attempt timed out after 1.500s".into())
        );
        assert_eq!(
            verdict(Stop::TimedOut, 2 * SECOND),
            Verdict::Failed("attempt timed out after 2s".into())
        );
        assert_eq!(verdict(Stop::Shutdown, timeout), Verdict::HandBack);
        assert_eq!(verdict(Stop::Lost, timeout), Verdict::Lost);
        assert_eq!(
            verdict(Stop::Cancelled("cancelled while running"), timeout),
            Verdict::Cancelled("cancelled while running")
        );
    }

    #[test]
    fn the_handler_time_is_measured_unless_the_attempt_was_cut_off() {
        assert!(Stop::Ran(Ok(json!(null))).handler_timed());
        assert!(Stop::TimedOut.handler_timed());
        assert!(Stop::Shutdown.handler_timed());
        assert!(!Stop::Lost.handler_timed());
        assert!(!Stop::Cancelled("cancelled while running").handler_timed());
    }

    #[test]
    fn worked_work_is_acked_and_failed_or_cancelled_work_terminated() {
        let worked = Outcome::Worked(json!(1)).ending();
        assert_eq!(
            (worked.status, worked.result, worked.error, worked.event),
            (
                WorkStatus::Worked,
                Some(json!(1)),
                None,
                WorkEventKind::Worked
            )
        );
        assert!(matches!(worked.ack, AckKind::Ack));
        let failed = Outcome::Failed("broken".into()).ending();
        assert_eq!(
            (failed.status, failed.result, failed.error, failed.event),
            (
                WorkStatus::Failed,
                None,
                Some("broken".into()),
                WorkEventKind::Failed
            )
        );
        assert!(matches!(failed.ack, AckKind::Term));
        let cancelled = Outcome::Cancelled.ending();
        assert_eq!(
            (cancelled.status, cancelled.error, cancelled.event),
            (
                WorkStatus::Cancelled,
                Some("cancelled while running".into()),
                WorkEventKind::Cancelled
            )
        );
        assert!(matches!(cancelled.ack, AckKind::Term));
    }
}
