//! Waking a pool scaled to zero: its first submission is reconciled at once, not at the
//! next resync (docs/operator.md, "Scaling"). While the autoscaler holds a pool at no
//! workers, the operator listens for its api's `accepted` events (core NATS) and
//! reconciles the pool on the first one; the resync stays the fallback should the event
//! be lost.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use workpool_core::PoolNames;
use workpool_core::crd::WorkPool;

/// The pools listened for, and where their wake-ups go.
#[derive(Debug)]
pub struct Waker {
    armed: Arc<Mutex<HashSet<ObjectRef<WorkPool>>>>,
    wake: mpsc::UnboundedSender<ObjectRef<WorkPool>>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<WorkPool>>>>,
}

impl Default for Waker {
    fn default() -> Self {
        let (wake, woken) = mpsc::unbounded_channel();
        Self {
            armed: Arc::default(),
            wake,
            woken: Mutex::new(Some(woken)),
        }
    }
}

impl Waker {
    /// The pools to reconcile because work arrived while they had no workers; taken once,
    /// by the controller.
    pub fn woken(&self) -> impl Stream<Item = ObjectRef<WorkPool>> + Send + 'static {
        let receiver = self
            .woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            let pool = receiver.recv().await?;
            Some((pool, Some(receiver)))
        })
    }

    /// Listens on `client` for the first work accepted by `pool`'s api, unless already
    /// listening.
    pub async fn arm(
        &self,
        client: &async_nats::Client,
        names: &PoolNames,
        pool: ObjectRef<WorkPool>,
    ) -> Result<(), async_nats::SubscribeError> {
        if !self.lock().insert(pool.clone()) {
            return Ok(());
        }
        let mut accepted = match client
            .subscribe(names.event_filter("work", "accepted"))
            .await
        {
            Ok(accepted) => accepted,
            Err(err) => {
                self.lock().remove(&pool);
                return Err(err);
            }
        };
        let (armed, wake) = (self.armed.clone(), self.wake.clone());
        tokio::spawn(async move {
            if accepted.next().await.is_some() {
                tracing::info!(pool = %pool, "work arrived for a pool with no workers; waking it");
                let _ = wake.send(pool.clone());
            }
            armed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pool);
            let _ = accepted.unsubscribe().await;
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ObjectRef<WorkPool>>> {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
