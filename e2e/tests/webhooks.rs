//! Completion webhooks against a real nats-server and the real api and worker: the
//! record is POSTed, signed with the pool's key, to a receiver started here; a failing
//! receiver is retried with backoff until it answers or the attempts run out; GET shows
//! the delivery state; work that ends without running (cancelled while queued) is
//! delivered too; a host the pool does not allow is refused at POST.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_core::webhook::{DELIVERY_HEADER, SIGNATURE_HEADER, verify};
use workpool_e2e::pool::{Answer, TestPool};

/// One request the receiver got: its path, signature header, delivery header and body.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    signature: String,
    delivery: String,
    body: Vec<u8>,
}

/// A receiver on loopback: `/ok` answers 204, `/flaky` 500 twice and then 200, `/down`
/// always 503.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/{path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  headers: HeaderMap,
                  body: axum::body::Bytes| {
                let record = record.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let mut seen = record.lock().unwrap();
                    seen.push(Received {
                        path: path.clone(),
                        signature: header(SIGNATURE_HEADER),
                        delivery: header(DELIVERY_HEADER),
                        body: body.to_vec(),
                    });
                    let tries = seen.iter().filter(|r| r.path == path).count();
                    match path.as_str() {
                        "ok" => StatusCode::NO_CONTENT,
                        "flaky" if tries <= 2 => StatusCode::INTERNAL_SERVER_ERROR,
                        "flaky" => StatusCode::OK,
                        _ => StatusCode::SERVICE_UNAVAILABLE,
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

/// Waits until GET shows the webhook's delivery `state`.
async fn delivery_state(pool: &TestPool, id: &str, state: &str) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let answer = pool.get(id).await.expect("get");
        if answer.body["webhook"]["state"] == state {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook of {id} never {state}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn key(pool: &TestPool) -> Vec<u8> {
    hex_decode(&pool.webhook_key.to_hex())
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn finished_work_is_posted_signed_and_retried_until_delivered() {
    let (address, seen) = receiver().await;
    let spec = json!({
        "worker": {"handler": {"builtin": "echo"}},
        "webhooks": {"allowedHosts": [address.to_string()], "maxAttempts": 3},
    });
    let spec = PoolSpec::from_json(&spec.to_string()).unwrap();
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let url = |path: &str| format!("http://{address}/{path}");

    // Delivered at once.
    let ok = pool
        .submit(&json!({"data": {"n": 1}, "callback_url": url("ok")}))
        .await
        .expect("submit");
    let delivered = delivery_state(&pool, &ok, "delivered").await;
    assert_eq!(delivered.body["webhook"]["attempts"], 1, "{delivered:?}");
    assert_eq!(delivered.body["webhook"]["last_status"], 204);
    let got = seen
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.path == "ok")
        .cloned()
        .unwrap();
    assert_eq!(got.delivery, ok);
    let now = chrono::Utc::now().timestamp();
    assert!(verify(
        &key(&pool),
        &got.signature,
        &got.body,
        now,
        Duration::from_secs(60)
    ));
    assert!(!verify(
        b"not the key",
        &got.signature,
        &got.body,
        now,
        Duration::from_secs(60)
    ));
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        (&body["id"], &body["status"], &body["result"]),
        (&json!(ok), &json!("worked"), &json!({"n": 1}))
    );
    assert!(
        body.get("webhook").is_none(),
        "the delivery state is not sent: {body}"
    );

    // Two failures, then delivered on the third attempt, after backoff (1 s, then 2 s).
    let flaky = pool
        .submit(&json!({"data": {"n": 2}, "callback_url": url("flaky")}))
        .await
        .expect("submit");
    let retrying = delivery_state(&pool, &flaky, "retrying").await;
    assert_eq!(retrying.body["webhook"]["last_status"], 500, "{retrying:?}");
    let delivered = delivery_state(&pool, &flaky, "delivered").await;
    assert_eq!(delivered.body["webhook"]["attempts"], 3, "{delivered:?}");
    let flaky_times: Vec<Received> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "flaky")
        .cloned()
        .collect();
    assert_eq!(flaky_times.len(), 3, "one request per attempt");
    assert!(flaky_times.iter().all(|r| r.delivery == flaky));

    // A receiver that never answers 2xx: given up after maxAttempts.
    let down = pool
        .submit(&json!({"data": {"n": 3}, "callback_url": url("down")}))
        .await
        .expect("submit");
    let failed = delivery_state(&pool, &down, "failed").await;
    assert_eq!(failed.body["webhook"]["attempts"], 3, "{failed:?}");
    assert_eq!(
        failed.body["webhook"]["last_error"],
        "answered 503 Service Unavailable"
    );
    assert_eq!(failed.body["status"], "worked", "the work itself is done");

    // Refused at POST: a host the pool does not list, or not a URL.
    for bad in ["http://127.0.0.2:9/x", "ftp://example.com/", "hook"] {
        let refused = pool
            .post(&json!({"data": 4, "callback_url": bad}))
            .await
            .expect("post");
        assert_eq!(
            (refused.status, refused.str("code")),
            (400, "callback_not_allowed"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn work_cancelled_while_queued_is_delivered_and_a_pool_without_hosts_refuses_callbacks() {
    let (address, seen) = receiver().await;
    let spec = json!({
        "worker": {"handler": {"builtin": "echo"}},
        "webhooks": {"allowedHosts": ["127.0.0.1"]},
    });
    let spec = PoolSpec::from_json(&spec.to_string()).unwrap();
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let later = pool
        .submit(&json!({"data": 5, "delay": "1h", "callback_url": format!("http://{address}/ok")}))
        .await
        .expect("submit");
    let cancelled = pool.cancel(&later).await.expect("cancel");
    assert!(cancelled.status < 300, "{cancelled:?}");
    delivery_state(&pool, &later, "delivered").await;
    let got = seen.lock().unwrap().last().cloned().unwrap();
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["status"], "cancelled", "{body}");

    let closed = PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).unwrap();
    let closed = TestPool::start(closed, 1, 0).await.expect("pool");
    let refused = closed
        .post(&json!({"data": 6, "callback_url": format!("http://{address}/ok")}))
        .await
        .expect("post");
    assert_eq!(
        (refused.status, refused.str("code")),
        (400, "callback_not_allowed")
    );
    assert!(refused.str("error").contains("allowedHosts"), "{refused:?}");
}
