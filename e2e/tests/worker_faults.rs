//! The worker under faults: killed mid-job, SIGTERM, failing handlers, NATS restarts.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

/// Counts `work.<verb>` events per work id until `quiet` passes with none.
async fn count_events(
    mut events: async_nats::Subscriber,
    quiet: Duration,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    while let Ok(Some(message)) = tokio::time::timeout(quiet, events.next()).await {
        let event: Value = serde_json::from_slice(&message.payload).expect("event JSON");
        *counts
            .entry(event["id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_nothing() {
    let spec =
        PoolSpec::from_json(r#"{"worker": {"ackWait": "1s", "concurrency": 2}}"#).expect("spec");
    let mut pool = TestPool::start(spec, 1, 2).await.expect("pool");
    let client = pool.nats.client().await.expect("client");
    let worked_events = client
        .subscribe(pool.names.event_filter("work", "worked"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let long = pool
        .post(&json!({"data": {"ms": 2500}}))
        .await
        .expect("post");
    let long_id = long.str("callback").to_owned();
    let mut ids: Vec<String> = Vec::new();
    for n in 0..20 {
        let answer = pool
            .post(&json!({"data": {"ms": 200, "n": n}}))
            .await
            .expect("post");
        assert_eq!(answer.status, 202);
        ids.push(answer.str("callback").to_owned());
    }
    let working = pool
        .wait_status(&long_id, "working", Duration::from_secs(10))
        .await
        .expect("working");
    let victim = working.str("worker").to_owned();
    let index = pool
        .workers
        .iter()
        .position(|w| w.pod == victim)
        .expect("victim is ours");
    pool.workers[index].process.kill();

    let done = pool
        .wait_status(&long_id, "worked", Duration::from_secs(20))
        .await
        .expect("finished elsewhere");
    assert_ne!(done.str("worker"), victim);
    assert_eq!(done.body["attempts"], json!(2));
    for id in &ids {
        pool.wait_status(id, "worked", Duration::from_secs(20))
            .await
            .expect("every job worked");
    }
    let counts = count_events(worked_events, Duration::from_millis(500)).await;
    ids.push(long_id);
    for id in &ids {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "exactly one terminal transition for {id}"
        );
    }
}

#[tokio::test]
async fn sigterm_finishes_running_work_and_hands_back_the_rest() {
    let spec = PoolSpec::from_json(r#"{"worker": {"concurrency": 2}}"#).expect("spec");
    let mut pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            pool.submit(&json!({"data": {"ms": 1500, "n": n}}))
                .await
                .expect("submit"),
        );
    }
    // Worker 0 holds two jobs; the rest wait in the queue.
    let mut running = Vec::new();
    while running.len() < 2 {
        running.clear();
        for id in &ids {
            if pool.get(id).await.expect("get").str("status") == "working" {
                running.push(id.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.add_worker().await.expect("second worker");
    pool.workers[0].process.terminate();
    let status = pool.workers[0]
        .process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success(), "clean exit: {status:?}\n{}", pool.logs());
    for id in &running {
        let record = pool.get(id).await.expect("get");
        assert_eq!(
            (
                record.str("status"),
                record.str("worker"),
                record.body["attempts"].clone()
            ),
            ("worked", "demo-worker-0", json!(1)),
            "in-flight work finished by the stopping worker"
        );
    }
    for id in &ids {
        let record = pool
            .wait_status(id, "worked", Duration::from_secs(20))
            .await
            .expect("all worked");
        if !running.contains(id) {
            assert_eq!(record.str("worker"), "demo-worker-1");
        }
    }
}

#[tokio::test]
async fn work_still_running_at_the_drain_timeout_goes_to_another_worker() {
    let spec = PoolSpec::from_json(r#"{"worker": {"concurrency": 1}}"#).expect("spec");
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let short_drain = [("WORKPOOL_DRAIN_TIMEOUT".to_owned(), "300ms".to_owned())];
    pool.add_worker_with_env(&short_drain)
        .await
        .expect("worker");
    let id = pool
        .submit(&json!({"data": {"ms": 3000}}))
        .await
        .expect("submit");
    pool.wait_status(&id, "working", Duration::from_secs(10))
        .await
        .expect("working");
    pool.workers[0].process.terminate();
    let status = pool.workers[0]
        .process
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits");
    assert!(status.success());
    pool.add_worker().await.expect("second worker");
    let done = pool
        .wait_status(&id, "worked", Duration::from_secs(15))
        .await
        .expect("worked");
    assert_eq!(
        (done.str("worker"), done.body["attempts"].clone()),
        ("demo-worker-1", json!(2))
    );
}

#[tokio::test]
async fn failing_work_is_retried_with_backoff_then_failed_and_dead_lettered() {
    let spec = PoolSpec::from_json(
        r#"{"worker": {"maxAttempts": 3, "backoff": ["200ms", "400ms"],
            "handler": {"exec": {"command": ["sh", "-c", "echo \"attempt $WORKPOOL_ATTEMPT broke\" >&2; exit 7"]}}}}"#,
    )
    .expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let client = pool.nats.client().await.expect("client");
    let mut retried = client
        .subscribe(pool.names.event_filter("work", "retried"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let started = std::time::Instant::now();
    let id = pool
        .submit(&json!({"data": "doomed"}))
        .await
        .expect("submit");
    let failed = pool
        .wait_status(&id, "failed", Duration::from_secs(20))
        .await
        .expect("failed");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the backoff delays were skipped"
    );
    assert_eq!(failed.body["attempts"], json!(3));
    assert!(
        failed.str("error").contains("attempt 3 broke"),
        "{failed:?}"
    );
    for attempt in 1..=2 {
        let event = tokio::time::timeout(Duration::from_secs(5), retried.next())
            .await
            .expect("retried event")
            .expect("event");
        let event: Value = serde_json::from_slice(&event.payload).expect("json");
        assert_eq!(event["attempt"], json!(attempt));
    }

    let js = async_nats::jetstream::new(client);
    let dead = js
        .get_stream(pool.names.dead_letter_stream())
        .await
        .expect("dlq");
    let letter = dead
        .get_last_raw_message_by_subject(&pool.names.dead_letter_subject(&id.parse().expect("id")))
        .await
        .expect("dead letter");
    let body: Value = serde_json::from_slice(&letter.payload).expect("payload");
    assert_eq!(body["data"], json!("doomed"));
    let attempts = letter
        .headers
        .get("Workpool-Attempts")
        .map(|v| v.as_str().to_owned());
    assert_eq!(attempts.as_deref(), Some("3"));
    let error = letter
        .headers
        .get("Workpool-Error")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(error.contains("attempt 3 broke"), "{error}");
    let work = pool.queued_messages().await.expect("stream state");
    assert_eq!(work, 0, "the failed message left the work queue");
}

#[tokio::test]
async fn exec_handler_results_and_timeout_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let script = format!(
        "input=$(cat); case \"$input\" in *slow*) echo $$ >> {pids}; exec sleep 30;; esac; printf '%s' \"$input\"",
        pids = pids.display()
    );
    let spec = PoolSpec {
        worker: workpool_core::spec::WorkerSpec {
            handler: workpool_core::spec::HandlerSpec::Exec {
                command: vec!["sh".into(), "-c".into(), script],
            },
            timeout: Duration::from_millis(500),
            max_attempts: 2,
            backoff: vec![Duration::from_millis(100)],
            ..Default::default()
        },
        ..Default::default()
    };
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let fast = pool
        .submit(&json!({"data": {"x": 1}, "task": "resize"}))
        .await
        .expect("submit");
    let done = pool
        .wait_status(&fast, "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(
        done.body["result"]["data"],
        json!({"x": 1}),
        "the program got the work as JSON on stdin"
    );
    assert_eq!(done.body["result"]["task"], json!("resize"));
    assert_eq!(done.body["result"]["id"], json!(fast));

    let slow = pool.submit(&json!({"data": "slow"})).await.expect("submit");
    let failed = pool
        .wait_status(&slow, "failed", Duration::from_secs(10))
        .await
        .expect("failed");
    assert!(failed.str("error").contains("timed out"), "{failed:?}");
    let killed: Vec<i32> = std::fs::read_to_string(&pids)
        .expect("pids")
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    assert_eq!(killed.len(), 2, "one program per attempt");
    for pid in killed {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "));
        assert!(!alive, "program {pid} outlived its timeout");
    }
}

#[tokio::test]
async fn http_handler_2xx_result_4xx_permanent_5xx_retried() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let calls = flaky_calls.clone();
    let sidecar = axum::Router::new().route(
        "/work",
        axum::routing::post(move |axum::Json(work): axum::Json<Value>| {
            let calls = calls.clone();
            async move {
                use axum::http::StatusCode;
                match work["data"]["mode"].as_str() {
                    Some("bad") => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        axum::Json(json!({"why": "bad input"})),
                    ),
                    Some("flaky") if calls.fetch_add(1, Ordering::SeqCst) < 2 => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({"why": "busy"})),
                    ),
                    _ => (
                        StatusCode::OK,
                        axum::Json(json!({"handled": work["data"], "attempt": work["attempt"]})),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, sidecar).await });

    let spec = PoolSpec::from_json(&format!(
        r#"{{"worker": {{"maxAttempts": 4, "backoff": ["100ms"], "handler": {{"http": {{"url": "http://{address}/work"}}}}}}}}"#
    ))
    .expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let ok = pool
        .submit(&json!({"data": {"mode": "ok"}}))
        .await
        .expect("submit");
    let bad = pool
        .submit(&json!({"data": {"mode": "bad"}}))
        .await
        .expect("submit");
    let flaky = pool
        .submit(&json!({"data": {"mode": "flaky"}}))
        .await
        .expect("submit");

    let ok = pool
        .wait_status(&ok, "worked", Duration::from_secs(10))
        .await
        .expect("ok worked");
    assert_eq!(
        ok.body["result"],
        json!({"handled": {"mode": "ok"}, "attempt": 1})
    );
    let bad = pool
        .wait_status(&bad, "failed", Duration::from_secs(10))
        .await
        .expect("bad failed");
    assert_eq!(bad.body["attempts"], json!(1), "4xx is permanent: no retry");
    assert!(bad.str("error").contains("422"), "{bad:?}");
    let flaky = pool
        .wait_status(&flaky, "worked", Duration::from_secs(10))
        .await
        .expect("flaky worked");
    assert_eq!(flaky.body["attempts"], json!(3));
    assert_eq!(flaky.body["result"]["attempt"], json!(3));
}

#[tokio::test]
async fn every_accepted_post_is_worked_across_a_nats_restart_under_load() {
    let spec = PoolSpec::from_json(
        r#"{"worker": {"handler": {"builtin": "echo"}, "concurrency": 8, "ackWait": "2s"}}"#,
    )
    .expect("spec");
    let mut pool = TestPool::start(spec, 1, 2).await.expect("pool");
    let url = format!("{}/api/v1/work", pool.api_url(0));
    let http = pool.http.clone();
    let load = tokio::spawn(async move {
        let mut accepted = Vec::new();
        let mut statuses = HashSet::new();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let mut n = 0u64;
        while std::time::Instant::now() < until {
            n += 1;
            if let Ok(response) = http
                .post(&url)
                .json(&json!({"data": {"n": n}}))
                .send()
                .await
            {
                let status = response.status().as_u16();
                statuses.insert(status);
                if status == 202 {
                    let body: Value = response.json().await.unwrap_or_default();
                    accepted.push(body["callback"].as_str().unwrap_or_default().to_owned());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (accepted, statuses)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pool.nats.stop().await.expect("stop");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pool.nats.start_again().await.expect("start again");
    let (accepted, statuses) = load.await.expect("load task");
    assert!(
        accepted.len() > 50,
        "the load ran: {} accepted",
        accepted.len()
    );
    assert!(
        statuses.iter().all(|s| [202, 503].contains(s)),
        "only 202 and 503 answers: {statuses:?}"
    );
    assert!(statuses.contains(&503), "the outage was seen");
    for id in &accepted {
        pool.wait_status(id, "worked", Duration::from_secs(30))
            .await
            .unwrap_or_else(|err| panic!("{err}\n{}", pool.logs()));
    }
}

#[tokio::test]
async fn api_and_worker_started_before_provisioning_become_ready_when_it_happens() {
    let spec =
        PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).expect("spec");
    let mut pool = TestPool::unprovisioned(spec, Vec::new())
        .await
        .expect("nats");
    let api = pool
        .spawn_unready("workpool-api", "demo-api-0".into(), &[])
        .expect("api");
    let worker = pool
        .spawn_unready("workpool-worker", "demo-worker-0".into(), &[])
        .expect("worker");
    tokio::time::sleep(Duration::from_millis(800)).await;
    for member in [&api, &worker] {
        let url = format!("http://127.0.0.1:{}/readyz", member.port);
        let status = pool
            .http
            .get(&url)
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16();
        assert_eq!(
            status, 503,
            "{} is not ready before its NATS objects exist",
            member.pod
        );
    }
    pool.apis.push(api);
    let early = pool
        .post(&json!({"data": "too early"}))
        .await
        .expect("post");
    assert_eq!(
        (early.status, early.str("code")),
        (503, "unavailable"),
        "{early:?}"
    );

    pool.provision().await.expect("provision");
    pool.wait_ready(&worker).await.expect("worker ready");
    pool.wait_ready(&pool.apis[0]).await.expect("api ready");
    pool.workers.push(worker);
    let id = pool
        .submit(&json!({"data": "on time"}))
        .await
        .expect("submit");
    let done = pool
        .wait_status(&id, "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    assert_eq!(done.body["result"], json!("on time"));
}

#[tokio::test]
async fn work_whose_last_attempt_never_finished_is_failed_and_dead_lettered() {
    // One attempt allowed; the worker running it dies, so the redelivery finds every
    // attempt used up.
    let spec =
        PoolSpec::from_json(r#"{"worker": {"maxAttempts": 1, "ackWait": "1s"}}"#).expect("spec");
    let mut pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 5000}}))
        .await
        .expect("submit");
    pool.wait_status(&id, "working", Duration::from_secs(10))
        .await
        .expect("working");
    pool.workers[0].process.kill();
    pool.add_worker().await.expect("second worker");
    let failed = pool
        .wait_status(&id, "failed", Duration::from_secs(15))
        .await
        .expect("failed");
    assert!(failed.str("error").contains("never finished"), "{failed:?}");
    assert_eq!(failed.body["attempts"], json!(1));
    let js = async_nats::jetstream::new(pool.nats.client().await.expect("client"));
    let dead = js
        .get_stream(pool.names.dead_letter_stream())
        .await
        .expect("dlq");
    dead.get_last_raw_message_by_subject(&pool.names.dead_letter_subject(&id.parse().expect("id")))
        .await
        .expect("dead letter stored");
    assert_eq!(pool.queued_messages().await.expect("stream"), 0);
}
