//! How the api speaks HTTP, on the real binary: HTTP/1.1 connections stay open across
//! requests (pipelined ones included), and HTTP/2 is served without TLS (h2c, prior
//! knowledge), for clients and proxies that multiplex many requests on one connection.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;

#[tokio::test]
async fn work_goes_through_h2c_from_post_to_result() {
    let echo = r#"{"worker": {"handler": {"builtin": "echo"}}}"#;
    let pool = TestPool::start(PoolSpec::from_json(echo).expect("spec"), 1, 1)
        .await
        .expect("pool");
    let h2 = workpool_local_cluster::http::client_builder()
        .http2_prior_knowledge()
        .build()
        .expect("an h2c client");
    let posted = h2
        .post(format!("{}/api/v1/work", pool.api_url(0)))
        .json(&json!({"data": {"via": "h2c"}}))
        .send()
        .await
        .expect("an h2c POST");
    assert_eq!(posted.version(), reqwest::Version::HTTP_2);
    assert_eq!(posted.status(), 202);
    let accepted: Value = posted.json().await.expect("json");
    let id = accepted["callback"].as_str().expect("a callback id");
    let read = h2
        .get(format!("{}/api/v1/work/{id}?wait=20s", pool.api_url(0)))
        .send()
        .await
        .expect("an h2c GET");
    assert_eq!(read.version(), reqwest::Version::HTTP_2);
    let record: Value = read.json().await.expect("json");
    assert_eq!(record["status"], "worked", "{record}");
    assert_eq!(record["result"], json!({"via": "h2c"}), "{record}");
}

#[tokio::test]
async fn an_http1_connection_serves_request_after_request() {
    let pool = TestPool::start(PoolSpec::from_json("{}").expect("spec"), 1, 0)
        .await
        .expect("pool");
    let address = pool.api_url(0).trim_start_matches("http://").to_owned();
    let mut connection = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let request = "GET /healthz HTTP/1.1\r\nhost: api\r\n\r\n";
    // Two pipelined in one write, then a third once they are answered: all on one
    // connection.
    connection
        .write_all(format!("{request}{request}").as_bytes())
        .await
        .expect("write");
    read_answers(&mut connection, 2).await;
    connection
        .write_all(request.as_bytes())
        .await
        .expect("write");
    read_answers(&mut connection, 1).await;
}

/// Reads until `count` answers with status 200 have arrived on `connection`.
async fn read_answers(connection: &mut tokio::net::TcpStream, count: usize) {
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while seen.matches("HTTP/1.1 200").count() < count {
        let read = tokio::time::timeout(Duration::from_secs(10), connection.read(&mut buffer))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(read > 0, "the api closed the connection after: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(
        !seen.to_ascii_lowercase().contains("connection: close"),
        "{seen}"
    );
}

/// With `WORKPOOL_ADMIN_LISTEN` (as the operator sets it) the probes and `/metrics` are
/// served there and nowhere else: the public port, which the api Service exposes, shows
/// clients nothing of the process, and the admin port serves no work.
#[tokio::test]
async fn health_and_metrics_live_on_their_own_port_when_given_one() {
    let admin_port = workpool_local_cluster::free_port().expect("port");
    let pool = TestPool::start(PoolSpec::default(), 0, 0)
        .await
        .expect("pool");
    let env = [(
        "WORKPOOL_ADMIN_LISTEN".to_owned(),
        format!("127.0.0.1:{admin_port}"),
    )];
    let api = pool
        .spawn_unready("workpool-api", "demo-api-0".into(), &env)
        .expect("api");
    let (public, admin) = (
        format!("http://127.0.0.1:{}", api.port),
        format!("http://127.0.0.1:{admin_port}"),
    );
    let status = |url: String| {
        let http = pool.http.clone();
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).ok() }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status(format!("{admin}/readyz")).await != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            api.process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in ["/healthz", "/metrics"] {
        assert_eq!(status(format!("{admin}{path}")).await, Some(200), "{path}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            status(format!("{public}{path}")).await,
            Some(404),
            "public {path}"
        );
    }
    let work = format!("/api/v1/work/{}", "0".repeat(32));
    assert_eq!(
        status(format!("{public}{work}")).await,
        Some(404),
        "unknown work"
    );
    assert_eq!(
        status(format!("{public}/api/v1/openapi.json")).await,
        Some(200)
    );
    for path in [work.as_str(), "/api/v1/openapi.json", "/console"] {
        assert_eq!(
            status(format!("{admin}{path}")).await,
            Some(404),
            "admin {path}"
        );
    }
}
