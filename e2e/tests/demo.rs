//! The original sketch's demo, against a real nats-server and the real binaries.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

#[tokio::test]
async fn accepted_pending_working_worked_then_gone_after_the_ttl() {
    let spec = PoolSpec::from_json(r#"{"resultTTL": "2s"}"#).expect("spec");
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool starts");

    let answer = pool.post(&json!({"data": "foo"})).await.expect("post");
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.str("status"), "accepted");
    assert_eq!(answer.str("accepted_by"), "demo-api-0");
    let id = answer.str("callback").to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(
        answer.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/api/v1/work/{id}").as_str())
    );

    // No worker yet: the work waits in the queue.
    let pending = pool.get(&id).await.expect("get");
    assert_eq!(
        (pending.status, pending.str("status")),
        (200, "pending"),
        "{pending:?}"
    );
    assert_eq!(pending.body["attempts"], json!(0));

    pool.add_worker().await.expect("worker starts");
    let working = pool
        .wait_status(&id, "working", Duration::from_secs(10))
        .await
        .expect("working");
    assert_eq!(working.str("worker"), "demo-worker-0");
    assert_eq!(working.body["attempts"], json!(1));

    // The builtin sleep pauses three seconds, as the original demo did.
    let worked = pool
        .wait_status(&id, "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(worked.body["result"], json!({"slept_ms": 3000}));
    assert!(worked.body["created_at"].is_string() && worked.body["updated_at"].is_string());

    // Long-poll on finished work answers at once.
    let polled = pool
        .send(
            pool.http
                .get(format!("{}/api/v1/work/{id}?wait=30s", pool.api_url(0))),
        )
        .await
        .expect("long poll");
    assert_eq!(polled.str("status"), "worked");

    // No janitor: the record expires after the pool's result TTL.
    let gone = pool
        .wait_for(&id, Duration::from_secs(10), |answer| answer.status == 404)
        .await
        .expect("expires");
    assert_eq!(gone.str("code"), "not_found");
    assert!(gone.str("error").contains(&id));
}

#[tokio::test]
async fn long_poll_answers_as_soon_as_the_work_ends() {
    let spec =
        PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "sleep"}}}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool starts");
    let answer = pool
        .post(&json!({"data": {"ms": 700}}))
        .await
        .expect("post");
    let id = answer.str("callback").to_owned();
    let started = std::time::Instant::now();
    let polled = pool
        .send(
            pool.http
                .get(format!("{}/api/v1/work/{id}?wait=20s", pool.api_url(0))),
        )
        .await
        .expect("long poll");
    assert_eq!(polled.str("status"), "worked", "{polled:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the long poll waited for its deadline"
    );

    // A long poll on running work that outlasts the deadline answers with the current state.
    let slow = pool
        .post(&json!({"data": {"ms": 5000}}))
        .await
        .expect("post");
    let slow_id = slow.str("callback").to_owned();
    let polled = pool
        .send(pool.http.get(format!(
            "{}/api/v1/work/{slow_id}?wait=300ms",
            pool.api_url(0)
        )))
        .await
        .expect("long poll");
    assert!(
        ["pending", "working"].contains(&polled.str("status")),
        "{polled:?}"
    );
}
