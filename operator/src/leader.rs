//! Leader election over a Lease (kube-lease-manager): several operator replicas may run,
//! and only the holder of the Lease reconciles. A replica that loses the Lease stops its
//! controller and waits to win it again; one that stops releases it, so a standby takes
//! over at once instead of when the Lease expires.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::OperatorMetrics;

/// The Lease this replica competes for, and under what identity.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub identity: &'a str,
    /// How long a leader's Lease lasts without renewal.
    pub seconds: u64,
}

/// This replica in the election: the leader flag and the task that keeps it current.
pub struct Candidate {
    identity: String,
    leader: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

/// One term of leadership, handed to the work done while leading.
#[derive(Debug)]
pub struct Term {
    leader: watch::Receiver<bool>,
    stopping: watch::Receiver<bool>,
}

impl Term {
    /// Completes when the Lease is lost or the operator stops.
    pub async fn ended(mut self) {
        tokio::select! {
            () = flag_is(&mut self.leader, false) => {
                tracing::warn!("leadership lost: stopping the controller");
            }
            () = flag_is(&mut self.stopping, true) => {}
        }
    }
}

/// Waits until the flag equals `wanted` (or its sender is gone).
async fn flag_is(flag: &mut watch::Receiver<bool>, wanted: bool) {
    let _ = flag.wait_for(|value| *value == wanted).await;
}

impl Candidate {
    /// Joins the election for the Lease, without waiting to win it.
    pub async fn join(client: Client, lease: LeaseSettings<'_>) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, lease.name)
            .with_namespace(lease.namespace)
            .with_identity(lease.identity)
            .with_duration(lease.seconds)
            .with_grace(lease.seconds.div_ceil(3).max(1))
            .build()
            .await?;
        let (leader, task) = manager.watch().await;
        Ok(Self {
            identity: lease.identity.to_owned(),
            leader,
            task,
        })
    }

    /// Runs `lead` for each term this replica holds the Lease, until `shutdown`
    /// completes; then releases the Lease. `lead` should return once its [`Term`] ended.
    pub async fn lead_until<F, Fut>(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        metrics: &OperatorMetrics,
        mut lead: F,
    ) where
        F: FnMut(Term) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (stop_all, stopping) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_all.send(true);
        });
        loop {
            let mut stop = stopping.clone();
            tokio::select! {
                () = flag_is(&mut self.leader, true) => {}
                () = flag_is(&mut stop, true) => break,
            }
            if *stopping.borrow() {
                break;
            }
            metrics.leader.set(1);
            tracing::info!(identity = %self.identity, "leading: reconciling WorkPools");
            lead(Term {
                leader: self.leader.clone(),
                stopping: stopping.clone(),
            })
            .await;
            metrics.leader.set(0);
            if *stopping.borrow() {
                break;
            }
        }
        self.release().await;
    }

    /// Closing the flag's channel ends the lease task; releasing lets a standby take
    /// over at once.
    async fn release(self) {
        drop(self.leader);
        match self.task.await {
            Ok(Ok(manager)) => {
                if let Err(err) = manager.release().await {
                    tracing::warn!(%err, "lease not released; a standby takes over when it expires");
                }
            }
            Ok(Err(err)) => tracing::warn!(%err, "lease task failed"),
            Err(err) => tracing::warn!(%err, "lease task panicked"),
        }
    }
}
