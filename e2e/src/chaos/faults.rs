//! The faults, drawn from a seed so a failing run can be replayed, and applied to the
//! real processes of a [`TestPool`] or to the pods of a [`PodPool`] on the local cluster.

use std::time::Duration;

use super::pods::PodPool;
use crate::Result;
use crate::nats_cluster::{NODES, Nats, NatsCluster};
use crate::pool::{Member, TestPool};
use workpool_local_cluster::nats::NatsServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillWorker,
    /// SIGSTOP for longer than `ackWait`, then SIGCONT.
    PauseWorker,
    /// SIGTERM: the worker drains and leaves (scale-in).
    ScaleDown,
    ScaleUp,
    KillApi,
    KillNats,
    PauseNats,
    /// A graceful restart on the same file store.
    RestartNats,
    /// SIGKILL of the node that leads the work stream, restarted on its store after
    /// `ackWait`; only on a NATS cluster (elsewhere it is skipped).
    KillStreamLeader,
    /// `kubectl delete pod --force --grace-period=0`; its processes must stop within its
    /// grace period.
    ForceDeleteWorker,
    ForceDeleteApi,
    /// kube-apiserver stopped for longer than `ackWait`, then started again.
    RestartApiserver,
    /// SIGKILL of the operator's process (its pod's container restarts).
    KillOperator,
    /// A change of `worker.partitions`, which the apiserver must refuse.
    ChangePartitions,
}

pub const ALL: [Fault; 8] = [
    Fault::KillWorker,
    Fault::PauseWorker,
    Fault::ScaleDown,
    Fault::ScaleUp,
    Fault::KillApi,
    Fault::KillNats,
    Fault::PauseNats,
    Fault::RestartNats,
];

/// The kinds of a run on a 3-node cluster: the worker and api faults, the NATS faults on
/// one random node, and the leader kill (run.rs opens each round with another).
pub const CLUSTER: [Fault; 9] = {
    let mut kinds = [Fault::KillStreamLeader; 9];
    let mut i = 0;
    while i < ALL.len() {
        kinds[i] = ALL[i];
        i += 1;
    }
    kinds
};

/// The kinds of a run on the local cluster's pods: every fault but the leader kill (which
/// a run on a NATS cluster adds to each round).
pub const PODS: [Fault; 13] = [
    Fault::KillWorker,
    Fault::PauseWorker,
    Fault::ForceDeleteWorker,
    Fault::ScaleDown,
    Fault::ScaleUp,
    Fault::KillApi,
    Fault::ForceDeleteApi,
    Fault::KillNats,
    Fault::PauseNats,
    Fault::RestartNats,
    Fault::RestartApiserver,
    Fault::KillOperator,
    Fault::ChangePartitions,
];

/// What the faults act on: processes started by the test, or pods on the local cluster.
pub enum Target {
    Processes(Box<TestPool<Nats>>),
    Pods(Box<PodPool>),
}

/// Applies faults to one pool; names new pods so none repeats.
pub struct Injector {
    pub ack_wait: Duration,
    pub min_workers: usize,
    pub max_workers: usize,
    spawned: usize,
    /// Broken promises of the platform seen while applying faults: processes of a
    /// force-deleted pod still running, a refused spec change accepted.
    pub platform_broken: Vec<String>,
}

impl Injector {
    pub fn new(ack_wait: Duration, min_workers: usize, max_workers: usize) -> Self {
        Self {
            ack_wait,
            min_workers,
            max_workers,
            spawned: 0,
            platform_broken: Vec::new(),
        }
    }

    async fn spawn(&mut self, pool: &TestPool<Nats>, binary: &str, role: &str) -> Result<Member> {
        self.spawned += 1;
        let member = pool.spawn_unready(binary, format!("demo-{role}-c{}", self.spawned), &[])?;
        pool.wait_ready(&member).await?;
        Ok(member)
    }

    /// Applies `fault` to a random member (from `rng`); returns what it did.
    pub async fn apply(
        &mut self,
        target: &mut Target,
        fault: Fault,
        rng: &mut fastrand::Rng,
    ) -> Result<String> {
        let pause = self.ack_wait + self.ack_wait / 2;
        match target {
            Target::Pods(pods) => {
                if let Some(done) = pods
                    .apply(fault, self.ack_wait, &mut self.platform_broken, rng)
                    .await?
                {
                    return Ok(done);
                }
                let stream = pods.names.stream();
                let done = match &mut pods.nats_cluster {
                    Some(nats) => self.cluster_fault(nats, &stream, fault, rng).await?,
                    None => server_fault(&mut pods.cluster.nats, fault, pause).await?,
                };
                Ok(done.unwrap_or_else(|| format!("{fault:?} skipped (not on pods)")))
            }
            Target::Processes(pool) => self.apply_to_processes(pool, fault, rng).await,
        }
    }

    async fn apply_to_processes(
        &mut self,
        pool: &mut TestPool<Nats>,
        fault: Fault,
        rng: &mut fastrand::Rng,
    ) -> Result<String> {
        let stream = pool.names.stream();
        let pause = self.ack_wait + self.ack_wait / 2;
        let done = match &mut pool.nats {
            Nats::Cluster(cluster) => self.cluster_fault(cluster, &stream, fault, rng).await?,
            Nats::Single(server) => server_fault(server, fault, pause).await?,
        };
        if let Some(done) = done {
            return Ok(done);
        }
        let workers = pool.workers.len();
        Ok(match fault {
            Fault::KillWorker if workers > 0 => {
                let mut victim = pool.workers.remove(rng.usize(..workers));
                victim.process.kill();
                let replacement = self.spawn(pool, "workpool-worker", "worker").await?;
                pool.workers.push(replacement);
                format!("SIGKILL {} (replaced)", victim.pod)
            }
            Fault::PauseWorker if workers > 0 => {
                let victim = &pool.workers[rng.usize(..workers)];
                victim.process.pause();
                tokio::time::sleep(pause).await;
                victim.process.resume();
                format!("SIGSTOP {} for {pause:?}", victim.pod)
            }
            Fault::ScaleDown if workers > self.min_workers => {
                let mut leaving = pool.workers.remove(rng.usize(..workers));
                leaving.process.terminate();
                leaving.process.wait_exit(Duration::from_secs(40)).await?;
                format!("SIGTERM {} (scaled in)", leaving.pod)
            }
            Fault::ScaleUp if workers < self.max_workers => {
                let member = self.spawn(pool, "workpool-worker", "worker").await?;
                let pod = member.pod.clone();
                pool.workers.push(member);
                format!("scaled out: {pod}")
            }
            Fault::KillApi if !pool.apis.is_empty() => {
                let replacement = self.spawn(pool, "workpool-api", "api").await?;
                pool.apis.push(replacement);
                let mut victim = pool.apis.remove(rng.usize(..pool.apis.len() - 1));
                victim.process.kill();
                format!("SIGKILL {} (replaced)", victim.pod)
            }
            other => format!("{other:?} skipped (no member fits)"),
        })
    }

    /// The NATS faults of a cluster, each on one node while the other two keep a quorum;
    /// `None` for the faults that do not touch NATS. Each waits until the node has caught
    /// up again, so two faults never take down two nodes at once.
    async fn cluster_fault(
        &self,
        cluster: &mut NatsCluster,
        stream: &str,
        fault: Fault,
        rng: &mut fastrand::Rng,
    ) -> Result<Option<String>> {
        let pause = self.ack_wait + self.ack_wait / 2;
        Ok(Some(match fault {
            Fault::KillStreamLeader => {
                let leader = cluster.stream_leader(stream).await?;
                cluster.kill(leader);
                // Long enough for the other two to elect a leader and take writes.
                tokio::time::sleep(self.ack_wait).await;
                cluster.start_again(leader).await?;
                let now = cluster.stream_leader(stream).await?;
                format!(
                    "SIGKILL nats {} (leader of {stream}), restarted on its store; leader now {}",
                    cluster.name(leader),
                    cluster.name(now)
                )
            }
            Fault::KillNats => {
                let node = rng.usize(..NODES);
                cluster.kill(node);
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.start_again(node).await?;
                format!(
                    "SIGKILL nats {}, restarted on its store",
                    cluster.name(node)
                )
            }
            Fault::PauseNats => {
                let node = rng.usize(..NODES);
                cluster.pause(node);
                tokio::time::sleep(pause).await;
                cluster.resume(node);
                cluster.start_again(node).await?;
                format!("SIGSTOP nats {} for {pause:?}", cluster.name(node))
            }
            Fault::RestartNats => {
                let node = rng.usize(..NODES);
                cluster.stop(node).await?;
                cluster.start_again(node).await?;
                format!("nats {} restarted gracefully", cluster.name(node))
            }
            _ => return Ok(None),
        }))
    }
}

/// The faults of one nats-server; `None` for the faults that do not touch NATS.
async fn server_fault(
    nats: &mut NatsServer,
    fault: Fault,
    pause: Duration,
) -> Result<Option<String>> {
    Ok(Some(match fault {
        Fault::KillNats => {
            nats.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            nats.start_again().await?;
            "SIGKILL nats-server, restarted on its store".to_owned()
        }
        Fault::PauseNats => {
            nats.pause();
            tokio::time::sleep(pause).await;
            nats.resume();
            format!("SIGSTOP nats-server for {pause:?}")
        }
        Fault::RestartNats => {
            nats.stop().await?;
            nats.start_again().await?;
            "nats-server restarted gracefully".to_owned()
        }
        _ => return Ok(None),
    }))
}
