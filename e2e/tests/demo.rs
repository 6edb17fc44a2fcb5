//! The original sketch's demo, against a real nats-server and the real binaries.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

/// The value of the series `name` labelled with the demo pool and the default task.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let labels = series.strip_prefix(name)?.strip_prefix('{')?;
        let wanted = [
            r#"namespace="default""#,
            r#"pool="demo""#,
            r#"task="default""#,
        ];
        wanted
            .iter()
            .all(|label| labels.contains(label))
            .then(|| value.parse().ok())?
    })
}

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

    // Both components count what they did, labelled by pool and task.
    let scrape = |port: u16| {
        let http = pool.http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .expect("text")
        }
    };
    let api_metrics = scrape(pool.apis[0].port).await;
    assert_eq!(
        sample(&api_metrics, "workpool_work_accepted_total"),
        Some(1.0),
        "{api_metrics}"
    );
    let worker_metrics = scrape(pool.workers[0].port).await;
    for name in [
        "workpool_work_started_total",
        "workpool_work_worked_total",
        "workpool_work_latency_seconds_count",
    ] {
        assert_eq!(
            sample(&worker_metrics, name),
            Some(1.0),
            "{name} in\n{worker_metrics}"
        );
    }
    assert!(worker_metrics.contains("# TYPE workpool_handler_duration_seconds histogram"));
    assert!(worker_metrics.contains("process_resident_memory_bytes"));

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

#[tokio::test]
async fn the_smoke_program_of_helm_test_passes_against_a_pool() {
    let spec =
        PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool starts");
    let smoke = tokio::process::Command::new(
        workpool_local_cluster::paths::workspace_binary("workpool-smoke").expect("binary"),
    )
    .args(["--url", &pool.api_url(0), "--timeout", "20s"])
    .output()
    .await
    .expect("run workpool-smoke");
    assert!(
        smoke.status.success(),
        "{}",
        String::from_utf8_lossy(&smoke.stderr)
    );
    assert!(String::from_utf8_lossy(&smoke.stdout).contains("worked"));
}

/// A submission's own `ttl`, shorter than the pool's `resultTTL`: its result is gone
/// after it (and the same content then runs again), while work without one keeps the
/// pool's; a ttl past the pool's is refused. Also per item of a batch.
#[tokio::test]
async fn a_submission_s_ttl_shortens_its_result_s_life_within_the_pool_s() {
    let spec = PoolSpec::from_json(r#"{"resultTTL": "10m"}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool starts");
    let wait = Duration::from_secs(20);

    let short = pool
        .submit(&json!({"data": "brief", "ttl": "2s"}))
        .await
        .expect("submit");
    let long = pool.submit(&json!({"data": "kept"})).await.expect("submit");
    let worked = pool
        .wait_status(&short, "worked", wait)
        .await
        .expect("worked");
    assert_eq!(worked.str("ttl"), "2s", "{worked:?}");
    pool.wait_status(&long, "worked", wait)
        .await
        .expect("worked");
    pool.wait_for(&short, wait, |answer| answer.status == 404)
        .await
        .expect("the short-lived result expires");
    let kept = pool.get(&long).await.expect("get");
    assert_eq!(
        kept.status, 200,
        "the pool's resultTTL still holds: {kept:?}"
    );
    assert!(kept.body.get("ttl").is_none(), "{kept:?}");

    // The same content after its expiry is new work, and runs again.
    let again = pool
        .post(&json!({"data": "brief", "ttl": "2s"}))
        .await
        .expect("post");
    assert_eq!((again.status, again.str("callback")), (202, short.as_str()));
    pool.wait_status(&short, "worked", wait)
        .await
        .expect("worked again");

    for (ttl, why) in [
        ("11m", "at most the pool's resultTTL, 10m"),
        ("0s", "at least 1s"),
    ] {
        let refused = pool
            .post(&json!({"data": ttl, "ttl": ttl}))
            .await
            .expect("post");
        assert_eq!(refused.status, 400, "{refused:?}");
        assert!(refused.body.to_string().contains(why), "{refused:?}");
    }
    let url = format!("{}/api/v1/work/batch", pool.api_url(0));
    let items = json!([{"data": "b1", "ttl": "3s"}, {"data": "b2", "ttl": "1h"}]);
    let batch = pool
        .send(pool.http.post(url).json(&items))
        .await
        .expect("batch");
    let answers = batch.body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(answers.len(), 2, "{batch:?}");
    assert_eq!(answers[0]["status"], "accepted", "{batch:?}");
    assert_eq!(answers[1]["status"], "refused", "{batch:?}");
}
