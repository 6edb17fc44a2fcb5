//! Priorities against a real nats-server and the real api and worker: under a backlog,
//! high work starts first and low work still gets one start in ten (the rule in
//! docs/worker.md, "Priorities"); keyed work refuses a priority; GET shows it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

const EACH: usize = 30;

#[tokio::test]
async fn high_work_drains_first_and_low_work_is_never_starved() {
    // One worker running one job at a time, so the order of starts is the order of picks.
    let spec = json!({"worker": {
        "concurrency": 1,
        "handler": {"exec": {"command": ["date", "+%s%N"]}},
    }});
    let spec = PoolSpec::from_json(&spec.to_string()).unwrap();
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool");

    // The backlog is queued before any worker runs: low first, high last, so the stream's
    // own order is the opposite of the priorities'.
    let mut submitted = Vec::new();
    for priority in ["low", "normal", "high"] {
        for n in 0..EACH {
            let body = json!({"data": format!("{priority}-{n}"), "priority": priority});
            submitted.push((priority, pool.submit(&body).await.expect("submit")));
        }
    }
    let (_, some_high) = submitted.last().unwrap();
    let waiting = pool.get(some_high).await.expect("get");
    assert_eq!(
        (waiting.str("status"), waiting.str("priority")),
        ("pending", "high")
    );

    pool.add_worker().await.expect("worker");
    let mut starts = Vec::new();
    for (priority, id) in &submitted {
        let worked = pool
            .wait_status(id, "worked", Duration::from_secs(60))
            .await
            .expect("worked");
        let started: i64 = worked.body["result"].as_i64().expect("start time");
        let shown = worked.body["priority"].as_str().unwrap_or("normal");
        assert_eq!(shown, *priority, "{worked:?}");
        starts.push((started, *priority));
    }
    starts.sort();
    let order: Vec<&str> = starts.iter().map(|(_, p)| *p).collect();

    // High first: the first ten starts are nine high and one of a lower priority, and the
    // high work is all done well before the normal and low work.
    assert_eq!(
        order[..10].iter().filter(|p| **p == "high").count(),
        9,
        "{order:?}"
    );
    let last_high = order.iter().rposition(|p| *p == "high").unwrap();
    assert!(last_high < EACH + EACH / 2, "{order:?}");
    // Normal before low once high is done.
    let last_normal = order.iter().rposition(|p| *p == "normal").unwrap();
    let first_low_run = order.len() - order.iter().rev().take_while(|p| **p == "low").count();
    assert!(last_normal < first_low_run, "{order:?}");
    // Never starved: between two starts of a priority (and before its first), at most
    // nine starts of higher priorities.
    assert!(most_higher_between(&order, "low") <= 9, "{order:?}");
    assert!(most_higher_between(&order, "normal") <= 9, "{order:?}");
}

fn rank(priority: &str) -> u8 {
    ["high", "normal", "low"]
        .iter()
        .position(|p| *p == priority)
        .map_or(1, |i| i as u8)
}

/// The most starts of priorities higher than `priority` between two of its starts.
fn most_higher_between(order: &[&str], priority: &str) -> usize {
    let last = order.iter().rposition(|p| *p == priority).unwrap_or(0);
    order[..=last]
        .split(|p| *p == priority)
        .map(|run| run.iter().filter(|p| rank(p) < rank(priority)).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn keyed_work_refuses_a_priority_and_unknown_priorities_are_refused() {
    let spec = json!({"worker": {"handler": {"builtin": "echo"}}});
    let spec = PoolSpec::from_json(&spec.to_string()).unwrap();
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    for bad in [
        json!({"data": 1, "key": "k", "priority": "high"}),
        json!({"data": 1, "priority": "urgent"}),
    ] {
        let refused = pool.post(&bad).await.expect("post");
        assert_eq!(refused.status, 400, "{bad}: {refused:?}");
    }
    // Normal is what keyed work has anyway.
    let keyed = pool
        .submit(&json!({"data": 2, "key": "k", "priority": "normal"}))
        .await
        .expect("keyed normal");
    pool.wait_status(&keyed, "worked", Duration::from_secs(30))
        .await
        .expect("worked");
    // Delayed high work is queued as high when due.
    let later = pool
        .submit(&json!({"data": 3, "priority": "high", "delay": "1s"}))
        .await
        .expect("delayed high");
    let worked = pool
        .wait_status(&later, "worked", Duration::from_secs(30))
        .await
        .expect("worked");
    assert_eq!(worked.str("priority"), "high");
}
