//! Pull loops of keyed partitions (the server lets one message per partition be in
//! flight cluster-wide), and what they share with the unkeyed loop (`unkeyed.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use workpool_runtime::retry::UntilAnswered;

use crate::Worker;

/// How long one pull request waits for messages; also how quickly a stopping worker
/// returns its last pull.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Where a pull loop's messages go and when it stops.
#[derive(Clone)]
pub(crate) struct Lanes {
    pub tracker: TaskTracker,
    /// Cancelled on SIGTERM: stop pulling.
    pub stop: CancellationToken,
    /// Cancelled when the drain grace period is over: abort running attempts.
    pub abort: CancellationToken,
}

/// Long pulls of one consumer until a stop: after a failed pull it pauses (longer each
/// time, from the shortest again once a pull worked) and tries again.
pub(crate) struct LongPulls<'a> {
    consumer: &'a PullConsumer,
    /// What the consumer serves, for the log.
    serves: &'a str,
    stop: &'a CancellationToken,
    failures: UntilAnswered,
}

impl<'a> LongPulls<'a> {
    pub(crate) fn new(
        consumer: &'a PullConsumer,
        serves: &'a str,
        stop: &'a CancellationToken,
    ) -> Self {
        Self {
            consumer,
            serves,
            stop,
            failures: UntilAnswered::new(),
        }
    }

    /// The next pull of at most `max` messages, ending within [`PULL_EXPIRES`]; `None`
    /// once stopping.
    pub(crate) async fn next(&mut self, max: usize) -> Option<Batch> {
        while !self.stop.is_cancelled() {
            let pulled = self
                .consumer
                .batch()
                .max_messages(max)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            match pulled {
                Ok(batch) => {
                    self.failures = UntilAnswered::new();
                    return Some(batch);
                }
                Err(err) => {
                    tracing::warn!(serves = self.serves, %err, "pull failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.failures.next_delay()) => {}
                        () = self.stop.cancelled() => {}
                    }
                }
            }
        }
        None
    }
}

/// Reserves up to `max` permits, waiting for the first; `None` once stopping.
pub(crate) async fn reserve(
    limit: &Arc<Semaphore>,
    max: usize,
    stop: &CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = tokio::select! {
        permit = limit.clone().acquire_owned() => permit.ok()?,
        () = stop.cancelled() => return None,
    };
    let mut permits = vec![first];
    while permits.len() < max {
        match limit.clone().try_acquire_owned() {
            Ok(permit) => permits.push(permit),
            Err(_) => break,
        }
    }
    Some(permits)
}

/// Gives a message back for immediate redelivery: it was not started here.
pub(crate) async fn hand_back(message: &jetstream::Message) {
    if let Err(err) = message.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(%err, "nak not sent; the server will redeliver after ackWait");
    }
}

impl Worker {
    /// Runs a pulled message to its end on the lanes' tracker, holding `permit` (a slot
    /// of the pod's concurrency, if the message takes one) until then.
    pub(crate) fn start(
        self: &Arc<Self>,
        message: jetstream::Message,
        pulled_at: tokio::time::Instant,
        permit: Option<OwnedSemaphorePermit>,
        lanes: &Lanes,
    ) {
        let worker = self.clone();
        let abort = lanes.abort.clone();
        lanes.tracker.spawn(async move {
            worker.process(message, pulled_at, abort).await;
            drop(permit);
        });
    }

    /// Pulls a keyed partition's consumer until `lanes.stop`. The server hands out one
    /// message of the partition at a time, so each pull asks for one.
    pub(crate) async fn pull_loop(
        self: Arc<Self>,
        name: String,
        consumer: PullConsumer,
        lanes: Lanes,
    ) {
        let mut pulls = LongPulls::new(&consumer, &name, &lanes.stop);
        loop {
            // Every message of this pull was delivered after this instant.
            let pulled_at = tokio::time::Instant::now();
            let Some(mut batch) = pulls.next(1).await else {
                break;
            };
            // The batch ends within PULL_EXPIRES; messages that arrive after a stop are
            // handed straight back.
            while let Some(item) = batch.next().await {
                let message = match item {
                    Ok(message) => message,
                    Err(err) => {
                        tracing::debug!(consumer = %name, %err, "pull ended early");
                        break;
                    }
                };
                if lanes.stop.is_cancelled() {
                    hand_back(&message).await;
                    continue;
                }
                self.start(message, pulled_at, None, &lanes);
            }
        }
        tracing::debug!(consumer = %name, "pull loop stopped");
    }
}
