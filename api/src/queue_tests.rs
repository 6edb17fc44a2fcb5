//! The queue's submit path against a real nats-server: the message is the only write of
//! a POST, so the stream itself must keep work from being queued twice, and a message
//! whose work is finished must not block the same content once its record expired.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::json;
use workpool_core::message::WorkSubmission;
use workpool_core::{PoolNames, PoolSpec, WorkId, WorkStatus};
use workpool_local_cluster::nats::NatsServer;
use workpool_runtime::records::RecordStore;

use workpool_core::ids::IdScope;

use super::{Accepted, Queue, Submitted};

/// Accepted by `pod`, for no tenant.
fn accepted_by(pod: &str) -> Accepted<'_> {
    Accepted {
        pod,
        tenant: None,
        trace: None,
    }
}

async fn provisioned_queue(nats: &NatsServer, spec: &str) -> Queue {
    let names = PoolNames::new("default", "demo").expect("names");
    let spec = PoolSpec::from_json(spec).expect("spec");
    let client = nats.client().await.expect("client");
    workpool_runtime::provision::provision(
        &async_nats::jetstream::new(client.clone()),
        &names,
        &spec,
    )
    .await
    .expect("provision");
    Queue::bind(client, names, &spec, None, 16)
        .await
        .expect("bind")
}

fn work(value: serde_json::Value) -> WorkSubmission {
    serde_json::from_value(value).expect("work")
}

async fn messages(queue: &Queue) -> u64 {
    queue
        .stream
        .clone()
        .info()
        .await
        .expect("info")
        .state
        .messages
}

fn accepted(submitted: &Submitted) -> bool {
    matches!(submitted, Submitted::Accepted)
}

/// Eight POSTs of the same work at once: one `202`, seven `200 pending`, one message.
#[tokio::test]
async fn concurrent_posts_of_the_same_work_queue_it_once() {
    let nats = NatsServer::start().await.expect("nats");
    let queue = provisioned_queue(&nats, "{}").await;
    let work = work(json!({"data": {"race": "same work, eight times"}}));
    let id = work.id(IdScope::default(), None);
    let posts = (0..8).map(|n| {
        let (queue, work, id) = (queue.clone(), work.clone(), id.clone());
        tokio::spawn(async move {
            queue
                .submit(&id, &work, accepted_by(&format!("api-{n}")))
                .await
        })
    });
    let answers: Vec<Submitted> = futures::future::join_all(posts)
        .await
        .into_iter()
        .map(|answer| answer.expect("task").expect("answered"))
        .collect();
    assert_eq!(
        answers.iter().filter(|a| accepted(a)).count(),
        1,
        "{answers:?}"
    );
    assert!(answers.iter().all(|answer| match answer {
        Submitted::Accepted => true,
        Submitted::Existing(record) => record.status == WorkStatus::Pending,
    }));
    assert_eq!(messages(&queue).await, 1);
    let (record, _) = queue.record(&id).await.expect("read").expect("known");
    assert_eq!(record.status, WorkStatus::Pending, "read from the stream");
}

/// An `Idempotency-Key` POSTed again with another `key` travels on another subject. Once
/// the stream's dedupe window (here `resultTTL`, 1 s) is over, only a look in the stream
/// tells that the work is queued already.
#[tokio::test]
async fn an_idempotency_key_again_with_another_key_is_the_queued_work() {
    let nats = NatsServer::start().await.expect("nats");
    let queue = provisioned_queue(&nats, r#"{"resultTTL": "1s"}"#).await;
    let first = work(json!({"data": 1, "key": "customer-7"}));
    let id = first.id(IdScope::default(), Some("order-7"));
    let submitted = queue
        .submit(&id, &first, accepted_by("api-0"))
        .await
        .expect("post");
    assert!(accepted(&submitted));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = work(json!({"data": 2}));
    let submitted = queue
        .submit(&id, &again, accepted_by("api-0"))
        .await
        .expect("again");
    assert!(
        matches!(&submitted, Submitted::Existing(record) if record.key.as_deref() == Some("customer-7")),
        "{submitted:?}"
    );
    assert_eq!(messages(&queue).await, 1, "queued once");
}

/// A worker wrote the outcome and died before acking: the message stays. Once the
/// record has expired, the same content is new work; the finished message is removed
/// and the new one queued (before, the stream's one-per-subject rule would have
/// answered `200 pending` for work that never runs).
#[tokio::test]
async fn a_finished_message_never_acked_gives_way_to_the_same_content_after_expiry() {
    let nats = NatsServer::start().await.expect("nats");
    let queue = provisioned_queue(&nats, r#"{"resultTTL": "1s"}"#).await;
    let work = work(json!({"data": {"finished": "but never acked"}}));
    let id = work.id(IdScope::default(), None);
    assert!(accepted(
        &queue
            .submit(&id, &work, accepted_by("api-0"))
            .await
            .expect("post")
    ));
    finish_without_ack(&queue, &id).await;
    let (worked, _) = queue.record(&id).await.expect("read").expect("worked");
    assert_eq!(worked.status, WorkStatus::Worked, "not the stale message");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(queue.record(&id).await.expect("read").is_none(), "expired");

    let again = queue
        .submit(&id, &work, accepted_by("api-0"))
        .await
        .expect("again");
    assert!(accepted(&again), "{again:?}");
    assert_eq!(messages(&queue).await, 1, "only the new message");
    let (pending, _) = queue.record(&id).await.expect("read").expect("queued");
    assert_eq!(pending.status, WorkStatus::Pending);
    assert!(pending.created_at > worked.created_at, "a new generation");
}

/// Writes the `worked` record a worker would for the queued message of `id`.
async fn finish_without_ack(queue: &Queue, id: &WorkId) {
    let (mut record, revision) = queue.record(id).await.expect("read").expect("queued");
    record
        .advance(WorkStatus::Worked, chrono::Utc::now())
        .expect("forward");
    let store = RecordStore::new(queue.kv.clone(), queue.js.clone(), queue.result_ttl);
    store
        .update(id.as_str(), record.to_json().into(), revision, &record)
        .await
        .expect("outcome written");
}
