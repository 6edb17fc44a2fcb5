//! The pull loop of unkeyed work: one consumer per priority, asked highest first, with
//! the fairness rule of [`workpool_core::priority`] so that low work is never starved
//! (docs/worker.md, "Priorities").
//!
//! With free slots, the loop asks each queue in turn for what is already there (a
//! no-wait pull) and starts it. When every queue is empty it waits on all of them at
//! once (one long pull each); a message that arrives there once the slots are taken by
//! another queue's messages is handed back at once (a nak without delay), to be
//! delivered again to whichever worker pulls next.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use workpool_core::priority::{Fairness, Priority};

use crate::Worker;
use crate::pull::{Lanes, PULL_EXPIRES, hand_back, reserve};

/// The consumers of unkeyed work, highest priority first.
pub(crate) type Queues = Vec<(Priority, PullConsumer)>;

/// How long a queue found empty is not asked again while others have work: each no-wait
/// pull costs a subscription and a round trip, and a pool with only normal work would
/// otherwise pay for two empty ones per pull (the drain benchmark lost 15 % to them).
/// Work arriving on such a queue waits at most this long to be seen.
const EMPTY_RECHECK: Duration = Duration::from_millis(25);

/// When each priority's queue was last found empty.
#[derive(Default)]
struct FoundEmpty([Option<Instant>; 3]);

impl FoundEmpty {
    fn lately(&self, priority: Priority) -> bool {
        self.0[priority.index()].is_some_and(|at| at.elapsed() < EMPTY_RECHECK)
    }

    fn mark(&mut self, priority: Priority, empty: bool) {
        self.0[priority.index()] = empty.then(Instant::now);
    }
}

impl Worker {
    /// Pulls unkeyed work until `lanes.stop`, at most as many jobs at once as `limit`
    /// has permits.
    pub(crate) async fn unkeyed_loop(
        self: Arc<Self>,
        queues: Queues,
        limit: Arc<Semaphore>,
        lanes: Lanes,
    ) {
        let mut fairness = Fairness::default();
        let mut empty = FoundEmpty::default();
        let mut failures = workpool_runtime::retry::UntilAnswered::new();
        let concurrency = self.config.spec.worker.concurrency;
        while let Some(mut permits) = reserve(&limit, concurrency, &lanes.stop).await {
            let started = match self
                .take_in_order(&queues, &mut fairness, &mut empty, &mut permits, &lanes)
                .await
            {
                Ok(started) => started,
                Err(err) => {
                    tracing::warn!(%err, "pull of unkeyed work failed; retrying");
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(failures.next_delay()) => {}
                        () = lanes.stop.cancelled() => {}
                    }
                    continue;
                }
            };
            failures = workpool_runtime::retry::UntilAnswered::new();
            if started == 0 {
                let free = permits.len();
                drop(permits);
                self.wait_on_every_queue(&queues, &limit, free, &lanes)
                    .await;
            }
        }
        tracing::debug!("unkeyed pull loop stopped");
    }

    /// Starts what the queues hold now, up to the permits held: first one job of each
    /// priority that waited too long, then highest priority first. Returns how many
    /// jobs started.
    async fn take_in_order(
        self: &Arc<Self>,
        queues: &Queues,
        fairness: &mut Fairness,
        empty: &mut FoundEmpty,
        permits: &mut Vec<OwnedSemaphorePermit>,
        lanes: &Lanes,
    ) -> Result<usize, jetstream::consumer::pull::BatchError> {
        let overdue = fairness.overdue().into_iter().map(|p| (p, 1));
        let in_order = Priority::ALL.into_iter().map(|p| (p, usize::MAX));
        let mut started = 0;
        for (priority, most) in overdue.chain(in_order) {
            let wanted = most.min(permits.len());
            if wanted == 0 {
                break;
            }
            if empty.lately(priority) {
                continue;
            }
            let Some((_, consumer)) = queues.iter().find(|(p, _)| *p == priority) else {
                continue;
            };
            let pulled_at = tokio::time::Instant::now();
            let mut batch = consumer.fetch().max_messages(wanted).messages().await?;
            let before = started;
            while let Some(Ok(message)) = batch.next().await {
                // The server sends at most `wanted`; should it not, the message goes back.
                match permits.pop() {
                    Some(permit) if !lanes.stop.is_cancelled() => {
                        fairness.started(priority);
                        self.start(message, pulled_at, Some(permit), lanes);
                        started += 1;
                    }
                    _ => hand_back(&message).await,
                }
            }
            if started == before {
                fairness.found_empty(priority);
            }
            // Fewer than asked for: the queue has nothing more now.
            empty.mark(priority, started - before < wanted);
        }
        Ok(started)
    }

    /// Waits, for at most one pull's expiry, for work on any queue: one long pull per
    /// queue for up to `free` messages. Returns once one of them brought work (the others
    /// go on in the background until they expire) or all of them expired.
    async fn wait_on_every_queue(
        self: &Arc<Self>,
        queues: &Queues,
        limit: &Arc<Semaphore>,
        free: usize,
        lanes: &Lanes,
    ) {
        let (arrived, mut arrivals) = mpsc::channel(queues.len());
        for (priority, consumer) in queues {
            let worker = self.clone();
            let (consumer, limit, lanes_for_pull) =
                (consumer.clone(), limit.clone(), lanes.clone());
            let (priority, arrived) = (*priority, arrived.clone());
            lanes.tracker.spawn(async move {
                let got = worker
                    .long_pull(priority, &consumer, &limit, free, &lanes_for_pull)
                    .await;
                let _ = arrived.send(got).await;
            });
        }
        drop(arrived);
        while let Some(got) = arrivals.recv().await {
            if got {
                return;
            }
        }
    }

    /// One long pull of up to `most` messages of one queue; each starts if a permit is
    /// free when it arrives, or is handed back. Whether any arrived.
    async fn long_pull(
        self: &Arc<Self>,
        priority: Priority,
        consumer: &PullConsumer,
        limit: &Arc<Semaphore>,
        most: usize,
        lanes: &Lanes,
    ) -> bool {
        let pulled_at = tokio::time::Instant::now();
        let pulled = consumer
            .batch()
            .max_messages(most.max(1))
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match pulled {
            Ok(batch) => batch,
            Err(err) => {
                tracing::debug!(priority = priority.as_str(), %err, "long pull not sent");
                return false;
            }
        };
        let mut got = false;
        while let Some(Ok(message)) = batch.next().await {
            got = true;
            match limit.clone().try_acquire_owned() {
                Ok(permit) if !lanes.stop.is_cancelled() => {
                    self.start(message, pulled_at, Some(permit), lanes);
                }
                _ => hand_back(&message).await,
            }
        }
        got
    }
}
