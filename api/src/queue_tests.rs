//! The queue's submit path against a real nats-server, with two POSTs of the same work
//! interleaved by hand where a test through HTTP could only hope to hit the interleaving.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use serde_json::json;
use workpool_core::message::WorkSubmission;
use workpool_core::{PoolNames, PoolSpec, WorkStatus};
use workpool_local_cluster::nats::NatsServer;

use super::{Queue, Submitted, new_message};

async fn provisioned_queue(nats: &NatsServer) -> Queue {
    let names = PoolNames::new("default", "demo").expect("names");
    let spec = PoolSpec::from_json("{}").expect("spec");
    let client = nats.client().await.expect("client");
    workpool_runtime::provision::provision(
        &async_nats::jetstream::new(client.clone()),
        &names,
        &spec,
    )
    .await
    .expect("provision");
    Queue::bind(client, names, &spec, 16).await.expect("bind")
}

/// POST A creates the record; POST B of the same work finds it before A's message lands
/// and publishes that generation itself; A's publish is then a duplicate. The work is
/// queued, so A is accepted and the record stays. Before the fix A dropped the record
/// and answered 503, and the queued message, finding no record, was acked unrun: B's
/// client had been answered 200 `pending` for work that was lost.
#[tokio::test]
async fn a_post_whose_generation_a_concurrent_post_queued_is_accepted_and_keeps_its_record() {
    let nats = NatsServer::start().await.expect("nats");
    let queue = provisioned_queue(&nats).await;
    let work: WorkSubmission =
        serde_json::from_value(json!({"data": {"race": "same work, twice"}})).expect("work");
    let id = work.id(None);

    let message = new_message(&id, &work, "api-a");
    let revision = queue
        .create_pending(&id, &message.pending_record())
        .await
        .expect("A creates the record");
    let b = queue.submit(&id, &work, "api-b").await.expect("B's POST");
    assert!(
        matches!(&b, Submitted::Existing(record) if record.status == WorkStatus::Pending),
        "B finds the work pending"
    );
    let a = queue.queue_new(&message, revision).await;

    assert!(matches!(a, Ok(Submitted::Accepted)), "A is accepted: {a:?}");
    let (record, current) = queue
        .record(&id)
        .await
        .expect("read")
        .expect("the record stays");
    assert_eq!((record.status, current), (WorkStatus::Pending, revision));
    assert!(
        queue.is_queued(&message).await.expect("stream"),
        "the work is queued once"
    );
}
