//! Delayed work (docs/worker.md, "Delayed work"). A submission with `run_at` or `delay`
//! waits on `delayed.<id>.<task>`, where a pool's workers pull it from the `delayed`
//! consumer and hand it back unacknowledged (a nak with the time left) until it is due.
//! Then a worker queues it where work of its kind goes, as a new message with the same
//! content, id and accepted revision, and acknowledges the delayed one. Nothing starts it
//! before then: only a due message is queued, and the worker that runs it checks nothing
//! else. A worker that dies between the two steps leaves the delayed message, which comes
//! back: its queued copy is then refused as a duplicate (or as a second message on its
//! subject), or its record shows it handled, and it is only acknowledged.

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use workpool_core::message::{RECORD_REVISION_HEADER, WorkMessage};
use workpool_runtime::publish_errors::is_subject_taken;

use crate::Worker;
use crate::process::acknowledge;
use crate::pull::LongPulls;

/// Delayed messages asked for per pull.
const BATCH: usize = 256;
/// Whether due work is in its queue now.
enum Queued {
    Yes,
    NotYet,
}

/// How soon parked work whose earlier queued message is still there is tried again.
const PARKED_QUEUE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);
/// How soon a due message whose queuing failed is tried again.
const QUEUE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Worker {
    /// Pulls delayed work until `stop`, queuing what is due.
    pub(crate) async fn delayed_loop(
        self: Arc<Self>,
        consumer: PullConsumer,
        stop: CancellationToken,
    ) {
        let mut pulls = LongPulls::new(&consumer, "delayed work", &stop);
        while let Some(mut batch) = pulls.next(BATCH).await {
            while let Some(Ok(message)) = batch.next().await {
                self.wait_or_queue(message).await;
            }
        }
    }

    /// Hands `message` back until its time, or queues it once due.
    async fn wait_or_queue(&self, message: jetstream::Message) {
        let work: WorkMessage = match serde_json::from_slice(&message.payload) {
            Ok(work) => work,
            Err(err) => return self.dead_letter_unreadable(message, &err.to_string()).await,
        };
        let now = Utc::now();
        if let Some(run_at) = work.run_at
            && run_at > now
        {
            let left = (run_at - now).to_std().unwrap_or_default();
            return acknowledge(&message, AckKind::Nak(Some(left))).await;
        }
        match self.queue_due(&message, &work).await {
            Ok(Queued::Yes) => acknowledge(&message, AckKind::Ack).await,
            Ok(Queued::NotYet) => {
                tracing::debug!(id = %work.id, "the queued message it was put aside from is still there");
                acknowledge(&message, AckKind::Nak(Some(PARKED_QUEUE_RETRY))).await;
            }
            Err(err) => {
                tracing::warn!(id = %work.id, %err, "due work not queued yet; trying again");
                acknowledge(&message, AckKind::Nak(Some(QUEUE_RETRY))).await;
            }
        }
    }

    /// Queues due work where undelayed work of its kind goes, unless it was handled
    /// already (queued before, cancelled, or superseded by a later submission).
    ///
    /// A queued message already on the subject means "queued before" for delayed work,
    /// but not for work its group put aside (`parked`): that may be the very message it
    /// was put aside from, whose acknowledgement has not landed yet. Parked work is
    /// queued only onto a free subject ([`Queued::NotYet`] until then); a copy made
    /// before by this same delayed message is then refused as a duplicate by its id.
    async fn queue_due(
        &self,
        message: &jetstream::Message,
        work: &WorkMessage,
    ) -> Result<Queued, async_nats::Error> {
        if self.records.is_handled(work).await? {
            return Ok(Queued::Yes);
        }
        let subject = self
            .config
            .names
            .queue_subject(work, self.config.spec.worker.partitions);
        let revision = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(RECORD_REVISION_HEADER))
            .map_or("0", |value| value.as_str());
        let queued = WorkMessage {
            run_at: None,
            ..work.clone()
        };
        let publish = jetstream::message::PublishMessage::build()
            .payload(queued.to_json().into())
            .message_id(due_message_id(work, revision).as_str())
            .header(RECORD_REVISION_HEADER, revision);
        match self.js.send_publish(subject, publish).await?.await {
            Ok(_) => Ok(Queued::Yes),
            Err(err) if is_subject_taken(&err) && work.parked > 0 => Ok(Queued::NotYet),
            // Queued before, by this worker or another, and not finished yet.
            Err(err) if is_subject_taken(&err) => Ok(Queued::Yes),
            Err(err) => Err(err.into()),
        }
    }
}

/// The `Nats-Msg-Id` of due work's queued copy: the same for every delivery of one
/// delayed message (a repeat is dropped as a duplicate), and new each time work put
/// aside by its group comes due again.
fn due_message_id(work: &WorkMessage, revision: &str) -> String {
    match work.parked {
        0 => format!("{}.{revision}.due", work.id),
        parked => format!("{}.{revision}.due.{parked}", work.id),
    }
}
