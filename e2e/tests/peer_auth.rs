//! Peer requests from outside the pool change nothing: a `Cancel` or `Leaving` that is
//! not signed with the pool's peer key (unsigned, or signed with another pool's key) is
//! refused, while the api's own signed cancel still stops the running work. Before,
//! any NATS client could cancel a pool's running jobs or take its partitions away.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::json;
use workpool_core::PoolSpec;
use workpool_core::cluster::{PeerReply, PeerRequest};
use workpool_core::peer_auth::{KEY_BYTES, PeerKey};
use workpool_e2e::pool::TestPool;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_worker_acts_only_on_peer_requests_signed_with_its_pool_key() {
    let spec = PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "sleep"}}}"#);
    let pool = TestPool::start(spec.expect("spec"), 1, 1)
        .await
        .expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 30000}}))
        .await
        .expect("submit");
    let working = pool
        .wait_status(&id, "working", WAIT)
        .await
        .expect("working");
    let worker = working.str("worker").to_owned();
    // Only the pool's own NATS user reaches its peer subjects, and workers answer only
    // into the pool's inboxes; the signature is the second wall, against a pod of the
    // pool that is not a member (or credentials that leaked).
    let client = pool
        .nats
        .options()
        .await
        .expect("options")
        .custom_inbox_prefix(pool.names.inbox_prefix())
        .connect(pool.nats.url())
        .await
        .expect("client");
    let ask = |payload: Vec<u8>| {
        let (client, subject) = (client.clone(), pool.names.peer_subject(&worker));
        async move {
            let answer = client
                .request(subject, payload.into())
                .await
                .expect("answered");
            serde_json::from_slice::<PeerReply>(&answer.payload).expect("a peer reply")
        }
    };
    let view = || ask(pool.peer_key.sign(&PeerRequest::View, chrono::Utc::now()));
    let PeerReply::View(before) = view().await else {
        panic!("the pool's key may ask for the view")
    };

    let outsider = PeerKey::from_bytes([9; KEY_BYTES]);
    for request in [
        PeerRequest::Cancel { id: id.clone() },
        PeerRequest::Leaving {
            pod: worker.clone(),
        },
        PeerRequest::View,
    ] {
        let unsigned = serde_json::to_vec(&request).expect("json");
        let forged = outsider.sign(&request, chrono::Utc::now());
        for (how, payload) in [("unsigned", unsigned), ("another key", forged)] {
            let reply = ask(payload).await;
            assert!(
                matches!(reply, PeerReply::Error { .. }),
                "{how} {request:?}: {reply:?}"
            );
        }
    }
    let PeerReply::View(after) = view().await else {
        panic!("view")
    };
    assert_eq!(after.partitions, before.partitions, "no partition moved");
    assert_eq!(after.in_flight, vec![id.clone()], "the work still runs");
    let still = pool.get(&id).await.expect("get");
    assert_eq!(still.str("status"), "working", "{still:?}");

    let cancelled = pool.cancel(&id).await.expect("delete");
    assert_eq!(
        (cancelled.status, cancelled.str("status")),
        (200, "cancelled"),
        "the api's signed cancel stops it: {cancelled:?}"
    );
}
