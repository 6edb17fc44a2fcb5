//! Keyed work runs one at a time per key, even with several workers pulling.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

#[tokio::test]
async fn work_for_one_key_never_overlaps() {
    // The program prints its start and end times in nanoseconds.
    let spec = PoolSpec::from_json(
        r#"{"worker": {"concurrency": 4, "partitions": 4,
            "handler": {"exec": {"command": ["sh", "-c", "date +%s%N; sleep 0.1; date +%s%N"]}}}}"#,
    )
    .expect("spec");
    let pool = TestPool::start(spec, 1, 2).await.expect("pool");
    let mut ids = Vec::new();
    for n in 0..8 {
        for key in ["alice", "bob"] {
            let answer = pool
                .post(&json!({"data": n, "key": key}))
                .await
                .expect("post");
            assert_eq!(answer.status, 202, "{answer:?}");
            ids.push((key, answer.str("callback").to_owned()));
        }
    }
    let mut spans: Vec<(&str, u128, u128, String)> = Vec::new();
    for (key, id) in &ids {
        let done = pool
            .wait_status(id, "worked", Duration::from_secs(30))
            .await
            .expect("worked");
        let text = done.body["result"]
            .as_str()
            .expect("text result")
            .to_owned();
        let times: Vec<u128> = text
            .split_whitespace()
            .map(|t| t.parse().expect("nanoseconds"))
            .collect();
        spans.push((key, times[0], times[1], done.str("worker").to_owned()));
    }
    for key in ["alice", "bob"] {
        let mut own: Vec<_> = spans.iter().filter(|s| s.0 == key).collect();
        own.sort_by_key(|s| s.1);
        for pair in own.windows(2) {
            assert!(
                pair[0].2 <= pair[1].1,
                "{key}: {:?} overlaps {:?}",
                pair[0],
                pair[1]
            );
        }
    }
}

#[tokio::test]
async fn the_cluster_view_shows_workers_their_partitions_and_running_work() {
    let spec = PoolSpec::from_json(r#"{"worker": {"partitions": 4}}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 2).await.expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 3000}}))
        .await
        .expect("submit");
    pool.wait_status(&id, "working", Duration::from_secs(10))
        .await
        .expect("working");
    let view =
        workpool_e2e::http::get_json(&pool.http, &format!("{}/api/v1/cluster", pool.api_url(0)))
            .await
            .expect("cluster view");
    assert_eq!(view["pool"], "demo");
    assert_eq!(view["partitions"], 4);
    assert_eq!(view["api"][0]["pod"], "demo-api-0");
    // Outside Kubernetes each worker counts only itself, so each pulls every partition
    // (the server still lets one job per partition run at a time).
    assert_eq!(view["from_kubernetes"], false);
    let workers = view["workers"].as_array().expect("workers");
    let pods: Vec<&str> = workers.iter().map(|w| w["pod"].as_str().unwrap()).collect();
    assert_eq!(pods, ["demo-worker-0", "demo-worker-1"], "{view}");
    for worker in workers {
        assert_eq!(worker["answered"], true);
        assert_eq!(worker["partitions"], json!([0, 1, 2, 3]), "{view}");
    }
    let running: Vec<&serde_json::Value> = workers
        .iter()
        .flat_map(|w| w["in_flight"].as_array().unwrap())
        .collect();
    assert_eq!(running, [&json!(id)], "{view}");
    assert_eq!(view["unowned_partitions"], json!([]));

    // The console page is served and reads this view.
    let page = pool
        .http
        .get(format!("{}/console", pool.api_url(0)))
        .send()
        .await
        .expect("console");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("text").contains("/api/v1/cluster"));
}

/// A failing keyed job blocks its key until it succeeds or fails for good: the key's
/// later work never overtakes it (docs/worker.md).
#[tokio::test]
async fn a_failing_keyed_job_holds_its_key_until_it_is_done() {
    let marks = tempfile::tempdir().expect("temp dir");
    let mark = marks.path().join("failed-once");
    let script = format!(
        r#"read -r data; case "$data" in *flaky*) [ -f {mark} ] || {{ touch {mark}; echo failing >&2; exit 1; }};; esac; date +%s%N"#,
        mark = mark.display()
    );
    let spec = PoolSpec::from_json(
        &json!({"worker": {"partitions": 1, "maxAttempts": 3, "backoff": ["1s"],
                            "handler": {"exec": {"command": ["sh", "-c", script]}}}})
        .to_string(),
    )
    .expect("spec");
    let pool = TestPool::start(spec, 1, 2).await.expect("pool");
    let flaky = pool
        .submit(&json!({"data": "flaky", "key": "k"}))
        .await
        .expect("submit");
    let mut later = Vec::new();
    for n in 0..3 {
        later.push(
            pool.submit(&json!({"data": {"n": n}, "key": "k"}))
                .await
                .expect("submit"),
        );
    }
    let time = |answer: &workpool_e2e::pool::Answer| -> u128 {
        // The program's output is one number, which the exec handler reads as JSON.
        answer.body["result"]
            .as_u64()
            .map(u128::from)
            .expect("nanoseconds")
    };
    let flaky_done = pool
        .wait_status(&flaky, "worked", Duration::from_secs(20))
        .await
        .expect("the flaky job succeeds on its second attempt");
    assert_eq!(flaky_done.body["attempts"], 2, "{:?}", flaky_done.body);
    for id in &later {
        let done = pool
            .wait_status(id, "worked", Duration::from_secs(20))
            .await
            .expect("worked");
        assert!(
            time(&done) > time(&flaky_done),
            "{id} ran before the failed job of its key was done"
        );
    }
}
