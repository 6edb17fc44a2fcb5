//! `provision` against a real server: idempotent, follows spec changes, refuses another
//! partition count while keyed work is queued, and `deprovision` removes everything.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use workpool_core::{PoolNames, PoolSpec};
use workpool_local_cluster::nats::NatsServer;
use workpool_runtime::provision::{ProvisionError, deprovision, provision};

async fn consumer_names(js: &jetstream::Context, names: &PoolNames) -> Vec<String> {
    let stream = js.get_stream(names.stream()).await.expect("stream");
    let mut list: Vec<String> = stream.consumer_names().try_collect().await.expect("names");
    list.sort();
    list
}

#[tokio::test]
async fn provisioning_is_idempotent_and_follows_the_spec() {
    let server = NatsServer::start().await.expect("nats");
    let js = jetstream::new(server.client().await.expect("client"));
    let names = PoolNames::new("team-a", "images").expect("names");
    let mut spec = PoolSpec::from_json(r#"{"worker": {"partitions": 3}}"#).expect("spec");

    provision(&js, &names, &spec)
        .await
        .expect("first provision");
    provision(&js, &names, &spec)
        .await
        .expect("second provision changes nothing");
    assert_eq!(
        consumer_names(&js, &names).await,
        [
            "delayed",
            "keyed-0",
            "keyed-1",
            "keyed-2",
            "workers",
            "workers-high",
            "workers-low"
        ]
    );

    spec.queue.max_pending = 42;
    spec.result_ttl = Duration::from_secs(5);
    spec.worker.ack_wait = Duration::from_secs(3);
    spec.worker.partitions = 2;
    provision(&js, &names, &spec).await.expect("update");
    let stream = js
        .get_stream(names.stream())
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    assert_eq!(stream.max_messages, 42);
    let bucket = js
        .get_key_value(names.bucket())
        .await
        .expect("bucket")
        .status()
        .await
        .expect("status");
    // No age limit: finished records expire by their own TTL, open ones never.
    assert_eq!(bucket.max_age(), Duration::ZERO);
    let work = js.get_stream(names.stream()).await.expect("stream");
    let consumer = work
        .consumer_info("workers")
        .await
        .expect("consumer")
        .config
        .clone();
    assert_eq!(consumer.ack_wait, Duration::from_secs(3));
    assert_eq!(
        consumer_names(&js, &names).await,
        [
            "delayed",
            "keyed-0",
            "keyed-1",
            "workers",
            "workers-high",
            "workers-low"
        ],
        "surplus partition removed"
    );

    deprovision(&js, &names).await.expect("deprovision");
    deprovision(&js, &names)
        .await
        .expect("deprovision again is fine");
    assert!(js.get_stream(names.stream()).await.is_err());
    assert!(js.get_stream(names.dead_letter_stream()).await.is_err());
    assert!(js.get_key_value(names.bucket()).await.is_err());
}

/// Publishes one keyed message to partition `partition`.
async fn publish_keyed(js: &jetstream::Context, names: &PoolNames, partition: u32) {
    let id = workpool_core::WorkId::from_idempotency_key(&partition.to_string());
    js.publish(names.keyed_subject(partition, &id, "default"), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
}

#[tokio::test]
async fn another_partition_count_is_refused_while_keyed_work_is_queued() {
    let server = NatsServer::start().await.expect("nats");
    let js = jetstream::new(server.client().await.expect("client"));
    let names = PoolNames::new("default", "demo").expect("names");
    let mut spec = PoolSpec::from_json(r#"{"worker": {"partitions": 2}}"#).expect("spec");
    provision(&js, &names, &spec).await.expect("provision");
    // Work in a partition both counts keep still changes place: hash mod 2 vs mod 3.
    publish_keyed(&js, &names, 0).await;
    for partitions in [1, 3] {
        spec.worker.partitions = partitions;
        let err = provision(&js, &names, &spec)
            .await
            .expect_err("another count with queued keyed work");
        assert!(err.is_refusal(), "{err}");
        assert!(
            matches!(err, ProvisionError::PartitionCountChanged { existing: 2, wanted, pending: 1 }
                if wanted == partitions as usize),
            "{partitions} partitions: {err:?}"
        );
    }
    assert_eq!(
        consumer_names(&js, &names).await,
        [
            "delayed",
            "keyed-0",
            "keyed-1",
            "workers",
            "workers-high",
            "workers-low"
        ],
        "a refusal changes no consumer"
    );
    spec.worker.partitions = 2;
    provision(&js, &names, &spec)
        .await
        .expect("the same count with queued work is fine");
}

/// A bucket made by an earlier version (its age limit the pool's `resultTTL`, no
/// per-message TTL) is updated in place: no age limit, per-message TTL on, its records
/// kept.
#[tokio::test]
async fn an_earlier_bucket_gets_per_record_expiry_and_keeps_its_records() {
    let server = NatsServer::start().await.expect("nats");
    let js = jetstream::new(server.client().await.expect("client"));
    let names = PoolNames::new("team-a", "older").expect("names");
    let spec = PoolSpec::default();
    let earlier = jetstream::kv::Config {
        bucket: names.bucket(),
        history: 1,
        max_age: spec.result_ttl,
        ..Default::default()
    };
    let kv = js.create_key_value(earlier).await.expect("earlier bucket");
    kv.put("kept", "pending".into()).await.expect("a record");
    provision(&js, &names, &spec).await.expect("provision");
    let config = js
        .get_stream(format!("KV_{}", names.bucket()))
        .await
        .expect("bucket stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    assert_eq!(config.max_age, Duration::ZERO);
    assert!(config.allow_message_ttl, "{config:?}");
    assert_eq!(
        config.subject_delete_marker_ttl,
        Some(workpool_core::expiry::EXPIRY_MARKER_TTL)
    );
    let kv = js.get_key_value(names.bucket()).await.expect("bucket");
    assert_eq!(
        kv.get("kept").await.expect("get").as_deref(),
        Some(&b"pending"[..])
    );
}
