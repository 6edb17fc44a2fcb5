//! Group limits against a real nats-server and the real api and workers: at most N jobs
//! of a group run at once across two workers, at most M start per interval, and a busy
//! group holds back neither other groups nor ungrouped work.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

/// A handler that runs 300 ms and answers `[start, end]` in nanoseconds.
fn timed_pool_spec(groups: serde_json::Value) -> PoolSpec {
    let script = r#"s=$(date +%s%N); sleep 0.3; e=$(date +%s%N); echo "[$s,$e]""#;
    let spec = json!({
        "worker": {"concurrency": 8, "handler": {"exec": {"command": ["sh", "-c", script]}}},
        "groups": groups,
    });
    PoolSpec::from_json(&spec.to_string()).unwrap()
}

/// Submits `count` jobs of `group` (or none) and returns their ids.
async fn submit(pool: &TestPool, group: Option<&str>, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let mut body = json!({"data": format!("{group:?}-{n}")});
        if let Some(group) = group {
            body["group"] = json!(group);
        }
        ids.push(pool.submit(&body).await.expect("submit"));
    }
    ids
}

/// Waits for every job and returns their `(start, end)` in nanoseconds.
async fn runs(pool: &TestPool, ids: &[String]) -> Vec<(i64, i64)> {
    let mut runs = Vec::new();
    for id in ids {
        let worked = match pool
            .wait_status(id, "worked", Duration::from_secs(30))
            .await
        {
            Ok(worked) => worked,
            Err(err) => panic!("{id} not worked: {err}\n{}", pool.logs()),
        };
        let result = worked.body["result"]
            .as_array()
            .expect("[start, end]")
            .clone();
        runs.push((result[0].as_i64().unwrap(), result[1].as_i64().unwrap()));
    }
    runs
}

/// The most runs overlapping at any instant.
fn most_at_once(runs: &[(i64, i64)]) -> usize {
    runs.iter()
        .map(|(start, _)| runs.iter().filter(|(s, e)| s <= start && start < e).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_group_runs_at_most_its_concurrency_and_holds_back_no_one_else() {
    let spec = timed_pool_spec(json!({"concurrency": 2}));
    let pool = TestPool::start(spec, 1, 2).await.expect("pool");
    let busy = submit(&pool, Some("busy"), 10).await;
    let other = submit(&pool, Some("other"), 2).await;
    let free = submit(&pool, None, 4).await;

    let busy_runs = runs(&pool, &busy).await;
    let other_runs = runs(&pool, &other).await;
    let free_runs = runs(&pool, &free).await;
    assert_eq!(most_at_once(&busy_runs), 2, "{busy_runs:?}");
    assert!(most_at_once(&other_runs) <= 2);
    // Ten jobs of 300 ms two at a time take at least 1.5 s; the others did not wait
    // for them.
    let busy_end = busy_runs.iter().map(|(_, e)| *e).max().unwrap();
    let busy_start = busy_runs.iter().map(|(s, _)| *s).min().unwrap();
    assert!(busy_end - busy_start >= 1_500_000_000, "{busy_runs:?}");
    for (start, _) in other_runs.iter().chain(&free_runs) {
        assert!(*start < busy_end - 600_000_000, "waited for the busy group");
    }
    let shown = pool.get(&busy[0]).await.expect("get");
    assert_eq!(shown.str("group"), "busy");
}

#[tokio::test]
async fn a_group_starts_at_most_its_rate_per_interval() {
    let spec = timed_pool_spec(json!({"rate": {"jobs": 3, "per": "1s"}}));
    let pool = TestPool::start(spec, 1, 2).await.expect("pool");
    let limited = submit(&pool, Some("rated"), 9).await;
    let mut starts: Vec<i64> = runs(&pool, &limited)
        .await
        .iter()
        .map(|(s, _)| *s)
        .collect();
    starts.sort_unstable();
    // No second holds more than three starts (a little slack for the clocks of the
    // worker that admitted and the shell that stamped).
    for (i, start) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|s| **s < start + 900_000_000)
            .count();
        assert!(within <= 3, "{within} starts within 0.9 s: {starts:?}");
    }
    assert!(starts[8] - starts[0] >= 1_900_000_000, "{starts:?}");

    for bad in [
        json!({"data": 1, "group": ""}),
        json!({"data": 1, "group": "g", "key": "k"}),
    ] {
        let refused = pool.post(&bad).await.expect("post");
        assert_eq!(
            (refused.status, refused.str("code")),
            (400, "invalid_work"),
            "{bad}"
        );
    }
}

/// Work its group's limits put aside waits on the delayed subject, not on the queue's.
/// The same content POSTed meanwhile is that work (`200 pending`), inside the stream's
/// dedupe window and after it: not a second generation on the queue subject, which
/// would run in its place and leave the first one's copy to be dropped unrun. (Before:
/// `503` inside the window, `202` and a second generation after it; found by the chaos
/// checker on a NATS cluster as a `lost` first generation.)
#[tokio::test]
async fn the_same_content_posted_while_its_work_is_put_aside_is_that_work() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("runs");
    let script = format!(
        r#"d=$(cat); echo "$d" >> {log}; case "$d" in *hold*) sleep 5;; esac; echo '"done"'"#,
        log = log.display()
    );
    let mut spec = workpool_e2e::pool::shell_handler_spec(script);
    spec.groups = serde_json::from_value(json!({"concurrency": 1})).expect("groups");
    // The stream's dedupe window is the result TTL: 1 s, so the test outlives it.
    spec.result_ttl = Duration::from_secs(1);
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let metrics = format!("http://127.0.0.1:{}/metrics", pool.workers[0].port);

    let hold = pool
        .submit(&json!({"data": "hold", "group": "g"}))
        .await
        .expect("submit");
    // Running first, so that it is the one holding the group's slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).is_ok_and(|runs| runs.contains("hold")) {
        assert!(
            std::time::Instant::now() < deadline,
            "not started\n{}",
            pool.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let aside_body = json!({"data": "aside", "group": "g"});
    let aside = pool.submit(&aside_body).await.expect("submit");
    wait_parked(&pool, &metrics).await;

    let within_window = pool.post(&aside_body).await.expect("post");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_window = pool.post(&aside_body).await.expect("post");
    for (when, answer) in [("inside", &within_window), ("after", &after_window)] {
        assert_eq!(
            (answer.status, answer.str("callback"), answer.str("status")),
            (200, aside.as_str(), "pending"),
            "POSTed again {when} the dedupe window while put aside: {:?}\n{}",
            answer.body,
            pool.logs()
        );
    }

    for id in [&hold, &aside] {
        if let Err(err) = pool
            .wait_status(id, "worked", Duration::from_secs(30))
            .await
        {
            panic!("{id} not worked: {err}\n{}", pool.logs());
        }
    }
    let runs = std::fs::read_to_string(&log).expect("runs");
    assert_eq!(
        runs.lines().filter(|line| line.contains("aside")).count(),
        1,
        "{runs}"
    );
}

/// Waits until the worker has put work aside.
async fn wait_parked(pool: &TestPool, metrics: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = match pool.http.get(metrics).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if workpool_e2e::metrics::sum_of(&text, "workpool_work_parked_total") >= 1.0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing put aside\n{}",
            pool.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
