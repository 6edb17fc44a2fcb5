//! Dead letters as an API, against a real nats-server (with the pool's NATS
//! permissions) and the real api and worker processes: list, inspect, retry one and
//! all, purge one and all.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_e2e::pool::{Answer, TestPool};

/// A pool whose handler fails (one attempt, no retries) until `flag` exists.
async fn pool_failing_until(flag: &std::path::Path) -> TestPool {
    let script = format!(
        "if [ -e {flag} ]; then echo '\"fixed\"'; else echo 'not yet' >&2; exit 7; fi",
        flag = flag.display()
    );
    let spec = json!({"worker": {"maxAttempts": 1, "handler": {"exec": {"command": ["sh", "-c", script]}}}});
    let spec = PoolSpec::from_json(&spec.to_string()).expect("spec");
    TestPool::start(spec, 1, 1).await.expect("pool")
}

async fn call(pool: &TestPool, method: reqwest::Method, path: &str) -> Answer {
    let url = format!("{}{path}", pool.api_url(0));
    pool.send(pool.http.request(method, url))
        .await
        .expect("request")
}

async fn list(pool: &TestPool, query: &str) -> Answer {
    call(pool, reqwest::Method::GET, &format!("/api/v1/dead{query}")).await
}

fn listed_ids(answer: &Answer) -> Vec<String> {
    answer.body["dead_letters"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|letter| letter["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn fail(pool: &TestPool, data: &str) -> String {
    let id = pool.submit(&json!({ "data": data })).await.expect("submit");
    pool.wait_status(&id, "failed", Duration::from_secs(20))
        .await
        .expect("failed");
    id
}

/// Waits until the dead letters listed are exactly `ids`, in order.
async fn wait_listed(pool: &TestPool, ids: &[&str]) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = list(pool, "").await;
        if listed_ids(&answer) == ids || tokio::time::Instant::now() > deadline {
            assert_eq!(listed_ids(&answer), ids, "{answer:?}");
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dead_letters_are_listed_inspected_retried_and_purged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flag = dir.path().join("fixed");
    let pool = pool_failing_until(&flag).await;
    let (a, b) = (fail(&pool, "a").await, fail(&pool, "b").await);

    // Listed oldest first, a page at a time.
    let all = wait_listed(&pool, &[&a, &b]).await;
    let first = &all.body["dead_letters"][0];
    assert_eq!(first["data"], json!("a"));
    assert_eq!(first["attempts"], json!(1));
    assert!(
        first["error"].as_str().unwrap().contains("not yet"),
        "{first}"
    );
    let page = list(&pool, "?limit=1").await;
    assert_eq!(listed_ids(&page), [a.as_str()]);
    let next = page.body["next"].as_u64().expect("a next page");
    let page = list(&pool, &format!("?limit=1&after={next}")).await;
    assert_eq!(listed_ids(&page), [b.as_str()]);
    let last = page.body["next"].as_u64().expect("one more page");
    let page = list(&pool, &format!("?after={last}")).await;
    assert_eq!(
        (listed_ids(&page).len(), &page.body["next"]),
        (0, &Value::Null)
    );
    assert_eq!(list(&pool, "?limit=0").await.status, 400);

    // Inspected by id; an id with no dead letter is 404.
    let letter = call(&pool, reqwest::Method::GET, &format!("/api/v1/dead/{a}")).await;
    assert_eq!((letter.status, letter.str("id")), (200, a.as_str()));
    let unknown = "0".repeat(32);
    let missing = call(
        &pool,
        reqwest::Method::GET,
        &format!("/api/v1/dead/{unknown}"),
    )
    .await;
    assert_eq!((missing.status, missing.str("code")), (404, "not_found"));

    // Retried while the handler still fails: queued again, run again with a new
    // attempt budget, and dead-lettered again; only that new letter is left of it.
    let retried = call(
        &pool,
        reqwest::Method::POST,
        &format!("/api/v1/dead/{a}/retry"),
    )
    .await;
    assert_eq!(
        (retried.status, retried.str("status")),
        (202, "accepted"),
        "{retried:?}"
    );
    let failed = pool
        .wait_for(&a, Duration::from_secs(20), |answer| {
            answer.str("status") == "failed" && answer.str("created_at") != first["submitted_at"]
        })
        .await
        .expect("failed again");
    assert_eq!(failed.body["attempts"], json!(1));
    wait_listed(&pool, &[&b, &a]).await;

    // Fixed: every dead letter retried at once, all work done, no dead letter left.
    std::fs::write(&flag, "").expect("flag");
    let bulk = call(&pool, reqwest::Method::POST, "/api/v1/dead/retry").await;
    assert_eq!(
        (bulk.status, &bulk.body["retried"]),
        (200, &json!(2)),
        "{bulk:?}"
    );
    for id in [&a, &b] {
        let worked = pool
            .wait_status(id, "worked", Duration::from_secs(20))
            .await
            .expect("worked");
        assert_eq!(worked.body["result"], json!("fixed"));
    }
    wait_listed(&pool, &[]).await;
    let gone = call(
        &pool,
        reqwest::Method::POST,
        &format!("/api/v1/dead/{a}/retry"),
    )
    .await;
    assert_eq!(gone.status, 404);

    // Purged: one id's letters, then all.
    std::fs::remove_file(&flag).expect("unflag");
    let (c, d, e) = (
        fail(&pool, "c").await,
        fail(&pool, "d").await,
        fail(&pool, "e").await,
    );
    wait_listed(&pool, &[&c, &d, &e]).await;
    let purged = call(&pool, reqwest::Method::DELETE, &format!("/api/v1/dead/{c}")).await;
    assert_eq!((purged.status, &purged.body["purged"]), (200, &json!(1)));
    wait_listed(&pool, &[&d, &e]).await;
    let purged = call(&pool, reqwest::Method::DELETE, "/api/v1/dead").await;
    assert_eq!((purged.status, &purged.body["purged"]), (200, &json!(2)));
    wait_listed(&pool, &[]).await;
    // The work's records are untouched by a purge.
    assert_eq!(pool.get(&c).await.expect("get").str("status"), "failed");
}
