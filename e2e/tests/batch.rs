//! `POST /api/v1/work/batch` on the real binaries: each item is answered in order, with
//! a single POST's dedupe and errors, and every accepted item runs once.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

const WAIT: Duration = Duration::from_secs(30);

async fn echo_pool() -> TestPool {
    let spec = PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#);
    TestPool::start(spec.expect("spec"), 1, 1)
        .await
        .expect("pool")
}

fn batch_url(pool: &TestPool) -> String {
    format!("{}/api/v1/work/batch", pool.api_url(0))
}

#[tokio::test]
async fn each_item_is_answered_in_order_with_a_single_posts_rules() {
    let pool = echo_pool().await;
    let earlier = pool
        .submit(&json!({"data": "posted before"}))
        .await
        .expect("post");
    let answer = pool
        .send(pool.http.post(batch_url(&pool)).json(&json!([
            {"data": "posted before"},
            {"data": "new"},
            {"data": "new"},
            {"data": 1, "bogus": true},
            {"data": "by key", "idempotency_key": "batch-key-1"},
            {"data": {"n": 1}, "key": "customer-7"},
            {"data": "bad task", "task": "no spaces"},
        ])))
        .await
        .expect("batch");
    assert_eq!(answer.status, 200, "{answer:?}");
    let items = answer.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 7, "{answer:?}");
    let callback = |i: usize| items[i]["callback"].as_str().unwrap_or_default().to_owned();

    assert_eq!(callback(0), earlier, "the same content, the same id");
    assert_ne!(
        items[0]["status"], "accepted",
        "known work is not queued again"
    );
    assert_eq!(items[1]["status"], "accepted");
    assert_eq!(
        callback(2),
        callback(1),
        "twice in one batch is one submission"
    );
    assert_ne!(items[2]["status"], "refused", "{:?}", items[2]);
    for (i, code) in [(3, "invalid_json"), (6, "invalid_work")] {
        assert_eq!(items[i]["status"], "refused", "{:?}", items[i]);
        assert_eq!(items[i]["error"]["http_status"], 400, "{:?}", items[i]);
        assert_eq!(items[i]["error"]["code"], code, "{:?}", items[i]);
        assert!(items[i].get("callback").is_none(), "{:?}", items[i]);
    }
    for i in [4, 5] {
        assert_eq!(items[i]["status"], "accepted", "{:?}", items[i]);
        assert_eq!(items[i]["accepted_by"], "demo-api-0");
    }
    assert_eq!(answer.body["refused"], 2);

    // The key, not the content, names item 4: the same key with other data is known.
    let again = pool
        .send(pool.http.post(batch_url(&pool)).json(&json!([
            {"data": "other data", "idempotency_key": "batch-key-1"}
        ])))
        .await
        .expect("batch");
    assert_eq!(
        again.body["items"][0]["callback"].as_str(),
        Some(callback(4).as_str())
    );

    for (i, data) in [
        (1, json!("new")),
        (4, json!("by key")),
        (5, json!({"n": 1})),
    ] {
        let done = pool
            .wait_status(&callback(i), "worked", WAIT)
            .await
            .expect("worked");
        assert_eq!(done.body["result"], data, "{done:?}");
        assert_eq!(done.body["attempts"], 1, "ran once: {done:?}");
    }
    wait_empty(&pool).await;
}

#[tokio::test]
async fn ndjson_items_run_like_an_arrays() {
    let pool = echo_pool().await;
    let lines = (0..3)
        .map(|n| json!({"data": {"line": n}}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let answer = pool
        .send(
            pool.http
                .post(batch_url(&pool))
                .header("content-type", "application/x-ndjson")
                .body(format!("{lines}\n")),
        )
        .await
        .expect("batch");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["accepted"], 3, "{answer:?}");
    for (n, item) in answer.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .enumerate()
    {
        let done = pool
            .wait_status(item["callback"].as_str().expect("callback"), "worked", WAIT)
            .await
            .expect("worked");
        assert_eq!(done.body["result"], json!({"line": n}));
    }
}

#[tokio::test]
async fn a_batch_out_of_bounds_is_refused_whole_and_queues_nothing() {
    let pool = TestPool::start(PoolSpec::from_json("{}").expect("spec"), 1, 0)
        .await
        .expect("pool");
    let too_many: Vec<Value> = (0..1001).map(|n| json!({"data": n})).collect();
    let cases = [
        (
            pool.http.post(batch_url(&pool)).json(&too_many),
            400,
            "too_many_items",
        ),
        (
            pool.http.post(batch_url(&pool)).json(&json!([])),
            400,
            "empty_batch",
        ),
        (
            pool.http.post(batch_url(&pool)).json(&json!({"data": 1})),
            400,
            "invalid_json",
        ),
        (
            pool.http
                .post(batch_url(&pool))
                .header("content-type", "text/plain")
                .body("[]"),
            415,
            "unsupported_media_type",
        ),
        (
            pool.http
                .post(batch_url(&pool))
                .header("content-type", "application/json")
                .body(format!("[\"{}\"]", "x".repeat(9 << 20))),
            413,
            "payload_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let answer = pool.send(request).await.expect("answer");
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.str("code"), code, "{answer:?}");
    }
    assert_eq!(pool.queued_messages().await.expect("stream"), 0);
}

async fn wait_empty(pool: &TestPool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while pool.queued_messages().await.expect("stream") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stream empties");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
