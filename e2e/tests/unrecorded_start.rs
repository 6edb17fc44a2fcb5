//! Fresh work starts without recording `working` first: a short job costs the api's
//! message and the worker's outcome, one that runs on records `working` within moments, and a DELETE of
//! work that is still `pending` answers only once an unrecorded attempt cannot be running.
//! Each pool queues its work before its worker starts, so the worker's first pulls find
//! it waiting and every delivery is fresh.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::{TestPool, shell_handler_spec};

const WAIT: Duration = Duration::from_secs(30);

/// A short job costs two JetStream writes: the api's message, which is the work's
/// `pending` state, and the worker's outcome (before: a `pending` record first, three).
#[tokio::test]
async fn a_short_job_costs_two_jetstream_writes_its_message_and_its_outcome() {
    let spec =
        PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}, "concurrency": 8}}"#);
    let mut pool = TestPool::start(spec.expect("spec"), 1, 0)
        .await
        .expect("pool");
    // Every write to the bucket and the work stream from here on.
    let client = pool.nats.client().await.expect("client");
    let mut writes = futures::stream::select_all([
        client
            .subscribe(format!("$KV.{}.>", pool.names.bucket()))
            .await
            .expect("subscribe"),
        client
            .subscribe(pool.names.work_filter())
            .await
            .expect("subscribe"),
    ]);
    client.flush().await.expect("flush");
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            pool.submit(&json!({"data": {"n": n}}))
                .await
                .expect("submit"),
        );
    }
    pool.add_worker().await.expect("worker");
    for id in &ids {
        let done = pool.wait_status(id, "worked", WAIT).await.expect("worked");
        assert_eq!(done.body["attempts"], 1, "{done:?}");
        assert_eq!(done.body["worker"], "demo-worker-0", "{done:?}");
    }
    let mut per_id: HashMap<String, usize> = HashMap::new();
    while per_id.values().sum::<usize>() < 2 * ids.len() {
        let write = tokio::time::timeout(WAIT, writes.next())
            .await
            .expect("a write")
            .expect("subscription");
        count_write(&mut per_id, &write);
    }
    // Writes still on their way would show as a third write of some id.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(write)) = tokio::time::timeout(Duration::from_millis(50), writes.next()).await
    {
        count_write(&mut per_id, &write);
    }
    for id in &ids {
        assert_eq!(
            per_id.get(id),
            Some(&2),
            "two writes, the message and the outcome, for {id}: {per_id:?}"
        );
    }
}

#[tokio::test]
async fn an_attempt_that_runs_on_records_working_with_its_lease() {
    let mut pool = TestPool::start(PoolSpec::from_json("{}").expect("spec"), 1, 0)
        .await
        .expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 3000}}))
        .await
        .expect("submit");
    pool.add_worker().await.expect("worker");
    let working = pool
        .wait_status(&id, "working", Duration::from_secs(2))
        .await
        .expect("working while it runs");
    assert_eq!(working.body["attempts"], 1, "{working:?}");
    assert_eq!(working.body["worker"], "demo-worker-0", "{working:?}");
    assert!(working.body["lease_until"].is_string(), "{working:?}");
    pool.wait_status(&id, "worked", WAIT).await.expect("worked");
}

#[tokio::test]
async fn a_delete_of_pending_work_answers_once_no_unrecorded_attempt_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let script = format!("echo $$ >> {}; exec sleep 30", pids.display());
    let spec = shell_handler_spec(script);
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let id = pool.submit(&json!({"data": "long"})).await.expect("submit");
    pool.add_worker().await.expect("worker");
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pids)
            .ok()
            .and_then(|text| text.lines().next().and_then(|l| l.parse::<i32>().ok()))
        {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let cancelled = pool.cancel(&id).await.expect("delete");
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(cancelled.str("status"), "cancelled", "{cancelled:?}");
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z "));
    assert!(
        !alive,
        "the handler {pid} still ran when DELETE answered cancelled"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pool.get(&id).await.expect("get");
    assert_eq!(after.str("status"), "cancelled", "{after:?}");
    assert_eq!(pool.queued_messages().await.expect("stream"), 0);
}

/// Cancelling a key's job in its first moments must not free the key while the handler
/// still runs. An unrecorded start would leave the DELETE to remove a message whose
/// handler runs on for up to the unrecorded limit; removing it hands the partition's single
/// slot to the key's next job at once, and the two overlapped. So keyed work records
/// `working` before its handler starts, and the DELETE finds it running.
#[tokio::test]
async fn a_delete_of_a_starting_keyed_job_does_not_let_the_next_job_of_its_key_overlap_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    // The lock is the key: the kernel frees it when the handler's processes are gone,
    // however they were stopped.
    let script = format!(
        "exec 9>>{lock}; flock -n 9 || echo overlap >> {log}; \
         echo \"start $WORKPOOL_WORK_ID\" >> {log}; exec sleep 2",
        lock = dir.path().join("lock").display(),
        log = log.display(),
    );
    let spec = shell_handler_spec(script);
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let first = pool
        .submit(&json!({"key": "k", "data": "first"}))
        .await
        .expect("submit");
    let next = pool
        .submit(&json!({"key": "k", "data": "next"}))
        .await
        .expect("submit");
    pool.add_worker().await.expect("worker");
    let started = format!("start {first}");
    while !std::fs::read_to_string(&log).is_ok_and(|text| text.contains(&started)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancelled = pool.cancel(&first).await.expect("delete");
    assert_eq!(cancelled.str("status"), "cancelled", "{cancelled:?}");
    pool.wait_status(&next, "worked", WAIT)
        .await
        .expect("the next job runs");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains("overlap"),
        "two jobs of key k ran at once:\n{text}"
    );
}

/// Counts a write for its work id: the key of a bucket write (`$KV.<bucket>.<id>`), the
/// token after the kind of a work message (`wp.<ns>.<pool>.work.<id>.<task>`).
fn count_write(per_id: &mut HashMap<String, usize>, write: &async_nats::Message) {
    let subject = write.subject.as_str();
    let id = match subject.strip_prefix("$KV.") {
        Some(key) => key.rsplit('.').next(),
        None => subject.split('.').nth(4),
    }
    .unwrap_or_default();
    *per_id.entry(id.to_owned()).or_default() += 1;
}
