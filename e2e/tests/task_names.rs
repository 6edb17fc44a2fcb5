//! Task names in the `<service>.<entity>.<request>` convention, against a real nats-server
//! and the real api and worker: accepted, carried into the subjects of the work and its
//! events (so NATS wildcards filter by them), and shown per task in metrics.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_core::message::WorkMessage;
use workpool_e2e::pool::TestPool;

/// The next message of `subscriber`, as JSON, within 10 s.
async fn next_json(subscriber: &mut async_nats::Subscriber) -> (String, Value) {
    let message = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .expect("a message within 10 s")
        .expect("subscription open");
    let body = serde_json::from_slice(&message.payload).expect("JSON");
    (message.subject.to_string(), body)
}

#[tokio::test]
async fn dotted_task_names_travel_in_subjects_and_label_metrics() {
    let spec = PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).unwrap();
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let client = pool.nats.client().await.expect("client");
    let prefix = format!("wp.{}.{}", pool.names.namespace, pool.names.pool);
    let subscribe = |subject: String| {
        let client = client.clone();
        async move { client.subscribe(subject).await.expect("subscribe") }
    };
    // Work of one service, unkeyed and keyed, and its `worked` events.
    let mut work = subscribe(format!("{prefix}.work.*.addressing.>")).await;
    let mut keyed = subscribe(format!("{prefix}.keyed.*.*.addressing.>")).await;
    let mut worked = subscribe(format!("{prefix}.events.work.worked.addressing.>")).await;
    client.flush().await.expect("flush");

    let other = pool
        .submit(&json!({"data": 0, "task": "billing.invoice.send"}))
        .await
        .expect("other service");
    let unkeyed = pool
        .submit(&json!({"data": 1, "task": "addressing.address.reconcile"}))
        .await
        .expect("unkeyed");
    let with_key = pool
        .submit(&json!({"data": 2, "task": "addressing.address.verify", "key": "k"}))
        .await
        .expect("keyed");

    let (subject, message) = next_json(&mut work).await;
    assert_eq!(message["id"], json!(unkeyed), "{subject}");
    assert!(
        subject.ends_with(".addressing.address.reconcile"),
        "{subject}"
    );
    let (_, message) = next_json(&mut keyed).await;
    assert_eq!(message["id"], json!(with_key));
    let mut done = Vec::new();
    for _ in 0..2 {
        let (subject, event) = next_json(&mut worked).await;
        done.push((subject, event["id"].as_str().unwrap().to_owned()));
    }
    done.sort_by(|a, b| a.0.cmp(&b.0));
    let ends: Vec<(&str, &str)> = done
        .iter()
        .map(|(s, id)| (s.rsplit_once("worked.").unwrap().1, id.as_str()))
        .collect();
    assert_eq!(
        ends,
        [
            ("addressing.address.reconcile", unkeyed.as_str()),
            ("addressing.address.verify", with_key.as_str())
        ]
    );
    let billed = pool
        .wait_status(&other, "worked", Duration::from_secs(10))
        .await;
    assert_eq!(billed.expect("worked").str("task"), "billing.invoice.send");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), worked.next())
            .await
            .is_err(),
        "another service's events do not match the filter"
    );

    let metrics = pool
        .http
        .get(format!("{}/metrics", pool.api_url(0)))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"task="addressing.address.reconcile""#),
        "{metrics}"
    );

    for bad in ["a..b", ".a", "a.", "a.*", "a b"] {
        let answer = pool
            .post(&json!({"data": 3, "task": bad}))
            .await
            .expect("post");
        assert_eq!(
            (answer.status, answer.str("code")),
            (400, "invalid_work"),
            "{bad:?}"
        );
    }
}

/// Keyed work queued before task names were in subjects (`keyed.<partition>.<id>`) is
/// still delivered after an upgrade: the partitions' consumers take both layouts.
#[tokio::test]
async fn keyed_work_queued_in_the_earlier_subject_layout_still_runs() {
    let spec = PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).unwrap();
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let id = workpool_core::WorkId::from_idempotency_key("queued before the upgrade");
    let message = WorkMessage {
        id: id.clone(),
        task: "default".into(),
        key: Some("k".into()),
        data: json!("old"),
        accepted_by: "demo-api-0".into(),
        created_at: chrono::Utc::now(),
        tenant: None,
        ttl: None,
        run_at: None,
        priority: Default::default(),
        callback_url: None,
        group: None,
        parked: 0,
        trace: None,
    };
    let partition = workpool_core::names::partition_of("k", pool.spec.worker.partitions);
    let prefix = format!("wp.{}.{}", pool.names.namespace, pool.names.pool);
    let js = async_nats::jetstream::new(pool.nats.client().await.expect("client"));
    js.publish(
        format!("{prefix}.keyed.{partition}.{id}"),
        message.to_json().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let worked = pool
        .wait_status(id.as_str(), "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(worked.body["result"], json!("old"));
}
