//! The api's errors that need a real nats-server (a full queue, NATS down, auth on a real
//! server, nothing queued by a refusal), plus deduplication and cancellation. The answers
//! given before NATS are tested in-process in `api/src/router_tests.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::{Answer, TestPool};

fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.str("code"), code, "{answer:?}");
    assert!(
        !answer.str("error").is_empty(),
        "error text missing: {answer:?}"
    );
}

/// Each refusal's status and body are tested in-process (`api/src/router_tests.rs`); here,
/// through a real server, that a refused request queues nothing and that an id NATS has
/// no record of is a 404.
#[tokio::test]
async fn refused_requests_queue_nothing_and_an_unknown_id_is_404() {
    let spec = PoolSpec::from_json(r#"{"queue": {"maxPayloadBytes": 1024}}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let url = format!("{}/api/v1/work", pool.api_url(0));
    let post = |content_type: &'static str, body: String| {
        pool.http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
    };

    let refused = [
        (
            post("application/json", "{\"data\":".into()),
            400,
            "invalid_json",
        ),
        (
            post(
                "application/json",
                r#"{"data":1,"task":"no spaces"}"#.into(),
            ),
            400,
            "invalid_work",
        ),
        (
            post(
                "application/json",
                json!({"data": "x".repeat(2000)}).to_string(),
            ),
            413,
            "payload_too_large",
        ),
        (
            post("text/plain", r#"{"data":1}"#.into()),
            415,
            "unsupported_media_type",
        ),
    ];
    for (request, status, code) in refused {
        assert_error(&pool.send(request).await.expect("send"), status, code);
    }
    assert_error(
        &pool.get(&"0".repeat(32)).await.expect("get"),
        404,
        "not_found",
    );
    assert_eq!(pool.queued_messages().await.expect("stream state"), 0);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_keeps_no_record() {
    let spec = PoolSpec::from_json(r#"{"queue": {"maxPending": 2}}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 0).await.expect("pool");
    for n in 0..2 {
        assert_eq!(
            pool.post(&json!({"data": n})).await.expect("post").status,
            202
        );
    }
    let refused = pool.post(&json!({"data": 2})).await.expect("post");
    assert_error(&refused, 429, "queue_full");
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // The refused work left no pending record behind, so a retry starts afresh.
    let id = pool.content_id(&json!(2));
    assert_eq!(pool.get(id.as_str()).await.expect("get").status, 404);
}

#[tokio::test]
async fn nats_down_answers_503_with_retry_after_and_recovers() {
    let mut pool = TestPool::start(PoolSpec::default(), 1, 0)
        .await
        .expect("pool");
    pool.nats.stop().await.expect("nats stops");
    let down = pool
        .post(&json!({"data": "while down"}))
        .await
        .expect("post");
    assert_error(&down, 503, "unavailable");
    assert_eq!(
        down.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_error(
        &pool.get(&"0".repeat(32)).await.expect("get"),
        503,
        "unavailable",
    );
    let ready = pool
        .send(pool.http.get(format!("{}/readyz", pool.api_url(0))))
        .await
        .expect("readyz");
    assert_eq!(ready.status, 503);

    pool.nats.start_again().await.expect("nats restarts");
    let mut answer = None;
    for _ in 0..100 {
        let attempt = pool.post(&json!({"data": "after"})).await.expect("post");
        if attempt.status == 202 {
            answer = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answer.is_some(),
        "the api did not recover after NATS came back"
    );
}

#[tokio::test]
async fn auth_on_requires_a_valid_bearer_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cret\n").expect("write secret");
    let env = vec![(
        "WORKPOOL_JWT_SECRET_FILE".to_owned(),
        secret_file.display().to_string(),
    )];
    let pool = TestPool::start_with_api_env(PoolSpec::default(), 1, 0, env)
        .await
        .expect("pool");
    let url = format!("{}/api/v1/work", pool.api_url(0));
    let body = json!({"data": "secret work"});

    assert_error(&pool.post(&body).await.expect("post"), 401, "unauthorized");
    let wrong = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "me", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"other"),
    )
    .expect("token");
    assert_error(
        &pool
            .send(pool.http.post(&url).json(&body).bearer_auth(&wrong))
            .await
            .expect("post"),
        401,
        "unauthorized",
    );
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "me", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
    )
    .expect("token");
    let accepted = pool
        .send(pool.http.post(&url).json(&body).bearer_auth(&good))
        .await
        .expect("post");
    assert_eq!(accepted.status, 202, "{accepted:?}");
    // Health and metrics stay open for probes and Prometheus.
    assert_eq!(
        pool.send(pool.http.get(format!("{}/healthz", pool.api_url(0))))
            .await
            .expect("healthz")
            .status,
        200
    );
}

#[tokio::test]
async fn the_same_work_twice_gets_one_id_and_runs_once() {
    let spec =
        PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).expect("spec");
    let mut pool = TestPool::start(spec, 2, 0).await.expect("pool");
    let client = pool.nats.client().await.expect("client");
    let mut started = client
        .subscribe(pool.names.event_filter("work", "started"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let first = pool
        .post(&json!({"data": {"a": 1, "b": 2}}))
        .await
        .expect("post");
    assert_eq!(first.status, 202);
    // Same content with other key order, through the other api pod.
    let second = pool
        .send(
            pool.http
                .post(format!("{}/api/v1/work", pool.api_url(1)))
                .json(&json!({"data": {"b": 2, "a": 1}})),
        )
        .await
        .expect("post");
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.str("callback"), first.str("callback"));
    assert_eq!(second.str("status"), "pending");
    assert_eq!(second.str("accepted_by"), "demo-api-0");

    // Idempotency-Key: different content, one id.
    let url = format!("{}/api/v1/work", pool.api_url(0));
    let keyed_a = pool
        .send(
            pool.http
                .post(&url)
                .header("idempotency-key", "order-7")
                .json(&json!({"data": 1})),
        )
        .await
        .expect("post");
    let keyed_b = pool
        .send(
            pool.http
                .post(&url)
                .header("idempotency-key", "order-7")
                .json(&json!({"data": 2})),
        )
        .await
        .expect("post");
    assert_eq!((keyed_a.status, keyed_b.status), (202, 200));
    assert_eq!(keyed_a.str("callback"), keyed_b.str("callback"));

    pool.add_worker().await.expect("worker");
    let done = pool
        .wait_status(first.str("callback"), "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(done.body["result"], json!({"a": 1, "b": 2}));
    assert_eq!(done.body["attempts"], json!(1));
    let keyed = pool
        .wait_status(keyed_a.str("callback"), "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(
        keyed.body["result"],
        json!(1),
        "the first submission's data wins"
    );

    // Re-submitting finished work answers its status and does not run it again.
    let again = pool
        .post(&json!({"data": {"a": 1, "b": 2}}))
        .await
        .expect("post");
    assert_eq!((again.status, again.str("status")), (200, "worked"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut starts = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), started.next()).await {
        starts += 1;
    }
    assert_eq!(starts, 2, "two distinct works, each started once");
}

#[tokio::test]
async fn a_pending_record_whose_message_was_lost_is_queued_again_on_resubmit() {
    let spec =
        PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).expect("spec");
    let mut pool = TestPool::start(spec, 1, 1).await.expect("pool");
    // An api of an earlier version (which recorded `pending`, then published) that died
    // between the two left exactly this. The POST queues the work anew, on top of it.
    let data = json!("orphan");
    let id = pool.content_id(&data);
    let record =
        workpool_core::WorkRecord::pending("default", None, "demo-api-9", chrono::Utc::now());
    let kv = async_nats::jetstream::new(pool.nats.client().await.expect("client"))
        .get_key_value(pool.names.bucket())
        .await
        .expect("bucket");
    kv.create(id.as_str(), record.to_json().into())
        .await
        .expect("create");

    let answer = pool.post(&json!({"data": "orphan"})).await.expect("post");
    assert_eq!((answer.status, answer.str("callback")), (202, id.as_str()));
    let done = pool
        .wait_status(id.as_str(), "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(done.body["result"], json!("orphan"));
    pool.add_worker().await.expect("second worker");
}

#[tokio::test]
async fn queued_work_can_be_cancelled_and_is_then_skipped() {
    let spec =
        PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).expect("spec");
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let queued = pool
        .post(&json!({"data": "cancel me"}))
        .await
        .expect("post");
    let id = queued.str("callback").to_owned();
    let url = format!("{}/api/v1/work/{id}", pool.api_url(0));
    let cancelled = pool.send(pool.http.delete(&url)).await.expect("delete");
    assert_eq!(
        (cancelled.status, cancelled.str("status")),
        (200, "cancelled"),
        "{cancelled:?}"
    );
    // A DELETE again (as a retry after a 503 would be) answers the same.
    let again = pool.send(pool.http.delete(&url)).await.expect("delete");
    assert_eq!(
        (again.status, again.str("status")),
        (200, "cancelled"),
        "{again:?}"
    );
    assert_error(
        &pool
            .send(pool.http.delete(format!(
                "{}/api/v1/work/{}",
                pool.api_url(0),
                "1".repeat(32)
            )))
            .await
            .expect("delete"),
        404,
        "not_found",
    );

    pool.add_worker().await.expect("worker");
    let other = pool.post(&json!({"data": "run me"})).await.expect("post");
    pool.wait_status(other.str("callback"), "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    let still = pool.get(&id).await.expect("get");
    assert_eq!(
        (still.str("status"), still.body["attempts"].clone()),
        ("cancelled", json!(0))
    );
    let stream = pool.queued_messages().await.expect("stream state");
    assert_eq!(stream, 0, "the cancelled message was acked away");
}

#[tokio::test]
async fn running_work_is_aborted_by_its_worker_and_ends_cancelled() {
    let spec = PoolSpec::from_json(r#"{"worker": {"timeout": "60s"}}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 30000}}))
        .await
        .expect("submit");
    pool.wait_status(&id, "working", Duration::from_secs(10))
        .await
        .expect("working");
    let started = std::time::Instant::now();
    let url = format!("{}/api/v1/work/{id}", pool.api_url(0));
    let cancelled = pool.send(pool.http.delete(&url)).await.expect("delete");
    assert_eq!(
        (cancelled.status, cancelled.str("status")),
        (200, "cancelled"),
        "{cancelled:?}"
    );
    assert_eq!(cancelled.str("worker"), "demo-worker-0");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 30 s handler was aborted, not waited for"
    );
    // Terminated, not redelivered: the stream is empty and the worker is free again.
    // The worker records `cancelled` first and terminates the message right after.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut stream = pool.queued_messages().await.expect("stream state");
    while stream > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream = pool.queued_messages().await.expect("stream state");
    }
    assert_eq!(stream, 0, "the cancelled message is gone from the queue");
    let next = pool
        .submit(&json!({"data": {"ms": 10}}))
        .await
        .expect("submit");
    pool.wait_status(&next, "worked", Duration::from_secs(10))
        .await
        .expect("the worker carries on");
    assert_eq!(pool.get(&id).await.expect("get").str("status"), "cancelled");
    let again = pool.send(pool.http.delete(&url)).await.expect("delete");
    assert_eq!(
        (again.status, again.str("status")),
        (200, "cancelled"),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_message_no_worker_can_read_is_dead_lettered_not_lost() {
    let pool = TestPool::start(PoolSpec::default(), 1, 1)
        .await
        .expect("pool");
    let js = async_nats::jetstream::new(pool.nats.client().await.expect("client"));
    let id: workpool_core::WorkId = "0123456789abcdef0123456789abcdef".parse().expect("id");
    js.publish(pool.names.work_subject("default", &id), "not json".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let dead = js
        .get_stream(pool.names.dead_letter_stream())
        .await
        .expect("dlq");
    let subject = pool.names.dead_letter_unreadable_subject();
    let mut letter = None;
    for _ in 0..100 {
        if let Ok(message) = dead.get_last_raw_message_by_subject(&subject).await {
            letter = Some(message);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter = letter.expect("dead-lettered");
    assert_eq!(&letter.payload[..], b"not json");
    let work = pool.queued_messages().await.expect("stream state");
    assert_eq!(work, 0);
}
