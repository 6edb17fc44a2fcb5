//! What one job may cost a worker: its result is at most `queue.maxPayloadBytes`, and an
//! `exec` program's input and output of any size cannot block each other.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

#[tokio::test]
async fn an_exec_result_over_the_limit_fails_after_one_attempt() {
    // 9 MiB: over the pool's limit and over the test server's 8 MB max_payload, so the
    // result could never be stored; retrying it would only repeat the work.
    let spec = PoolSpec::from_json(
        r#"{"queue": {"maxPayloadBytes": 65536},
            "worker": {"maxAttempts": 3, "backoff": ["100ms"], "timeout": "20s",
            "handler": {"exec": {"command": ["sh", "-c", "head -c 9437184 /dev/zero | tr '\\0' x"]}}}}"#,
    )
    .expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let client = pool.nats.client().await.expect("client");
    let mut retried = client
        .subscribe(pool.names.event_filter("work", "retried"))
        .await
        .expect("subscribe");
    let mut failed_events = client
        .subscribe(pool.names.event_filter("work", "failed"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let id = pool
        .submit(&json!({"data": "print a lot"}))
        .await
        .expect("submit");
    let failed = pool
        .wait_status(&id, "failed", Duration::from_secs(30))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", pool.logs()));
    assert_eq!(failed.body["attempts"], json!(1), "{:?}", failed.body);
    assert_eq!(
        failed.str("error"),
        "result too large: more than 65536 bytes (queue.maxPayloadBytes)"
    );
    assert!(failed.body.get("result").is_none(), "{:?}", failed.body);

    let event = tokio::time::timeout(Duration::from_secs(5), failed_events.next())
        .await
        .expect("failed event")
        .expect("event");
    let event: Value = serde_json::from_slice(&event.payload).expect("json");
    assert_eq!(event["attempt"], json!(1));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), retried.next())
            .await
            .is_err(),
        "the oversized result was retried"
    );
    assert_eq!(pool.queued_messages().await.expect("stream state"), 0);
}

#[tokio::test]
async fn an_exec_program_echoing_a_megabyte_of_input_works() {
    // `cat` echoes as it reads: with 1 MiB in and out, both pipes fill unless the worker
    // writes the input while it reads the output. The timeout is generous; a deadlock
    // would reach it.
    let spec = PoolSpec::from_json(
        r#"{"queue": {"maxPayloadBytes": 2097152},
            "worker": {"maxAttempts": 1, "timeout": "20s",
            "handler": {"exec": {"command": ["cat"]}}}}"#,
    )
    .expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let data = "m".repeat(1024 * 1024);
    let id = pool.submit(&json!({"data": data})).await.expect("submit");
    let worked = pool
        .wait_for(&id, Duration::from_secs(30), |answer| {
            matches!(answer.str("status"), "worked" | "failed")
        })
        .await
        .expect("finished");
    assert_eq!(
        worked.str("status"),
        "worked",
        "error: {}",
        worked.str("error")
    );
    assert_eq!(worked.body["attempts"], json!(1));
    assert_eq!(worked.body["result"]["id"], json!(id));
    assert!(
        worked.body["result"]["data"] == json!(data),
        "the echoed data differs"
    );
}
