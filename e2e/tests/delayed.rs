//! Delayed work (`delay` and `run_at` on POST) against a real nats-server and the real
//! api and worker: it never starts before its time, it survives restarts of the worker
//! and of NATS, it can be cancelled while it waits, and it is not queued twice.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::{Answer, TestPool};

/// A pool whose handler answers the time it started, in milliseconds since the epoch.
async fn clock_pool(workers: usize) -> TestPool {
    let spec = json!({"worker": {"handler": {"exec": {"command": ["date", "+%s%3N"]}}}});
    let spec = PoolSpec::from_json(&spec.to_string()).unwrap();
    TestPool::start(spec, 1, workers).await.expect("pool")
}

fn run_at(answer: &Answer) -> DateTime<Utc> {
    answer.str("run_at").parse().expect("run_at in the record")
}

/// Waits for the work to be worked and checks it started no earlier than `not_before`.
async fn started_on_time(pool: &TestPool, id: &str, not_before: DateTime<Utc>) {
    let worked = pool
        .wait_status(id, "worked", Duration::from_secs(30))
        .await
        .expect("worked");
    let started_ms = worked.body["result"].as_i64().expect("start time");
    assert!(
        started_ms >= not_before.timestamp_millis(),
        "started {started_ms} before {not_before}"
    );
}

#[tokio::test]
async fn delayed_work_waits_for_its_time_and_is_not_queued_twice() {
    let pool = clock_pool(1).await;
    let posted = pool
        .post(&json!({"data": "later", "delay": "2s"}))
        .await
        .expect("post");
    assert_eq!(posted.status, 202, "{posted:?}");
    let id = posted.str("callback").to_owned();
    let waiting = pool.get(&id).await.expect("get");
    assert_eq!(waiting.str("status"), "pending", "{waiting:?}");
    let not_before = run_at(&waiting);
    let again = pool
        .post(&json!({"data": "later", "delay": "2s"}))
        .await
        .expect("again");
    assert_eq!((again.status, again.str("status")), (200, "pending"));
    started_on_time(&pool, &id, not_before).await;

    // Keyed, at a time.
    let at = Utc::now() + chrono::Duration::seconds(2);
    let keyed = pool
        .submit(&json!({"data": "at", "key": "k", "run_at": at.to_rfc3339()}))
        .await
        .expect("keyed");
    started_on_time(&pool, &keyed, at).await;

    for bad in [
        json!({"data": 1, "delay": "soon"}),
        json!({"data": 1, "delay": "400days"}),
        json!({"data": 1, "delay": "1s", "run_at": at.to_rfc3339()}),
    ] {
        let refused = pool.post(&bad).await.expect("post");
        assert_eq!(
            (refused.status, refused.str("code")),
            (400, "invalid_work"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn delayed_work_survives_restarts_of_the_worker_and_of_nats() {
    let mut pool = clock_pool(1).await;
    let id = pool
        .submit(&json!({"data": "restarts", "delay": "4s"}))
        .await
        .expect("submit");
    let not_before = run_at(&pool.get(&id).await.expect("get"));
    // Its worker has taken the delayed message and handed it back; it dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pool.workers[0].process.kill();
    pool.nats.stop().await.expect("nats stops");
    pool.nats.start_again().await.expect("nats starts");
    pool.add_worker().await.expect("a new worker");
    started_on_time(&pool, &id, not_before).await;
}

#[tokio::test]
async fn delayed_work_cancelled_while_it_waits_never_runs() {
    let pool = clock_pool(1).await;
    let id = pool
        .submit(&json!({"data": "never", "delay": "2s"}))
        .await
        .expect("submit");
    let cancelled = pool.cancel(&id).await.expect("cancel");
    assert_eq!(
        (cancelled.status, cancelled.str("status")),
        (200, "cancelled")
    );
    assert_eq!(
        pool.queued_messages().await.expect("state"),
        0,
        "its message is gone"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pool.get(&id).await.expect("get").str("status"), "cancelled");
}
