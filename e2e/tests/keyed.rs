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
