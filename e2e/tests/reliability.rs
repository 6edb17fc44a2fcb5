//! Holes in "nothing accepted is lost", each pinned by the test that found it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::chaos::ledger::{Execution, LedgerServer, executions};
use workpool_e2e::pool::TestPool;
use workpool_local_cluster::paths;

/// A pool whose handler is the ledger program, sending to a ledger server on loopback.
async fn ledger_spec(worker: serde_json::Value) -> (PoolSpec, LedgerServer) {
    let ledger = LedgerServer::start("127.0.0.1").await.expect("ledger");
    let program = paths::workspace_binary("workpool-ledger").expect("ledger program built");
    let mut worker = worker;
    worker["handler"] = json!({"exec": {"command": [program, ledger.address]}});
    let spec = PoolSpec::from_json(&json!({"worker": worker}).to_string()).expect("spec");
    (spec, ledger)
}

fn ledger_runs(ledger: &LedgerServer, id: &str) -> Vec<Execution> {
    executions(&ledger.text())
        .into_iter()
        .filter(|run| run.id == id)
        .collect()
}

fn overlapping(runs: &[Execution]) -> bool {
    runs.windows(2)
        .any(|pair| pair[0].ended_by() > pair[1].start_ns)
}

/// The README's demo: the same content POSTed again after its record expired runs again,
/// although the stream's dedupe window still remembers the first message.
#[tokio::test]
async fn the_same_content_after_its_record_expired_runs_again() {
    let spec = PoolSpec::from_json(r#"{"resultTTL": "2s"}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool starts");
    for idempotency_key in [None, Some("order-7")] {
        let post = || {
            let mut request = pool
                .http
                .post(format!("{}/api/v1/work", pool.api_url(0)))
                .json(&json!({"data": "foo"}));
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            pool.send(request)
        };
        let first = post().await.expect("post");
        assert_eq!(first.status, 202, "{first:?}");
        let id = first.str("callback").to_owned();
        pool.wait_status(&id, "worked", Duration::from_secs(10))
            .await
            .expect("first run worked");
        pool.wait_for(&id, Duration::from_secs(10), |answer| answer.status == 404)
            .await
            .expect("record expired");

        let again = post().await.expect("post again");
        assert_eq!(again.status, 202, "{again:?}");
        assert_eq!(again.str("callback"), id);
        pool.wait_status(&id, "worked", Duration::from_secs(10))
            .await
            .unwrap_or_else(|err| panic!("the resubmission never ran: {err}\n{}", pool.logs()));
    }
}

/// Work queued for longer than `resultTTL` (no worker yet) keeps its `pending` record,
/// and the same content POSTed meanwhile is that work, not a second generation: the
/// chaos checker found the record expired under queued work, the resubmission made a
/// new record, and the first submission never got a terminal record of its own while
/// the second ran twice. Once it finished, its record expires after `resultTTL`.
#[tokio::test]
async fn queued_work_keeps_its_record_past_the_result_ttl() {
    let (mut spec, ledger) = ledger_spec(json!({})).await;
    spec.result_ttl = Duration::from_secs(1);
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let body = json!({"data": {"ms": 10, "queued": "long"}});
    let id = pool.submit(&body).await.expect("submit");
    let created = pool
        .get(&id)
        .await
        .expect("get")
        .str("created_at")
        .to_owned();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let waiting = pool.get(&id).await.expect("get");
    assert_eq!(
        (waiting.status, waiting.str("status")),
        (200, "pending"),
        "{waiting:?}"
    );
    assert_eq!(waiting.str("created_at"), created, "{waiting:?}");
    let again = pool.post(&body).await.expect("post again");
    // 200 with the record, not 202 for a new generation.
    assert_eq!(
        (again.status, again.str("status")),
        (200, "pending"),
        "{again:?}"
    );

    pool.add_worker().await.expect("worker");
    let worked = pool
        .wait_status(&id, "worked", Duration::from_secs(10))
        .await
        .expect("the queued work ran");
    assert_eq!(worked.str("created_at"), created, "{worked:?}");
    pool.wait_for(&id, Duration::from_secs(10), |answer| answer.status == 404)
        .await
        .expect("the finished record expired");
    assert_eq!(ledger_runs(&ledger, &id).len(), 1, "ran once");
}

/// A message delivered again after its work finished and the terminal record expired
/// (its ack was lost, say in a NATS restart) is acked, not run again: open records never
/// expire, so a missing record means finished work. Before, the worker took a missing
/// record for one that had expired in the queue and ran the work afresh (the checker saw
/// cancelled work run 40 s later).
#[tokio::test]
async fn a_redelivery_after_the_record_expired_does_not_run_again() {
    let (mut spec, ledger) = ledger_spec(json!({})).await;
    spec.result_ttl = Duration::from_secs(1);
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 10}}))
        .await
        .expect("submit");
    let worked = pool
        .wait_status(&id, "worked", Duration::from_secs(10))
        .await
        .expect("worked");
    pool.wait_for(&id, Duration::from_secs(10), |answer| answer.status == 404)
        .await
        .expect("the finished record expired");
    // The same message again, as the server would redeliver it.
    let message = workpool_core::message::WorkMessage {
        id: id.parse().expect("id"),
        task: "default".into(),
        key: None,
        data: json!({"ms": 10}),
        accepted_by: "demo-api-0".into(),
        created_at: worked.str("created_at").parse().expect("created_at"),
        tenant: None,
        ttl: None,
        run_at: None,
        priority: Default::default(),
        callback_url: None,
        group: None,
        parked: 0,
        trace: None,
    };
    let js = async_nats::jetstream::new(pool.nats.client().await.expect("nats"));
    let subject = pool.names.work_subject("default", &message.id);
    js.publish(subject, message.to_json().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let drained = async {
        while pool.queued_messages().await.expect("stream") > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the worker took the message");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ledger_runs(&ledger, &id).len(),
        1,
        "ran again after it finished"
    );
    assert_eq!(
        pool.get(&id).await.expect("get").status,
        404,
        "no new record"
    );
}

/// NATS frozen for longer than `ackWait`: the worker cannot prove its hold, so it stops
/// the attempt before the server can hand the message to anyone else, and the work runs
/// once at a time (before the fence, the first attempt ran on beside the redelivery).
#[tokio::test]
async fn an_attempt_that_cannot_prove_its_hold_stops_before_redelivery() {
    let (spec, ledger) = ledger_spec(json!({"ackWait": "2s", "timeout": "30s"})).await;
    let pool = TestPool::start(spec, 1, 2).await.expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 6000}}))
        .await
        .expect("submit");
    pool.wait_status(&id, "working", Duration::from_secs(10))
        .await
        .expect("working");
    pool.nats.pause();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pool.nats.resume();
    let done = pool
        .wait_status(&id, "worked", Duration::from_secs(40))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", pool.logs()));
    let runs = ledger_runs(&ledger, &id);
    assert!(
        !overlapping(&runs),
        "attempts overlapped: {runs:?}\n{}",
        pool.logs()
    );
    assert!(done.body["attempts"].as_u64() >= Some(2), "{done:?}");
}

/// A DELETE of running work whose worker does not answer is a request, never a
/// `cancelled` while the handler may still run; the worker honours it once it can.
#[tokio::test]
async fn cancel_of_running_work_whose_worker_is_silent_is_only_requested() {
    let (spec, ledger) = ledger_spec(json!({"ackWait": "10s"})).await;
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 8000}}))
        .await
        .expect("submit");
    pool.wait_status(&id, "working", Duration::from_secs(10))
        .await
        .expect("working");
    // `working` is written before the program starts: pause only once it runs.
    let started = async {
        while ledger_runs(&ledger, &id).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), started)
        .await
        .expect("the handler started");
    pool.workers[0].process.pause();
    let answer = pool.cancel(&id).await.expect("delete");
    pool.workers[0].process.resume();
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.str("status"), "working");
    assert_eq!(answer.body["cancel_requested"], json!(true), "{answer:?}");
    let cancelled = pool
        .wait_status(&id, "cancelled", Duration::from_secs(20))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", pool.logs()));
    assert!(cancelled.body["result"].is_null());
    let runs = ledger_runs(&ledger, &id);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0].end_ns.is_none(),
        "the handler was stopped: {runs:?}"
    );
}

/// Cancelled queued work stays cancelled however long it waited: its message is removed,
/// so it does not run once the `cancelled` record has expired.
#[tokio::test]
async fn cancelled_queued_work_never_runs_even_after_its_record_expired() {
    let (mut spec, ledger) = ledger_spec(json!({})).await;
    spec.result_ttl = Duration::from_secs(2);
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 10}}))
        .await
        .expect("submit");
    let answer = pool.cancel(&id).await.expect("delete");
    assert_eq!(
        (answer.status, answer.str("status")),
        (200, "cancelled"),
        "{answer:?}"
    );
    pool.wait_for(&id, Duration::from_secs(10), |answer| answer.status == 404)
        .await
        .expect("cancelled record expired");
    pool.add_worker().await.expect("worker");
    let probe = pool
        .submit(&json!({"data": {"ms": 10, "probe": true}}))
        .await
        .expect("probe");
    pool.wait_status(&probe, "worked", Duration::from_secs(10))
        .await
        .expect("the worker runs work");
    assert_eq!(pool.queued_messages().await.expect("stream"), 0);
    assert!(ledger_runs(&ledger, &id).is_empty(), "cancelled work ran");
}

/// The worker running a job is frozen (SIGSTOP) or killed (SIGKILL) past `ackWait`: its
/// exec program must stop before the server hands the work to another worker (before the
/// exec guard, the program ran on beside the redelivered attempt).
#[tokio::test]
async fn a_frozen_or_killed_worker_s_program_stops_before_redelivery() {
    for kill in [false, true] {
        let (spec, ledger) = ledger_spec(json!({"ackWait": "2s", "timeout": "30s"})).await;
        let mut pool = TestPool::start(spec, 1, 2).await.expect("pool");
        let id = pool
            .submit(&json!({"data": {"ms": 6000, "kill": kill}}))
            .await
            .expect("submit");
        let working = pool
            .wait_status(&id, "working", Duration::from_secs(10))
            .await
            .expect("working");
        let holder = pool
            .workers
            .iter()
            .position(|w| w.pod == working.str("worker"))
            .expect("a worker of ours");
        // Only once its program runs: the fault must hit a running handler.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ledger_runs(&ledger, &id).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if kill {
            pool.workers[holder].process.kill();
        } else {
            pool.workers[holder].process.pause();
        }
        let done = pool
            .wait_status(&id, "worked", Duration::from_secs(40))
            .await
            .unwrap_or_else(|err| panic!("{err}\n{}", pool.logs()));
        pool.workers[holder].process.resume();
        let runs = ledger_runs(&ledger, &id);
        assert!(
            runs.len() >= 2 && !overlapping(&runs),
            "kill={kill}: attempts overlapped: {runs:?}\n{}",
            pool.logs()
        );
        assert_ne!(done.str("worker"), working.str("worker"));
    }
}

/// An exec program that cannot start fails for good at once, also under the exec guard
/// (which starts it): retrying cannot help (the guard's first version made it retryable).
#[tokio::test]
async fn an_exec_program_that_cannot_start_fails_for_good_at_once() {
    let spec = PoolSpec::from_json(
        r#"{"worker": {"maxAttempts": 5, "handler": {"exec": {"command": ["/nonexistent/program"]}}}}"#,
    )
    .expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let id = pool.submit(&json!({"data": 1})).await.expect("submit");
    let failed = pool
        .wait_status(&id, "failed", Duration::from_secs(10))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", pool.logs()));
    assert_eq!(failed.body["attempts"], json!(1), "{failed:?}");
    assert!(
        failed
            .str("error")
            .contains("cannot start /nonexistent/program"),
        "{failed:?}"
    );
}

/// A body under the api's limit whose message the stream cannot carry (numbers like
/// `1E2` grow into `100.0` on the way) is a 413 with no record left behind, not a 503
/// that every retry repeats.
#[tokio::test]
async fn work_the_stream_cannot_carry_is_413_and_leaves_no_record() {
    let spec = PoolSpec::from_json(r#"{"queue": {"maxPayloadBytes": 65536}}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let numbers = vec!["1E2"; 15_000].join(",");
    let body = format!(r#"{{"data": [{numbers}]}}"#);
    assert!(body.len() < 65_536);
    let answer = pool
        .send(
            pool.http
                .post(format!("{}/api/v1/work", pool.api_url(0)))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
        .expect("post");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.str("code"), "payload_too_large", "{answer:?}");
    let data: serde_json::Value = serde_json::from_str(&format!("[{numbers}]")).expect("numbers");
    let id = pool.content_id(&data);
    assert_eq!(pool.get(id.as_str()).await.expect("get").status, 404);
    assert_eq!(pool.queued_messages().await.expect("stream"), 0);
}

/// The reads that decide whether queued work exists (a cancel's removal of its message,
/// a resubmission's check of its first publish) go to the stream's leader: a direct get
/// may be answered by a lagging replica of a replicated stream, which would call queued
/// work missing. Watched on the wire: no direct get of the work stream is sent.
#[tokio::test]
async fn whether_work_is_queued_is_asked_of_the_stream_leader() {
    let (spec, _ledger) = ledger_spec(json!({})).await;
    let pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let watcher = pool.nats.client().await.expect("client");
    let stream = pool.names.stream();
    let mut direct = watcher
        .subscribe(format!("$JS.API.DIRECT.GET.{stream}.>"))
        .await
        .expect("subscribe");
    let mut direct_by_sequence = watcher
        .subscribe(format!("$JS.API.DIRECT.GET.{stream}"))
        .await
        .expect("subscribe");
    let mut leader = watcher
        .subscribe(format!("$JS.API.STREAM.MSG.GET.{stream}"))
        .await
        .expect("subscribe");
    watcher.flush().await.expect("flush");

    let body = json!({"data": {"ms": 10}});
    let id = pool.submit(&body).await.expect("submit");
    let again = pool.post(&body).await.expect("resubmit");
    assert_eq!(again.status, 200, "{again:?}");
    let answer = pool.cancel(&id).await.expect("delete");
    assert_eq!(answer.str("status"), "cancelled", "{answer:?}");

    let mut leader_reads = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), leader.next()).await {
        leader_reads += 1;
    }
    assert!(
        leader_reads >= 2,
        "the resubmission and the cancel ask the leader"
    );
    for (name, subscription) in [
        ("by subject", &mut direct),
        ("by sequence", &mut direct_by_sequence),
    ] {
        let sent = tokio::time::timeout(Duration::from_millis(100), subscription.next()).await;
        assert!(
            !matches!(sent, Ok(Some(_))),
            "a direct get {name} of the work stream was sent: {sent:?}"
        );
    }
}
