//! Progress reported by running handlers, against a real nats-server and the real api and
//! worker: an `exec` program's stderr progress lines, an `http` handler's reports to the
//! URL in its request and the builtin sleep's own reports show in GET while the work
//! runs, and the last one stays in the finished record.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

fn progress(answer: &workpool_e2e::pool::Answer) -> (Value, Value) {
    let progress = &answer.body["progress"];
    (progress["percent"].clone(), progress["message"].clone())
}

#[tokio::test]
async fn an_exec_programs_progress_lines_show_while_it_runs() {
    let script = r#"echo 'workpool-progress: 30 step one' >&2; sleep 1.5
echo 'workpool-progress: 80 step two' >&2; sleep 1.5
echo 'not progress' >&2; echo '"done"'"#;
    let spec = json!({"worker": {"handler": {"exec": {"command": ["sh", "-c", script]}}}});
    let pool = TestPool::start(PoolSpec::from_json(&spec.to_string()).unwrap(), 1, 1)
        .await
        .expect("pool");
    let id = pool.submit(&json!({"data": 1})).await.expect("submit");
    for (percent, message) in [(30.0, "step one"), (80.0, "step two")] {
        let running = pool
            .wait_for(&id, Duration::from_secs(10), |answer| {
                progress(answer) == (json!(percent), json!(message))
            })
            .await
            .expect("progress shown");
        assert_eq!(running.str("status"), "working", "{running:?}");
    }
    let worked = pool
        .wait_status(&id, "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(worked.body["result"], json!("done"));
    assert_eq!(progress(&worked), (json!(80.0), json!("step two")));
}

#[tokio::test]
async fn the_builtin_sleep_reports_how_far_it_is() {
    let pool = TestPool::start(PoolSpec::default(), 1, 1)
        .await
        .expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 3000}}))
        .await
        .expect("submit");
    let running = pool
        .wait_for(&id, Duration::from_secs(10), |answer| {
            answer.str("status") == "working" && answer.body["progress"]["percent"].is_number()
        })
        .await
        .expect("progress shown");
    let percent = running.body["progress"]["percent"].as_f64().unwrap();
    assert!((0.0..100.0).contains(&percent), "{running:?}");
    let worked = pool
        .wait_status(&id, "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(progress(&worked), (json!(100.0), json!("sleeping")));
}

#[tokio::test]
async fn an_http_handler_reports_progress_to_the_url_in_its_request() {
    // A sidecar that reports through the URL it was given, works a while, and answers.
    let sidecar = axum::Router::new().route(
        "/work",
        axum::routing::post(|headers: axum::http::HeaderMap| async move {
            let url = headers
                .get(workpool_core::progress::PROGRESS_URL_HEADER)
                .and_then(|value| value.to_str().ok())
                .expect("a progress URL")
                .to_owned();
            let client = workpool_local_cluster::http::client();
            let report = |body: Value| client.post(&url).json(&body).send();
            let answered = report(json!({"percent": 50, "message": "halfway"}))
                .await
                .expect("report");
            assert_eq!(answered.status(), 204);
            let refused = report(json!({})).await.expect("empty report");
            assert_eq!(refused.status(), 400, "a report must say something");
            tokio::time::sleep(Duration::from_millis(2500)).await;
            axum::Json(json!({"url": url}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, sidecar).await });
    let spec = json!({"worker": {"handler": {"http": {"url": format!("http://{address}/work")}}}});
    let pool = TestPool::start(PoolSpec::from_json(&spec.to_string()).unwrap(), 1, 1)
        .await
        .expect("pool");
    let id = pool.submit(&json!({"data": 1})).await.expect("submit");
    let running = pool
        .wait_for(&id, Duration::from_secs(10), |answer| {
            progress(answer) == (json!(50.0), json!("halfway"))
        })
        .await
        .expect("progress shown");
    assert_eq!(running.str("status"), "working", "{running:?}");
    let worked = pool
        .wait_status(&id, "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(progress(&worked), (json!(50.0), json!("halfway")));
    // Once the attempt is over, its URL takes no more reports.
    let url = worked.body["result"]["url"].as_str().expect("the url");
    let late = pool
        .http
        .post(url)
        .json(&json!({"percent": 99}))
        .send()
        .await
        .expect("late report");
    assert_eq!(late.status(), 404);
}
