//! The worker's part in the pool's cluster: it counts the ready
//! endpoints of the pool's headless worker Service as members, pulls the keyed partitions
//! rendezvous hashing gives it, answers peers on `wp.<ns>.<pool>.peer.<pod>` (view,
//! cancel, leaving), and on SIGTERM tells the others it is leaving so its partitions move
//! at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use workpool_core::cluster::{PeerReply, PeerRequest, WorkerView, owned_partitions};
use workpool_core::peer_auth;

use crate::Worker;
use crate::pull::Lanes;

/// How long a peer that said it is leaving stays out of the member count, at most (its
/// EndpointSlice entry normally goes well before).
const LEAVING_FOR: Duration = Duration::from_secs(120);
/// How long a peer request waits for its answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests to this pod and to every worker of the pool.
pub(crate) type PeerRequests =
    futures::stream::Select<async_nats::Subscriber, async_nats::Subscriber>;

/// Work running in this worker, by id, so a peer's `cancel` can abort it.
#[derive(Default)]
pub struct Running(Mutex<HashMap<String, CancellationToken>>);

/// Holds a running item's entry; removes it when dropped.
pub struct RunningGuard<'a> {
    running: &'a Running,
    id: String,
    token: CancellationToken,
}

impl RunningGuard<'_> {
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `id` as running here; `None` if it already runs here (a second
    /// delivery of work this worker still holds), so the first stays cancellable.
    pub fn start(&self, id: &str) -> Option<RunningGuard<'_>> {
        let token = CancellationToken::new();
        let mut running = self.lock();
        if running.contains_key(id) {
            return None;
        }
        running.insert(id.to_owned(), token.clone());
        Some(RunningGuard {
            running: self,
            id: id.to_owned(),
            token,
        })
    }

    /// Cancels the running item `id`; false if it does not run here.
    pub fn cancel(&self, id: &str) -> bool {
        self.lock().get(id).map(CancellationToken::cancel).is_some()
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// Who this worker counts as members, and what it owns.
pub struct Membership {
    me: String,
    /// Ready worker pods from the EndpointSlices; `None` when the worker runs outside
    /// Kubernetes (it then counts itself only, and pulls every partition).
    members: Option<watch::Receiver<BTreeSet<String>>>,
    leaving: Mutex<HashMap<String, Instant>>,
    changed: Notify,
    owned: Mutex<Vec<u32>>,
}

impl Membership {
    pub fn new(me: String, members: Option<watch::Receiver<BTreeSet<String>>>) -> Self {
        Self {
            me,
            members,
            leaving: Mutex::default(),
            changed: Notify::new(),
            owned: Mutex::default(),
        }
    }

    /// The members partitions are spread over: the ready pods, this worker (ready pods
    /// include it only once its readiness probe passed), minus peers that said they are
    /// leaving.
    pub fn current(&self) -> BTreeSet<String> {
        let mut members = self
            .members
            .as_ref()
            .map(|members| members.borrow().clone())
            .unwrap_or_default();
        members.insert(self.me.clone());
        let mut leaving = self.leaving.lock().unwrap_or_else(PoisonError::into_inner);
        leaving.retain(|_, since| since.elapsed() < LEAVING_FOR);
        members.retain(|member| !leaving.contains_key(member));
        members
    }

    fn mark_leaving(&self, pod: &str) {
        if pod != self.me {
            self.leaving
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(pod.to_owned(), Instant::now());
            self.changed.notify_one();
        }
    }

    /// Records the partitions this worker owns now; whether they changed.
    fn set_owned(&self, owned: Vec<u32>) -> bool {
        let mut current = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = *current != owned;
        *current = owned;
        changed
    }

    pub fn owned(&self) -> Vec<u32> {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A receiver of member changes for one waiting loop (`None` outside Kubernetes).
    fn subscribe(&self) -> Option<watch::Receiver<BTreeSet<String>>> {
        self.members.clone()
    }

    /// Completes when the member list may have changed since `members` last looked.
    async fn changes(&self, members: &mut Option<watch::Receiver<BTreeSet<String>>>) {
        match members {
            Some(members) => tokio::select! {
                changed = members.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = self.changed.notified() => {}
            },
            None => self.changed.notified().await,
        }
    }
}

impl Worker {
    /// Runs a pull loop for each keyed partition this worker owns, starting and stopping
    /// them as members come and go, until `lanes.stop`.
    pub(crate) async fn pull_owned_partitions(
        self: Arc<Self>,
        partitions: HashMap<u32, PullConsumer>,
        lanes: Lanes,
    ) {
        let total = u32::try_from(partitions.len()).unwrap_or(u32::MAX);
        let mut loops: HashMap<u32, CancellationToken> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut changes = self.membership.subscribe();
        while !lanes.stop.is_cancelled() {
            // Reap loops that stopped after losing their partition.
            while tasks.try_join_next().is_some() {}
            // Mark the current members seen, so the wait below is for the next change.
            if let Some(changes) = &mut changes {
                changes.borrow_and_update();
            }
            let members = self.membership.current();
            let owned = owned_partitions(&self.membership.me, &members, total);
            let (lost, gained) = partition_changes(loops.keys().copied(), &owned);
            for partition in lost {
                // Its running job (at most one) finishes; the new owner gets the next
                // message only after that one is acked, so the key stays serial.
                if let Some(stop) = loops.remove(&partition) {
                    stop.cancel();
                }
            }
            for partition in gained {
                let Some(consumer) = partitions.get(&partition) else {
                    continue;
                };
                let stop = lanes.stop.child_token();
                loops.insert(partition, stop.clone());
                let lanes = Lanes {
                    stop,
                    ..lanes.clone()
                };
                let name = workpool_core::PoolNames::keyed_consumer(partition);
                tasks.spawn(self.clone().pull_loop(name, consumer.clone(), lanes));
            }
            if self.membership.set_owned(owned.clone()) {
                tracing::info!(partitions = ?owned, members = members.len(), "keyed partitions owned");
            }
            tokio::select! {
                () = self.membership.changes(&mut changes) => {}
                () = lanes.stop.cancelled() => {}
                // Leaving marks expire without an event.
                () = tokio::time::sleep(LEAVING_FOR) => {}
            }
        }
        self.membership.set_owned(Vec::new());
        while tasks.join_next().await.is_some() {}
    }

    /// What this worker owns and runs now.
    pub fn view(&self, ready: bool) -> WorkerView {
        WorkerView {
            pod: self.config.pod.clone(),
            ready,
            partitions: self.membership.owned(),
            in_flight: self.running.ids(),
            members: self.membership.current().into_iter().collect(),
            counts: self.metrics.counts(),
        }
    }

    /// Subscribes to this pod's peer subject and the pool-wide one. Done before the
    /// worker reports ready, so a peer that sees it ready can reach it.
    pub(crate) async fn peer_requests(&self) -> Result<PeerRequests, async_nats::SubscribeError> {
        let mine = self
            .client
            .subscribe(self.config.names.peer_subject(&self.config.pod))
            .await?;
        let everyone = self
            .client
            .subscribe(self.config.names.peers_all_subject())
            .await?;
        Ok(futures::stream::select(mine, everyone))
    }

    /// Answers peer requests until `stop`.
    pub(crate) async fn answer_peers(
        self: Arc<Self>,
        mut requests: PeerRequests,
        ready: Arc<std::sync::atomic::AtomicBool>,
        stop: CancellationToken,
    ) {
        loop {
            let message = tokio::select! {
                message = requests.next() => match message { Some(m) => m, None => break },
                () = stop.cancelled() => break,
            };
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let opened = peer_auth::open(
                self.config.peer_key.as_ref(),
                &message.payload,
                chrono::Utc::now(),
            );
            let reply = match opened {
                Ok(PeerRequest::View) => {
                    PeerReply::View(self.view(ready.load(std::sync::atomic::Ordering::Relaxed)))
                }
                Ok(PeerRequest::Cancel { id }) => PeerReply::Cancel {
                    cancelled: self.running.cancel(&id),
                },
                Ok(PeerRequest::Leaving { pod }) => {
                    self.membership.mark_leaving(&pod);
                    PeerReply::Ok
                }
                Err(refused) => {
                    tracing::warn!(subject = %message.subject, %refused, "peer request refused");
                    PeerReply::Error {
                        message: refused.to_string(),
                    }
                }
            };
            let payload = match serde_json::to_vec(&reply) {
                Ok(payload) => payload,
                Err(err) => {
                    // The peer's request times out; an empty answer would not parse either.
                    tracing::error!(%err, "peer reply cannot be written as JSON");
                    continue;
                }
            };
            if let Err(err) = self.client.publish(reply_to, payload.into()).await {
                tracing::debug!(%err, "peer reply not sent");
            }
        }
    }

    /// Tells every other member this worker is leaving, so they take its partitions now
    /// rather than when its endpoint disappears. Best effort, bounded by [`PEER_TIMEOUT`].
    pub(crate) async fn announce_leaving(&self) {
        let me = &self.config.pod;
        let Some(key) = &self.config.peer_key else {
            // The others find out when the endpoint goes.
            tracing::warn!("no peer key: the others are not told this worker is leaving");
            return;
        };
        let request = key.sign(
            &PeerRequest::Leaving { pod: me.clone() },
            chrono::Utc::now(),
        );
        let others: Vec<String> = self
            .membership
            .current()
            .into_iter()
            .filter(|member| member != me)
            .collect();
        let asks = others.iter().map(|member| {
            let subject = self.config.names.peer_subject(member);
            let request = request.clone();
            async move {
                let answer = tokio::time::timeout(
                    PEER_TIMEOUT,
                    self.client.request(subject, request.into()),
                )
                .await;
                if !matches!(answer, Ok(Ok(_))) {
                    tracing::debug!(peer = %member, "leaving notice not answered");
                }
            }
        });
        futures::future::join_all(asks).await;
        if !others.is_empty() {
            tracing::info!(
                peers = others.len(),
                "told the other workers this one is leaving"
            );
        }
    }
}

/// Which partitions' pull loops to stop (`running` but no longer owned) and which to
/// start (`owned` but not running), the latter in `owned`'s order.
fn partition_changes(
    running: impl IntoIterator<Item = u32>,
    owned: &[u32],
) -> (Vec<u32>, Vec<u32>) {
    let running: BTreeSet<u32> = running.into_iter().collect();
    let lost = running
        .iter()
        .copied()
        .filter(|partition| !owned.contains(partition))
        .collect();
    let gained = owned
        .iter()
        .copied()
        .filter(|partition| !running.contains(partition))
        .collect();
    (lost, gained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_partitions_stop_and_gained_ones_start() {
        assert_eq!(partition_changes([], &[2, 0]), (vec![], vec![2, 0]));
        assert_eq!(partition_changes([0, 1, 2], &[2, 3, 0]), (vec![1], vec![3]));
        assert_eq!(partition_changes([4, 5], &[]), (vec![4, 5], vec![]));
        assert_eq!(partition_changes([1, 2], &[1, 2]), (vec![], vec![]));
    }

    #[test]
    fn a_worker_outside_kubernetes_counts_only_itself() {
        let membership = Membership::new("worker-0".into(), None);
        assert_eq!(
            membership.current().into_iter().collect::<Vec<_>>(),
            ["worker-0"]
        );
    }

    #[test]
    fn a_leaving_peer_is_not_counted_and_this_worker_always_is() {
        let (_members, receiver) = watch::channel(BTreeSet::from([
            "worker-1".to_owned(),
            "worker-2".to_owned(),
        ]));
        let membership = Membership::new("worker-0".into(), Some(receiver));
        membership.mark_leaving("worker-1");
        // A worker never marks itself leaving on a peer's word.
        membership.mark_leaving("worker-0");
        assert_eq!(
            membership.current().into_iter().collect::<Vec<_>>(),
            ["worker-0", "worker-2"]
        );
    }

    #[test]
    fn owning_the_same_partitions_again_is_no_change() {
        let membership = Membership::new("worker-0".into(), None);
        assert!(membership.set_owned(vec![1, 3]));
        assert!(!membership.set_owned(vec![1, 3]));
        assert_eq!(membership.owned(), [1, 3]);
        assert!(membership.set_owned(Vec::new()));
        assert!(membership.owned().is_empty());
    }

    #[test]
    fn running_work_is_cancellable_once_and_forgotten_when_done() {
        let running = Running::default();
        let guard = running.start("a").expect("not running yet");
        assert!(
            running.start("a").is_none(),
            "a second delivery runs nothing"
        );
        assert_eq!(running.ids(), ["a"]);
        assert!(running.cancel("a"));
        assert!(guard.token.is_cancelled());
        drop(guard);
        assert!(!running.cancel("a"));
        assert!(running.ids().is_empty());
    }
}
