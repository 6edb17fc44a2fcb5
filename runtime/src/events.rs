//! Publishing the events of a piece of work (core NATS, fire and forget).

use workpool_core::events::WorkEvent;
use workpool_core::names::PoolNames;

/// Publishing a [`WorkEvent`] on its subject.
pub trait PublishEvent {
    /// Publishes the event; events are best-effort, so a failure is only logged.
    fn publish(
        &self,
        client: &async_nats::Client,
        names: &PoolNames,
    ) -> impl Future<Output = ()> + Send;
}

impl PublishEvent for WorkEvent {
    async fn publish(&self, client: &async_nats::Client, names: &PoolNames) {
        let payload = match serde_json::to_vec(self) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::warn!(%err, id = %self.id, "event not serialisable");
                return;
            }
        };
        if let Err(err) = client.publish(self.subject(names), payload.into()).await {
            tracing::debug!(%err, id = %self.id, "event not published");
        }
    }
}
