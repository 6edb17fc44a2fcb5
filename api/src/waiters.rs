//! One watch of the results bucket per api process, fanned out to the requests that wait
//! for a record to change (long-polls, and DELETE of running work). A watch per request
//! would be a JetStream consumer per request, and thousands of them take NATS down.
//!
//! A request registers before it reads the record, so no write slips between its read and
//! its registration. The number of registered waiters is capped; past the cap a request
//! is refused rather than queued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use backon::{Backoff, BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use workpool_core::{WorkId, WorkRecord};

/// How many requests may wait at once in one api process, unless configured.
pub const DEFAULT_MAX_WAITERS: usize = 10_000;

/// A watch that stayed up this long restarts, when it ends, after the shortest delay again.
const STABLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WaitersError {
    #[error("reading the state of stream {stream}: {source}")]
    StreamInfo {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("watching bucket {bucket}: {source}")]
    Watch {
        bucket: String,
        #[source]
        source: kv::WatchError,
    },
}

/// The cap on waiters is reached.
#[derive(Debug, thiserror::Error)]
#[error("{limit} requests are already waiting in this api process")]
pub struct Full {
    pub limit: usize,
}

/// A write to one record as the watch delivered it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The stream sequence of the write: later writes have higher revisions.
    pub revision: u64,
    /// The record, or `None` when it was deleted or purged.
    pub record: Option<WorkRecord>,
}

/// Whether the shared watch is following the bucket, and how often it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Health {
    up: bool,
    /// Counts the times the watch stopped; a waiter that saw it change may have missed
    /// writes while it was down.
    stops: u64,
}

type Slot = Arc<watch::Sender<Option<Seen>>>;

#[derive(Debug)]
struct Shared {
    /// Waited-for record ids; one channel per id, shared by all of that id's waiters.
    slots: Mutex<HashMap<String, Slot>>,
    waiting: AtomicUsize,
    limit: usize,
    health: watch::Sender<Health>,
}

impl Shared {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock leaves the map consistent (every change is one
        // insert or remove), so a poisoned lock is still usable.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands a write to the waiters of `key`; `value` is `None` for a delete or purge.
    fn deliver(&self, key: &str, revision: u64, value: Option<&[u8]>) {
        let Some(slot) = self.slots().get(key).cloned() else {
            return; // nobody waits for it: not even parsed
        };
        let record = match value.map(WorkRecord::from_json) {
            Some(Ok(record)) => Some(record),
            Some(Err(err)) => {
                tracing::warn!(%key, %err, "unreadable record in the results watch");
                return;
            }
            None => None,
        };
        slot.send_if_modified(|current| {
            // The channel holds the latest write only; a terminal record is what waiters
            // want, so it is not replaced by a later expiry or delete they might see instead.
            let keep = current.as_ref().is_some_and(|seen| {
                seen.revision >= revision
                    || seen
                        .record
                        .as_ref()
                        .is_some_and(|record| record.status.is_terminal())
            });
            if !keep {
                *current = Some(Seen { revision, record });
            }
            !keep
        });
    }

    fn set_up(&self, up: bool) {
        self.health.send_modify(|health| {
            if health.up && !up {
                health.stops += 1;
            }
            health.up = up;
        });
    }
}

/// The registry of waiting requests and the watch that feeds it.
#[derive(Debug, Clone)]
pub struct Waiters {
    shared: Arc<Shared>,
}

impl Waiters {
    /// Starts watching the bucket from its current end and returns once the watch is up,
    /// so that every waiter registered afterwards is covered. `limit` caps the waiters.
    pub async fn start(
        js: &jetstream::Context,
        kv: kv::Store,
        bucket: &str,
        limit: usize,
    ) -> Result<Self, WaitersError> {
        let stream = format!("KV_{bucket}");
        let info = js
            .get_stream(&stream)
            .await
            .map_err(|source| WaitersError::StreamInfo {
                stream: stream.clone(),
                source,
            })?;
        // From the sequence after the last write rather than "new": the position is then
        // known even before the first write arrives, and a restart resumes there.
        let next_revision = info.cached_info().state.last_sequence + 1;
        let watch = kv
            .watch_all_from_revision(next_revision)
            .await
            .map_err(|source| WaitersError::Watch {
                bucket: bucket.to_owned(),
                source,
            })?;
        let (health, _) = watch::channel(Health { up: true, stops: 0 });
        let shared = Arc::new(Shared {
            slots: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            limit,
            health,
        });
        tokio::spawn(follow(
            Arc::downgrade(&shared),
            kv,
            bucket.to_owned(),
            watch,
            next_revision,
        ));
        Ok(Self { shared })
    }

    /// Registers interest in `id`'s next writes; refused when `limit` requests wait.
    pub fn register(&self, id: &WorkId) -> Result<Waiter, Full> {
        let shared = &self.shared;
        let taken = shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < shared.limit).then_some(waiting + 1)
            });
        if taken.is_err() {
            return Err(Full {
                limit: shared.limit,
            });
        }
        let receiver = shared
            .slots()
            .entry(id.as_str().to_owned())
            .or_insert_with(|| Arc::new(watch::channel(None).0))
            .subscribe();
        Ok(Waiter {
            id: id.as_str().to_owned(),
            receiver: Some(receiver),
            health: *shared.health.borrow(),
            shared: Arc::clone(shared),
        })
    }

    /// How many requests wait now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }
}

/// One waiting request; deregisters when dropped.
#[derive(Debug)]
pub struct Waiter {
    id: String,
    receiver: Option<watch::Receiver<Option<Seen>>>,
    health: Health,
    shared: Arc<Shared>,
}

impl Waiter {
    /// The latest write delivered since registration, if any (callers compare
    /// revisions: the same write is returned until a newer one comes).
    pub fn latest(&mut self) -> Option<Seen> {
        self.receiver.as_mut()?.borrow_and_update().clone()
    }

    /// Resolves when a write to the record is delivered.
    pub async fn changed(&mut self) {
        let delivered = match self.receiver.as_mut() {
            Some(receiver) => receiver.changed().await.is_ok(),
            None => false,
        };
        if !delivered {
            // The channel lives as long as this waiter is registered; should it be gone,
            // no write can come and only the deadline ends the wait.
            std::future::pending::<()>().await;
        }
    }

    /// Whether the watch has been up since this waiter registered, so that it was sent
    /// every write since then.
    pub fn covered(&self) -> bool {
        let now = *self.shared.health.borrow();
        self.health.up && now == self.health
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut slots = self.shared.slots();
        // Dropped under the lock, so no one subscribes between the count and the removal.
        drop(self.receiver.take());
        if slots
            .get(&self.id)
            .is_some_and(|slot| slot.receiver_count() == 0)
        {
            slots.remove(&self.id);
        }
        drop(slots);
        self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Restarts of the results watch: the wait for NATS (100 ms doubling up to 5 s, forever),
/// with jitter so api pods that lost the same server do not come back in step.
const RESTART_BACKOFF: ExponentialBuilder = workpool_runtime::retry::UNTIL_ANSWERED.with_jitter();

/// Why the watch stopped delivering.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error(transparent)]
    Failed(kv::WatcherError),
    #[error("the watch ended")]
    Ended,
}

/// Follows the bucket for as long as the registry exists, restarting the watch (from the
/// write after the last one seen, so none is lost) with backoff when it ends or fails.
async fn follow(
    shared: Weak<Shared>,
    kv: kv::Store,
    bucket: String,
    mut watch: kv::Watch,
    mut next_revision: u64,
) {
    let mut delays = RESTART_BACKOFF.build();
    loop {
        let opened = Instant::now();
        let Some(stopped) = deliver_writes(&shared, &mut watch, &mut next_revision).await else {
            return;
        };
        let Some(live) = shared.upgrade() else {
            return;
        };
        live.set_up(false);
        drop(live);
        tracing::warn!(%bucket, reason = %stopped, "results watch stopped; restarting it");
        if opened.elapsed() >= STABLE {
            delays = RESTART_BACKOFF.build();
        }
        let Some(restarted) = reopen(&shared, &kv, &bucket, next_revision, &mut delays).await
        else {
            return;
        };
        watch = restarted;
        let Some(live) = shared.upgrade() else {
            return;
        };
        live.set_up(true);
        tracing::info!(%bucket, next_revision, "results watch restarted");
    }
}

/// Hands the watch's writes to the waiters until it stops (why), or until the registry
/// is gone (`None`). `next_revision` follows the writes delivered.
async fn deliver_writes(
    shared: &Weak<Shared>,
    watch: &mut kv::Watch,
    next_revision: &mut u64,
) -> Option<Stopped> {
    loop {
        let entry = match watch.next().await {
            Some(Ok(entry)) => entry,
            Some(Err(err)) => return Some(Stopped::Failed(err)),
            None => return Some(Stopped::Ended),
        };
        let shared = shared.upgrade()?;
        *next_revision = entry.revision + 1;
        let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
        shared.deliver(&entry.key, entry.revision, value);
    }
}

/// A new watch from `next_revision`, each try after the next of `delays` (the first one
/// too, so a watch that ends as soon as it opens is not reopened in a tight loop); `None`
/// once the registry is gone.
async fn reopen(
    shared: &Weak<Shared>,
    kv: &kv::Store,
    bucket: &str,
    next_revision: u64,
    delays: &mut impl Backoff,
) -> Option<kv::Watch> {
    loop {
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
        if shared.strong_count() == 0 {
            return None;
        }
        match kv.watch_all_from_revision(next_revision).await {
            Ok(watch) => return Some(watch),
            Err(err) => {
                tracing::warn!(%bucket, %err, "restarting the results watch failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use workpool_core::WorkStatus;

    fn registry(limit: usize) -> Waiters {
        let (health, _) = watch::channel(Health { up: true, stops: 0 });
        Waiters {
            shared: Arc::new(Shared {
                slots: Mutex::new(HashMap::new()),
                waiting: AtomicUsize::new(0),
                limit,
                health,
            }),
        }
    }

    fn id(n: u8) -> WorkId {
        format!("{n:032x}").parse().expect("id")
    }

    fn record(status: WorkStatus) -> Vec<u8> {
        let now = chrono::Utc::now();
        let mut record = WorkRecord::pending("default", None, "api-0", now);
        record.advance(status, now).expect("forward");
        record.to_json()
    }

    #[test]
    fn the_watch_is_restarted_forever_after_100ms_doubling_to_5s_with_jitter() {
        let base = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for (delay, base) in RESTART_BACKOFF.build().zip(base) {
            let base = Duration::from_millis(base);
            // Jitter adds up to one delay more; a few nanoseconds under (f32) are fine.
            assert!(
                delay + Duration::from_micros(1) >= base,
                "{delay:?} < {base:?}"
            );
            assert!(delay <= base * 2, "{delay:?} > 2 x {base:?}");
        }
        assert_eq!(RESTART_BACKOFF.build().take(100_000).count(), 100_000);
    }

    #[test]
    fn the_cap_refuses_and_dropped_waiters_free_their_place() {
        let waiters = registry(2);
        let first = waiters.register(&id(1)).expect("first");
        let second = waiters.register(&id(1)).expect("second, same id");
        assert!(matches!(waiters.register(&id(2)), Err(Full { limit: 2 })));
        drop(first);
        let third = waiters.register(&id(2)).expect("a place was freed");
        assert_eq!(waiters.waiting(), 2);
        drop((second, third));
        assert_eq!(waiters.waiting(), 0);
        assert!(
            waiters.shared.slots().is_empty(),
            "no slot outlives its waiters"
        );
    }

    #[test]
    fn every_waiter_of_an_id_gets_the_write_and_a_terminal_record_sticks() {
        let waiters = registry(10);
        let mut a = waiters.register(&id(1)).expect("a");
        let mut b = waiters.register(&id(1)).expect("b");
        let mut other = waiters.register(&id(2)).expect("other");
        let key = id(1);
        let shared = &waiters.shared;
        shared.deliver(key.as_str(), 3, Some(&record(WorkStatus::Working)));
        shared.deliver(key.as_str(), 5, Some(&record(WorkStatus::Worked)));
        shared.deliver(key.as_str(), 6, None);
        shared.deliver(key.as_str(), 4, Some(&record(WorkStatus::Working)));
        for waiter in [&mut a, &mut b] {
            let seen = waiter.latest().expect("delivered");
            assert_eq!(seen.revision, 5);
            assert_eq!(
                seen.record.map(|record| record.status),
                Some(WorkStatus::Worked)
            );
        }
        assert!(
            other.latest().is_none(),
            "another id's write is not delivered"
        );
    }

    #[tokio::test]
    async fn a_woken_waiter_reads_the_write_that_woke_it() {
        let waiters = registry(10);
        let mut waiter = waiters.register(&id(1)).expect("waiter");
        assert!(waiter.latest().is_none(), "nothing delivered yet");
        let shared = Arc::clone(&waiters.shared);
        let write = tokio::spawn(async move {
            tokio::task::yield_now().await;
            shared.deliver(id(1).as_str(), 7, Some(&record(WorkStatus::Worked)));
        });
        waiter.changed().await;
        // `changed` marks the value seen; it must still be readable after.
        assert_eq!(waiter.latest().map(|seen| seen.revision), Some(7));
        write.await.expect("writer");
    }

    #[test]
    fn a_stopped_watch_uncovers_the_waiters_registered_before() {
        let waiters = registry(10);
        let before = waiters.register(&id(1)).expect("before");
        assert!(before.covered());
        waiters.shared.set_up(false);
        let during = waiters.register(&id(1)).expect("during");
        waiters.shared.set_up(true);
        assert!(
            !before.covered(),
            "writes may have been missed while it was down"
        );
        assert!(!during.covered(), "registered while it was down");
        assert!(waiters.register(&id(1)).expect("after").covered());
    }
}
