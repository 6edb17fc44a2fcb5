//! Pull loops: one for unkeyed work (bounded by the pod's concurrency) and one per keyed
//! partition (the server lets one message per partition be in flight cluster-wide).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Reserves up to `max` permits, waiting for the first; `None` once stopping.
async fn reserve(
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

impl Worker {
    /// Pulls from `consumer` until `lanes.stop`. With a `limit`, each pull asks for as
    /// many messages as there are free permits, so no message waits in this process
    /// while another worker is idle.
    pub(crate) async fn pull_loop(
        self: Arc<Self>,
        name: String,
        consumer: PullConsumer,
        limit: Option<Arc<Semaphore>>,
        lanes: Lanes,
    ) {
        let mut failures = workpool_runtime::retry::UntilAnswered::new();
        while !lanes.stop.is_cancelled() {
            let mut permits = match &limit {
                Some(limit) => {
                    match reserve(limit, self.config.spec.worker.concurrency, &lanes.stop).await {
                        Some(permits) => permits,
                        None => break,
                    }
                }
                None => Vec::new(),
            };
            let wanted = permits.len().max(1);
            // Every message of this pull was delivered after this instant.
            let pulled_at = tokio::time::Instant::now();
            let mut batch = match consumer
                .batch()
                .max_messages(wanted)
                .expires(PULL_EXPIRES)
                .messages()
                .await
            {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(consumer = %name, %err, "pull failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(failures.next_delay()) => {}
                        () = lanes.stop.cancelled() => {}
                    }
                    continue;
                }
            };
            // A pull that worked starts the next run of failures from the shortest pause.
            failures = workpool_runtime::retry::UntilAnswered::new();
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
                    if let Err(err) = message.ack_with(AckKind::Nak(None)).await {
                        tracing::debug!(%err, "nak on stop not sent; the server will redeliver");
                    }
                    continue;
                }
                let permit = permits.pop();
                let worker = self.clone();
                let abort = lanes.abort.clone();
                lanes.tracker.spawn(async move {
                    worker.process(message, pulled_at, abort).await;
                    drop(permit);
                });
            }
        }
        tracing::debug!(consumer = %name, "pull loop stopped");
    }
}
