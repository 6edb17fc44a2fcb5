//! Long-polls against a real nats-server: they share the api's one watch of the results
//! bucket (a consumer each would take NATS down under load), are capped with `429
//! too_many_waiters`, answer as soon as the work finishes, and still answer at their
//! deadline while NATS is down.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::{Answer, TestPool};

/// How many JetStream consumers the results bucket's stream has now.
async fn bucket_consumers(pool: &TestPool) -> usize {
    let js = async_nats::jetstream::new(pool.nats.client().await.expect("client"));
    let stream = js
        .get_stream(format!("KV_{}", pool.names.bucket()))
        .await
        .expect("bucket stream");
    let names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .expect("consumer names");
    names.len()
}

fn cap_env(limit: usize) -> Vec<(String, String)> {
    vec![("WORKPOOL_MAX_WAITERS".into(), limit.to_string())]
}

async fn long_poll(pool: &TestPool, id: &str, wait: &str) -> Answer {
    pool.send(
        pool.http
            .get(format!("{}/api/v1/work/{id}?wait={wait}", pool.api_url(0))),
    )
    .await
    .expect("long-poll")
}

/// A long-poll in the background: status, body and how long it took. It retries a 429,
/// which it gets only when it meets a test's probe holding the last place for an instant.
fn spawn_poll(
    pool: &TestPool,
    id: &str,
    wait: &str,
) -> tokio::task::JoinHandle<(u16, serde_json::Value, Duration)> {
    let http = pool.http.clone();
    let url = format!("{}/api/v1/work/{id}?wait={wait}", pool.api_url(0));
    tokio::spawn(async move {
        let started = Instant::now();
        for _ in 0..200 {
            let response = http.get(&url).send().await.expect("long-poll");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if status != 429 {
                return (status, body, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("a long-poll kept getting 429");
    })
}

/// Probes with `?wait=0s` until the api refuses one more waiter: then every background
/// poll is registered. Also returns the most consumers the bucket had meanwhile.
async fn probe_until_full(pool: &TestPool, id: &str) -> (Option<Answer>, usize) {
    let mut most = 0;
    for _ in 0..300 {
        most = most.max(bucket_consumers(pool).await);
        let answer = long_poll(pool, id, "0s").await;
        if answer.status == 429 {
            return (Some(answer), most.max(bucket_consumers(pool).await));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (None, most)
}

fn assert_too_many_waiters(answer: &Answer) {
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(answer.str("code"), "too_many_waiters", "{answer:?}");
    assert!(!answer.str("error").is_empty(), "{answer:?}");
    assert_eq!(
        answer
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn two_hundred_long_polls_share_one_consumer_and_return_when_the_work_finishes() {
    const POLLS: usize = 200;
    const ITEMS: usize = 20;
    // The cap equals the number of polls, so a 429 to one more request says that all of
    // them are registered (and waiting) at that moment.
    let mut pool = TestPool::start_with_api_env(PoolSpec::default(), 1, 0, cap_env(POLLS))
        .await
        .expect("pool");
    let mut ids = Vec::new();
    for n in 0..ITEMS {
        ids.push(
            pool.submit(&json!({"data": {"ms": 10, "n": n}}))
                .await
                .expect("submit"),
        );
    }
    let before = bucket_consumers(&pool).await;

    let wait = Duration::from_secs(60);
    let polls: Vec<_> = (0..POLLS)
        .map(|n| spawn_poll(&pool, &ids[n % ITEMS], "60s"))
        .collect();
    let (probe, most) = probe_until_full(&pool, &ids[0]).await;
    assert!(
        most <= before + 2,
        "{POLLS} long-polls used {most} consumers of the results bucket (had {before}); \
         they should share the api's one watch\n{}",
        pool.logs()
    );
    let probe = probe.expect("one request past the cap of waiting long-polls gets 429");
    assert_too_many_waiters(&probe);
    // Reading without waiting is not capped.
    assert_eq!(pool.get(&ids[0]).await.expect("get").status, 200);

    pool.add_worker().await.expect("worker");
    for poll in polls {
        let (status, body, took) = poll.await.expect("poll task");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "worked", "{body}");
        assert!(
            took < wait,
            "a long-poll answered at its deadline, not when the work finished: {body}"
        );
    }
    // The places are free again.
    assert_eq!(
        long_poll(&pool, &ids[0], "1s").await.str("status"),
        "worked"
    );
}

#[tokio::test]
async fn past_the_cap_a_long_poll_gets_429_until_a_place_is_free() {
    let mut pool = TestPool::start_with_api_env(PoolSpec::default(), 1, 0, cap_env(2))
        .await
        .expect("pool");
    let first = pool
        .submit(&json!({"data": {"ms": 10, "n": 1}}))
        .await
        .expect("submit");
    let second = pool
        .submit(&json!({"data": {"ms": 10, "n": 2}}))
        .await
        .expect("submit");
    let waiting = [
        spawn_poll(&pool, &first, "60s"),
        spawn_poll(&pool, &second, "60s"),
    ];
    let (refused, _) = probe_until_full(&pool, &first).await;
    let refused = refused.expect("a third waiter over a cap of 2 is refused");
    assert_too_many_waiters(&refused);

    pool.add_worker().await.expect("worker");
    for poll in waiting {
        let (status, body, _) = poll.await.expect("poll task");
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("worked")),
            "{body}\n{}",
            pool.logs()
        );
    }
    // Their places are free again.
    let again = long_poll(&pool, &second, "5s").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.str("status"), "worked");
}

/// A DELETE of running work needs a wait for the worker's answer: with every wait taken
/// it is refused (429) before the worker is asked, so the work runs on, as the 429 says.
#[tokio::test]
async fn a_cancel_refused_at_the_cap_leaves_the_running_work_alone() {
    let mut pool = TestPool::start_with_api_env(PoolSpec::default(), 1, 0, cap_env(1))
        .await
        .expect("pool");
    pool.add_worker().await.expect("worker");
    let running = pool
        .submit(&json!({"data": {"ms": 3000, "n": "running"}}))
        .await
        .expect("submit");
    pool.wait_status(&running, "working", Duration::from_secs(10))
        .await
        .expect("running");
    let holder = pool
        .submit(&json!({"data": {"ms": 20000, "n": "holder"}}))
        .await
        .expect("submit");
    let waiting = spawn_poll(&pool, &holder, "60s");
    let (refused, _) = probe_until_full(&pool, &holder).await;
    assert_too_many_waiters(&refused.expect("the one wait is taken"));

    let cancel = pool.cancel(&running).await.expect("delete");
    assert_too_many_waiters(&cancel);
    let done = pool
        .wait_for(&running, Duration::from_secs(20), |answer| {
            answer.str("status") == "worked" || answer.str("status") == "cancelled"
        })
        .await
        .expect("the running work ends");
    assert_eq!(
        done.str("status"),
        "worked",
        "a refused cancel cancelled it: {done:?}"
    );
    waiting.abort();
}

#[tokio::test]
async fn a_long_poll_answers_at_its_deadline_while_nats_is_down_and_works_again_after() {
    let mut pool = TestPool::start(PoolSpec::default(), 1, 0)
        .await
        .expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 10}}))
        .await
        .expect("submit");
    let poll = spawn_poll(&pool, &id, "2s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.nats.stop().await.expect("nats stops");
    // Far past the 2 s deadline: an answer by then means it did not hang on the watch.
    let (status, body, _) = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the long-poll answered although NATS is down")
        .expect("poll task");
    assert!(
        (status == 503 && body["code"] == "unavailable")
            || (status == 200 && body["status"] == "pending"),
        "{status} {body}"
    );

    pool.nats.start_again().await.expect("nats restarts");
    let mut ready = false;
    for _ in 0..200 {
        if pool.get(&id).await.expect("get").status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the api did not recover\n{}", pool.logs());
    // A long-poll made after the restart is woken by the (restarted) watch.
    let poll = spawn_poll(&pool, &id, "60s");
    pool.add_worker().await.expect("worker");
    let (status, answer, took) = poll.await.expect("poll task");
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("worked")),
        "{answer}\n{}",
        pool.logs()
    );
    assert!(
        took < Duration::from_secs(60),
        "answered at the deadline, not when the work finished: {answer}"
    );
}
