//! The console in headless Chromium against a real pool: the queue by state with its
//! charts, recent work with filters and a detail view, and dead letters with their
//! actions; and the two endpoints behind it, `GET /api/v1/queue` and `GET /api/v1/work`.
//! Screenshots are kept in `artifacts/`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_e2e::browser::Browser;
use workpool_e2e::pool::TestPool;

const WAIT: Duration = Duration::from_secs(30);

/// Fails work whose data says `fail` (for good: one attempt), runs work that says `slow`
/// for a minute, and answers the rest at once.
const HANDLER: &str = r#"input=$(cat); case "$input" in *fail*) echo 'disk full' >&2; exit 1;; *slow*) exec sleep 60;; esac; echo '{"ok": true}'"#;

async fn get(pool: &TestPool, path: &str) -> Value {
    let answer = pool
        .send(pool.http.get(format!("{}{path}", pool.api_url(0))))
        .await
        .expect("request");
    assert_eq!(answer.status, 200, "{path}: {answer:?}");
    answer.body
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_console_shows_the_queue_recent_work_and_dead_letters() {
    let spec = json!({"worker": {"maxAttempts": 1, "handler": {"exec": {"command": ["sh", "-c", HANDLER]}}}});
    // The api looks at its queue four times a second (not every 5 s), so the charts
    // have a history within the test.
    let env = vec![("WORKPOOL_QUEUE_SAMPLE_EVERY".to_owned(), "250ms".to_owned())];
    let spec = PoolSpec::from_json(&spec.to_string()).unwrap();
    let pool = TestPool::start_with_api_env(spec, 1, 1, env)
        .await
        .expect("pool");
    // Waves of work over two seconds: a throughput to chart.
    let mut worked = Vec::new();
    for wave in 0..8 {
        for n in 0..wave % 4 + 1 {
            let body = json!({"task": "resize", "data": {"wave": wave, "n": n}});
            worked.push(pool.submit(&body).await.expect("submit"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let failed = pool
        .submit(&json!({"task": "resize", "data": "fail"}))
        .await
        .expect("submit");
    let slow = pool
        .submit(&json!({"task": "report", "data": "slow"}))
        .await
        .expect("submit");
    let later = pool
        .submit(&json!({"task": "report", "data": "later", "delay": "1h"}))
        .await
        .expect("submit");
    for id in &worked {
        pool.wait_status(id, "worked", WAIT).await.expect("worked");
    }
    pool.wait_status(&failed, "failed", WAIT)
        .await
        .expect("failed");
    pool.wait_status(&slow, "working", WAIT)
        .await
        .expect("working");

    // The queue by state, and its history.
    let deadline = tokio::time::Instant::now() + WAIT;
    let queue = loop {
        let queue = get(&pool, "/api/v1/queue").await;
        let now = &queue["now"];
        let settled = now["running"] == 1 && now["dead"] == 1 && now["scheduled"] == 1;
        let history = queue["history"].as_array().unwrap();
        let went_out = history
            .iter()
            .any(|look| look["out_per_second"].as_f64() > Some(0.0));
        if settled && went_out && history.len() >= 10 {
            break queue;
        }
        assert!(tokio::time::Instant::now() < deadline, "{queue:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(queue["now"]["pending"], 0, "{queue:#}");

    // Recent work: newest first, every kind, filtered by status and task.
    let all = ids(&get(&pool, "/api/v1/work").await);
    for id in worked.iter().chain([&failed, &slow, &later]) {
        assert!(all.contains(id), "{id} missing from {all:?}");
    }
    assert_eq!(all.len(), worked.len() + 3, "each once: {all:?}");
    assert_eq!(
        ids(&get(&pool, "/api/v1/work?status=failed").await),
        std::slice::from_ref(&failed)
    );
    assert_eq!(
        ids(&get(&pool, "/api/v1/work?status=pending").await),
        std::slice::from_ref(&later)
    );
    let reports = get(&pool, "/api/v1/work?task=report&limit=1").await;
    assert_eq!(ids(&reports).len(), 1, "{reports:#}");
    assert!(
        reports["items"][0].get("result").is_none(),
        "no results in a list"
    );
    let bad = pool
        .send(
            pool.http
                .get(format!("{}/api/v1/work?status=lost", pool.api_url(0))),
        )
        .await
        .expect("request");
    assert_eq!(bad.status, 400, "{bad:?}");

    let browser = Browser::find().expect("headless chromium");
    let console = format!("{}/console", pool.api_url(0));
    let artifacts = workpool_local_cluster::paths::repo_root().join("artifacts");

    let overview = browser.dom(&console, 4000).await.expect("overview");
    for (figure, value) in [
        ("running", "1"),
        ("dead", "1"),
        ("scheduled", "1"),
        ("pending", "0"),
    ] {
        let shown = format!(r#"data-figure="{figure}" data-value="{value}""#);
        assert!(overview.contains(&shown), "{shown} missing:\n{overview}");
    }
    for series in ["in", "out", "pending", "oldest"] {
        assert!(
            overview.contains(&format!(r#"data-series="{series}""#)),
            "no {series} line:\n{overview}"
        );
    }
    browser
        .screenshot(&console, 4000, &artifacts.join("console.png"))
        .await
        .expect("screenshot");

    let work = browser
        .dom(&format!("{console}#view=work"), 4000)
        .await
        .expect("work");
    for id in worked.iter().chain([&failed, &slow, &later]) {
        assert!(
            work.contains(&format!(r#"data-id="{id}""#)),
            "{id}:\n{work}"
        );
    }
    assert!(work.contains(r#"data-status="failed""#), "{work}");

    let detail_url = format!("{console}#view=work&id={failed}");
    let detail = browser.dom(&detail_url, 4000).await.expect("detail");
    let panel = format!(r#"id="detail" data-id="{failed}" data-status="failed""#);
    assert!(detail.contains(&panel), "no detail of {failed}:\n{detail}");
    assert!(detail.contains("disk full"), "the error:\n{detail}");
    browser
        .screenshot(&detail_url, 4000, &artifacts.join("console-work.png"))
        .await
        .expect("screenshot");

    let dead_url = format!("{console}#view=dead");
    let dead = browser.dom(&dead_url, 4000).await.expect("dead letters");
    assert!(dead.contains(&format!(r#"data-id="{failed}""#)), "{dead}");
    assert!(dead.contains(r#"class="retry""#) && dead.contains(r#"class="purge danger""#));
    browser
        .screenshot(&dead_url, 4000, &artifacts.join("console-dead.png"))
        .await
        .expect("screenshot");
}
