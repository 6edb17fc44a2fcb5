//! Stranded `pending` records: the api recorded work, then died (or gave up) before its
//! publish landed. The sweep (`workpool_runtime::repair`, run by the operator) deletes such a
//! record, so GET answers 404 and a retry of the POST runs; nothing else is touched.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use workpool_core::message::{PENDING_HEADER, WorkSubmission};
use workpool_core::{PoolSpec, WorkId, WorkRecord};
use workpool_e2e::pool::TestPool;
use workpool_runtime::repair::{self, Swept, sweep_stranded};

const RUN: Duration = Duration::from_secs(15);

async fn jetstream(pool: &TestPool) -> jetstream::Context {
    jetstream::new(pool.nats.client().await.expect("client"))
}

async fn sweep(pool: &TestPool, older_than: Duration) -> Swept {
    sweep_stranded(&jetstream(pool).await, &pool.names, &pool.spec, older_than)
        .await
        .expect("sweep")
}

/// The latest message of the record's key in the bucket, headers and all.
async fn raw_record(pool: &TestPool, id: &WorkId) -> jetstream::message::StreamMessage {
    let kv = jetstream(pool)
        .await
        .get_key_value(pool.names.bucket())
        .await
        .expect("bucket");
    kv.stream
        .direct_get_last_for_subject(repair::record_subject(&pool.names, id))
        .await
        .expect("the record's latest message")
}

fn id_of(body: &Value) -> WorkId {
    let submission: WorkSubmission = serde_json::from_value(body.clone()).expect("submission");
    submission.id(None)
}

/// Removes the work's message from the work stream: the record then stands as it would
/// had the api's publish never landed.
async fn unqueue(pool: &TestPool, id: &WorkId, record: &WorkRecord) {
    let work = jetstream(pool)
        .await
        .get_stream(pool.names.stream())
        .await
        .expect("work stream");
    let subject = repair::work_message_subject(&pool.names, &pool.spec, id, record);
    let message = work
        .direct_get_last_for_subject(subject)
        .await
        .expect("the api queued the work");
    work.delete_message(message.sequence)
        .await
        .expect("message removed");
}

#[tokio::test]
async fn a_pending_record_whose_publish_never_landed_is_repaired_and_the_retry_runs() {
    // No worker yet: queued work stays queued while the sweep looks at it.
    let mut pool = TestPool::start(PoolSpec::default(), 1, 0)
        .await
        .expect("pool starts");

    // 1. The api's own record, its message gone as if the publish never landed.
    let unqueued = json!({"data": {"ms": 10, "n": "unqueued"}});
    let unqueued_id = id_of(&unqueued);
    let answer = pool.post(&unqueued).await.expect("post");
    assert_eq!(answer.status, 202, "{answer:?}");
    let raw = raw_record(&pool, &unqueued_id).await;
    assert_eq!(
        raw.headers.get(PENDING_HEADER).map(|v| v.as_str()),
        Some("1"),
        "the api marks its pending record: {:?}",
        raw.headers
    );
    let record = WorkRecord::from_json(&raw.payload).expect("record");
    unqueue(&pool, &unqueued_id, &record).await;

    // 2. What an api that died between record and publish leaves: the record written
    //    the way the api writes it, no message (keyed work, another subject).
    let crashed = json!({"data": {"ms": 10, "n": "crashed"}, "key": "k-1"});
    let crashed_id = id_of(&crashed);
    let js = jetstream(&pool).await;
    let kv = js.get_key_value(pool.names.bucket()).await.expect("bucket");
    let record = WorkRecord::pending("default", Some("k-1"), "demo-api-0", Utc::now());
    repair::create_pending(&js, &kv, &pool.names, &crashed_id, &record)
        .await
        .expect("pending record written");

    // 3. Queued work, not yet picked up by a worker.
    let queued = json!({"data": {"ms": 10, "n": "queued"}});
    let queued_id = pool.submit(&queued).await.expect("queued");

    let fresh = sweep(&pool, Duration::from_secs(3600)).await;
    assert_eq!(
        (fresh.scanned, fresh.stranded, fresh.repaired),
        (3, 0, 0),
        "records younger than the threshold are never touched"
    );
    for id in [unqueued_id.as_str(), crashed_id.as_str()] {
        assert_eq!(pool.get(id).await.expect("get").str("status"), "pending");
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    // Whether a record's message exists is asked of the stream's leader: a direct get may
    // be answered by a lagging replica, which would call queued work stranded.
    let wire = pool.nats.client().await.expect("client");
    let stream = pool.names.stream();
    let mut direct = wire
        .subscribe(format!("$JS.API.DIRECT.GET.{stream}.>"))
        .await
        .expect("subscribe");
    let mut leader = wire
        .subscribe(format!("$JS.API.STREAM.MSG.GET.{stream}"))
        .await
        .expect("subscribe");
    wire.flush().await.expect("flush");
    let swept = sweep(&pool, Duration::from_millis(100)).await;
    let mut leader_reads = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), leader.next()).await {
        leader_reads += 1;
    }
    assert_eq!(
        leader_reads, 3,
        "each candidate's message is looked up at the leader"
    );
    let sent = tokio::time::timeout(Duration::from_millis(100), direct.next()).await;
    assert!(
        !matches!(sent, Ok(Some(_))),
        "a direct get was sent: {sent:?}"
    );
    assert_eq!(
        (swept.scanned, swept.stranded, swept.repaired),
        (3, 2, 2),
        "{swept:?}"
    );
    for id in [unqueued_id.as_str(), crashed_id.as_str()] {
        let gone = pool.get(id).await.expect("get");
        assert_eq!(gone.status, 404, "the stranded record is gone: {gone:?}");
    }
    let kept = pool.get(&queued_id).await.expect("get");
    assert_eq!(
        (kept.status, kept.str("status")),
        (200, "pending"),
        "queued work keeps its record: {kept:?}"
    );
    let again = sweep(&pool, Duration::from_millis(100)).await;
    assert_eq!((again.stranded, again.repaired), (0, 0), "{again:?}");

    // The retries start afresh and run, and so does the queued work.
    pool.add_worker().await.expect("worker");
    for (body, id) in [(&unqueued, &unqueued_id), (&crashed, &crashed_id)] {
        let retry = pool.post(body).await.expect("retry");
        assert_eq!(retry.status, 202, "{retry:?}");
        assert_eq!(retry.str("callback"), id.as_str());
    }
    for id in [unqueued_id.as_str(), crashed_id.as_str(), &queued_id] {
        pool.wait_status(id, "worked", RUN)
            .await
            .unwrap_or_else(|err| panic!("{id} never ran: {err}\n{}", pool.logs()));
    }
}

#[tokio::test]
async fn records_written_by_workers_are_never_swept() {
    let pool = TestPool::start(PoolSpec::default(), 1, 1)
        .await
        .expect("pool starts");
    let quick = pool
        .submit(&json!({"data": {"ms": 10, "n": "quick"}}))
        .await
        .expect("quick");
    pool.wait_status(&quick, "worked", RUN)
        .await
        .expect("quick worked");
    let slow = pool
        .submit(&json!({"data": {"ms": 3000, "n": "slow"}}))
        .await
        .expect("slow");
    pool.wait_status(&slow, "working", RUN)
        .await
        .expect("slow working");
    let quick_id: WorkId = quick.parse().expect("id");
    let raw = raw_record(&pool, &quick_id).await;
    assert!(
        raw.headers.get(PENDING_HEADER).is_none(),
        "a worker's write drops the api's mark: {:?}",
        raw.headers
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    let swept = sweep(&pool, Duration::ZERO).await;
    assert_eq!(
        (swept.scanned, swept.stranded, swept.repaired),
        (2, 0, 0),
        "{swept:?}"
    );
    assert_eq!(pool.get(&quick).await.expect("get").str("status"), "worked");
    assert_eq!(pool.get(&slow).await.expect("get").str("status"), "working");
    pool.wait_status(&slow, "worked", RUN)
        .await
        .expect("slow worked");
}
