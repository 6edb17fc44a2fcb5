//! Schedules: their ticks queued as delayed work against a real nats-server and run by
//! the real api and worker, once per tick however often they are queued; and a WorkPool
//! with schedules on the real control plane shows them in its status.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use workpool_core::PoolSpec;
use workpool_core::schedule::{Schedule, ScheduleSpec};
use workpool_e2e::operator::{RunningOperator, pool_yaml};
use workpool_e2e::pool::TestPool;
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::pools::{condition, create_pool, install_crd, wait_pool};
use workpool_operator::schedules::queue_ticks;

fn every_second() -> Schedule {
    Schedule::new(&ScheduleSpec {
        name: "tick".into(),
        cron: "* * * * * *".into(),
        time_zone: Some("Europe/Berlin".into()),
        task: Some("clock.tick.run".into()),
        data: json!({"from": "schedule"}),
        key: None,
        priority: None,
        group: None,
    })
    .expect("schedule")
}

#[tokio::test]
async fn each_tick_runs_once_on_time_however_often_it_is_queued() {
    let spec = json!({"worker": {"handler": {"exec": {"command": ["date", "+%s%3N"]}}}});
    let pool = TestPool::start(PoolSpec::from_json(&spec.to_string()).unwrap(), 1, 1)
        .await
        .expect("pool");
    let js = async_nats::jetstream::new(pool.nats.client().await.expect("client"));
    let schedule = every_second();
    let now = Utc::now();
    // Two operator replicas, or two reconciles, queue the same ticks.
    for _ in 0..2 {
        let statuses = queue_ticks(
            &js,
            &pool.names,
            "uid",
            std::slice::from_ref(&schedule),
            now,
        )
        .await
        .expect("queued");
        assert_eq!(statuses[0].queued_ahead, 60, "{statuses:?}");
    }
    let ticks: Vec<DateTime<Utc>> = schedule.ticks(now, now + chrono::Duration::seconds(3), 3);
    for tick in &ticks {
        let id = schedule.tick_id(&pool.names, "uid", *tick);
        let worked = pool
            .wait_status(id.as_str(), "worked", Duration::from_secs(15))
            .await
            .expect("the tick's work ran");
        assert_eq!(worked.body["attempts"], json!(1));
        assert_eq!(worked.str("task"), "clock.tick.run");
        let started_ms = worked.body["result"].as_i64().expect("start time");
        assert!(
            started_ms >= tick.timestamp_millis(),
            "tick {tick} ran at {started_ms}"
        );
    }
    // Queued again after they ran (a late reconcile): past ticks are not queued again,
    // and the ticks still waiting are each one message.
    queue_ticks(&js, &pool.names, "uid", &[schedule], Utc::now())
        .await
        .expect("queued");
    let waiting = pool.queued_messages().await.expect("stream");
    assert!(
        (55..=61).contains(&waiting),
        "{waiting} delayed ticks waiting"
    );
}

#[tokio::test]
async fn a_pool_shows_its_schedules_and_refuses_a_bad_one() {
    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let client = plane.client().await.expect("client");
    let ns = plane.namespace("schedules").await.expect("namespace");
    let nats = NatsServer::start().await.expect("nats");
    let _operator = RunningOperator::start(plane, &ns, "op", "op-0")
        .await
        .expect("operator");
    let schedules = "  schedules:\n  - name: nightly\n    cron: \"0 3 * * *\"\n    timeZone: Europe/Berlin\n    task: reports.nightly.build\n    data: {\"n\": 1}\n";
    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), schedules))
        .await
        .expect("create");
    let pool = wait_pool(&client, &ns, "demo", Duration::from_secs(60), |p| {
        p.status.as_ref().is_some_and(|s| !s.schedules.is_empty())
    })
    .await
    .expect("schedules in the status");
    let nightly = &pool.status.unwrap().schedules[0];
    assert_eq!(nightly.name, "nightly");
    let next: DateTime<Utc> = nightly.next.as_deref().unwrap().parse().expect("a time");
    assert!(
        next > Utc::now() && next < Utc::now() + chrono::Duration::days(1),
        "{next}"
    );
    assert!(nightly.next_id.is_some());

    let bad = "  schedules:\n  - name: broken\n    cron: \"every day\"\n";
    create_pool(&client, &ns, &pool_yaml("bad", &nats.url(), bad))
        .await
        .expect("create");
    let stuck = wait_pool(&client, &ns, "bad", Duration::from_secs(60), |p| {
        condition(p, "Ready").is_some_and(|(_, reason)| reason == "InvalidSpec")
    })
    .await
    .expect("refused");
    let ready = stuck
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(ready.message.contains("every day"), "{}", ready.message);
}
