//! `GET /api/v1/work/{id}/events` against a real nats-server and the real api and worker:
//! the record as server-sent events, from queued to finished, then the end.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::{Value, json};
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

/// Reads server-sent events off a response, one `data` value at a time.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(pool: &TestPool, id: &str) -> reqwest::Response {
        let url = format!("{}/api/v1/work/{id}/events", pool.api_url(0));
        pool.http.get(url).send().await.expect("events request")
    }

    /// The next event's data, or `None` once the server ended the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(serde_json::from_str(&data.join("\n")).expect("event JSON"));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("an event or the end within 20 s")
                .expect("reading the stream")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The statuses of every event until the stream ends, each once (progress reports
    /// make more events of the same status).
    async fn rest(&mut self) -> Vec<String> {
        let mut statuses = Vec::new();
        while let Some(event) = self.next().await {
            statuses.push(event["status"].as_str().unwrap().to_owned());
        }
        statuses.dedup();
        statuses
    }
}

#[tokio::test]
async fn events_follow_work_from_queued_to_finished_and_end() {
    // The builtin sleep: long enough for the attempt to record `working`.
    let mut pool = TestPool::start(PoolSpec::default(), 1, 0)
        .await
        .expect("pool");
    let id = pool
        .submit(&json!({"data": {"ms": 1500}}))
        .await
        .expect("submit");
    let response = Events::open(&pool, &id).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(content_type, "text/event-stream");
    let mut events = Events {
        response,
        buffer: String::new(),
    };
    let first = events.next().await.expect("the record at once");
    assert_eq!(
        (first["id"].as_str(), first["status"].as_str()),
        (Some(id.as_str()), Some("pending"))
    );

    pool.add_worker().await.expect("a worker");
    assert_eq!(events.rest().await, ["working", "worked"]);

    // Finished work: its record, then the end.
    let mut finished = Events {
        response: Events::open(&pool, &id).await,
        buffer: String::new(),
    };
    assert_eq!(finished.rest().await, ["worked"]);

    let unknown = Events::open(&pool, &"0".repeat(32)).await;
    assert_eq!(unknown.status(), 404);
}
