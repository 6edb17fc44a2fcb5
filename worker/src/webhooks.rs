//! Completion webhooks (docs/api.md, "Completion webhooks"). Workers pull every write of
//! the results bucket from the `webhooks` consumer on the bucket's stream; a finished
//! record with a `callback_url` whose delivery is not settled is POSTed there, signed,
//! and its delivery state written back into the record. That write is itself a new
//! revision, which comes through the consumer again: a failed attempt's revision waits
//! (a nak with the time left) until its `next_attempt_at`, and only the newest revision
//! of a record is ever acted on. Whichever path finished the work (a worker, a cancel, a
//! dead letter), its record is seen here; a worker that dies mid-delivery leaves the
//! message to be delivered again after `ackWait`, so a receiver may see a delivery twice
//! (the `Workpool-Delivery` header names it).

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use workpool_core::record::WorkView;
use workpool_core::webhook::{
    DELIVERY_HEADER, SIGNATURE_HEADER, WEBHOOK_KEY_ENV, WebhookDelivery, signature,
};
use workpool_core::{WorkId, WorkRecord};

use crate::Worker;
use crate::process::acknowledge;
use crate::pull::LongPulls;

/// Deliveries one worker makes at once.
const DELIVERIES_AT_ONCE: usize = 16;

/// What signing and sending deliveries takes: the pool's key and a client.
pub struct Signer {
    key: Vec<u8>,
    client: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookKeyError {
    #[error(
        "{WEBHOOK_KEY_ENV} is not set: the pool allows callbacks, and deliveries are signed with it"
    )]
    Missing,
    #[error("{WEBHOOK_KEY_ENV} is not hex: {0}")]
    NotHex(#[from] hex::FromHexError),
    #[error("the webhook client: {0}")]
    Client(#[from] crate::http_client::ClientError),
    #[error("the webhook client: {0}")]
    Build(#[from] reqwest::Error),
}

impl Signer {
    /// The key from the environment and a client that follows no redirects (a redirect
    /// could lead to a host the pool does not allow).
    pub fn from_env() -> Result<Self, WebhookKeyError> {
        let hex_key = std::env::var(WEBHOOK_KEY_ENV).map_err(|_| WebhookKeyError::Missing)?;
        let key = hex::decode(hex_key.trim())?;
        let client = workpool_runtime::http_client::client_builder()?
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { key, client })
    }
}

/// How one attempt went.
enum Attempt {
    Delivered(u16),
    Failed(Option<u16>, String),
}

impl Worker {
    /// Delivers webhooks until `stop`, then lets the deliveries under way finish.
    pub(crate) async fn webhook_loop(
        self: Arc<Self>,
        consumer: PullConsumer,
        stop: CancellationToken,
    ) {
        let limit = Arc::new(Semaphore::new(DELIVERIES_AT_ONCE));
        let tracker = TaskTracker::new();
        let mut pulls = LongPulls::new(&consumer, "record changes for webhooks", &stop);
        while let Some(mut batch) = pulls.next(limit.available_permits().max(1)).await {
            while let Some(Ok(message)) = batch.next().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let worker = self.clone();
                tracker.spawn(async move {
                    worker.on_record_written(message).await;
                    drop(permit);
                });
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Acts on one write of the bucket: delivers the webhook of a finished record that
    /// is due for an attempt, and acknowledges the write once it needs nothing more.
    async fn on_record_written(&self, message: jetstream::Message) {
        let Some((id, record, revision)) = due_record(&message) else {
            return acknowledge(&message, AckKind::Ack).await;
        };
        if let Some(next) = record.webhook.as_ref().and_then(|w| w.next_attempt_at) {
            let left = (next - Utc::now()).to_std().unwrap_or_default();
            if !left.is_zero() {
                return acknowledge(&message, AckKind::Nak(Some(left))).await;
            }
        }
        match self.records.current(&id).await {
            // A newer revision (or none) took its place; that one comes through too.
            Ok((_, current)) if current != revision => {
                return acknowledge(&message, AckKind::Ack).await;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%id, %err, "record not readable; the delivery waits");
                return acknowledge(
                    &message,
                    AckKind::Nak(Some(std::time::Duration::from_secs(1))),
                )
                .await;
            }
        }
        let attempts = record.webhook.as_ref().map_or(0, |w| w.attempts) + 1;
        let attempt = self.deliver(&id, &record).await;
        let spec = &self.config.spec.webhooks;
        let now = Utc::now();
        let delivery = match attempt {
            Attempt::Delivered(status) => WebhookDelivery::delivered(attempts, status, now),
            Attempt::Failed(status, error) => {
                tracing::info!(%id, attempts, %error, "webhook not delivered");
                WebhookDelivery::failed(attempts, status, error, spec.max_attempts, now)
            }
        };
        let record = WorkRecord {
            webhook: Some(delivery),
            ..record
        };
        match self.records.write_delivery(&id, &record, revision).await {
            Ok(_) => acknowledge(&message, AckKind::Ack).await,
            Err(err) => {
                tracing::warn!(%id, %err, "delivery state not written; trying the delivery again");
                acknowledge(
                    &message,
                    AckKind::Nak(Some(std::time::Duration::from_secs(1))),
                )
                .await;
            }
        }
    }

    /// One attempt: the record, as GET shows it, POSTed to its callback URL if the pool
    /// still allows that URL.
    async fn deliver(&self, id: &WorkId, record: &WorkRecord) -> Attempt {
        let Some(signer) = &self.signer else {
            return Attempt::Failed(None, format!("{WEBHOOK_KEY_ENV} is not set"));
        };
        let spec = &self.config.spec.webhooks;
        let url = match record.callback_url.as_deref().map(|url| spec.allow(url)) {
            Some(Ok(url)) => url,
            Some(Err(err)) => return Attempt::Failed(None, err.to_string()),
            None => return Attempt::Failed(None, "no callback_url".into()),
        };
        let view = WorkView {
            id: id.clone(),
            record: WorkRecord {
                webhook: None,
                ..record.clone()
            },
        };
        let body = match serde_json::to_vec(&view) {
            Ok(body) => body,
            Err(err) => return Attempt::Failed(None, err.to_string()),
        };
        let signed = signature(&signer.key, Utc::now().timestamp(), &body);
        let sent = signer
            .client
            .post(url)
            .timeout(spec.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signed)
            .header(DELIVERY_HEADER, id.as_str())
            .body(body)
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => {
                Attempt::Delivered(answer.status().as_u16())
            }
            Ok(answer) => {
                let status = answer.status();
                Attempt::Failed(Some(status.as_u16()), format!("answered {status}"))
            }
            Err(err) => Attempt::Failed(None, crate::handlers::with_causes(&err)),
        }
    }
}

/// The work id, record and revision of a bucket write that may need a delivery: a
/// finished record with a callback whose delivery is not settled.
fn due_record(message: &jetstream::Message) -> Option<(WorkId, WorkRecord, u64)> {
    let id: WorkId = message.subject.rsplit('.').next()?.parse().ok()?;
    let record = WorkRecord::from_json(&message.payload).ok()?;
    let settled = record
        .webhook
        .as_ref()
        .is_some_and(WebhookDelivery::is_settled);
    if !record.status.is_terminal() || record.callback_url.is_none() || settled {
        return None;
    }
    let revision = message.info().ok()?.stream_sequence;
    Some((id, record, revision))
}
