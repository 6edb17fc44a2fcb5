//! Schemathesis against a real pool: requests generated from docs/openapi.json (valid and
//! invalid ones) must get no 5xx, and every answer's status, content type and body must be
//! the ones the document gives. scripts/schemathesis.sh installs and runs it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use serde_json::json;
use workpool_core::PoolSpec;
use workpool_e2e::pool::TestPool;
use workpool_local_cluster::paths;

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_describe() {
    // Fast work, so that generated POSTs do not pile up behind the default 3 s sleep.
    let spec =
        PoolSpec::from_json(r#"{"worker": {"handler": {"builtin": "echo"}}}"#).expect("spec");
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let output = tokio::process::Command::new(paths::repo_root().join("scripts/schemathesis.sh"))
        .arg(pool.api_url(0))
        // Above the longest long-poll a generated `wait` may ask for (60 s).
        .args(["--request-timeout", "70"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("running scripts/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}"); // the run's report, shown with --nocapture
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\n{}",
        pool.logs()
    );
    // It did test the api (a run that tested nothing would also exit 0): the line after
    // "Test cases:" reads "N generated, N passed".
    let counts = stdout
        .lines()
        .skip_while(|line| !line.contains("Test cases:"))
        .nth(1)
        .unwrap_or_default();
    let generated: u32 = counts
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        generated > 0 && counts.contains(&format!("{generated} passed")),
        "not every generated test case ran and passed:\n{stdout}"
    );
}

/// What schemathesis found first: serde reads a struct from an array by position, so
/// `[null, null]` was accepted as work with data `null`.
#[tokio::test]
async fn a_json_array_is_not_work() {
    let pool = TestPool::start(PoolSpec::default(), 1, 0)
        .await
        .expect("pool");
    for body in [json!([null, null]), json!([{"n": 1}]), json!([])] {
        let answer = pool.post(&body).await.expect("post");
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert_eq!(answer.str("code"), "invalid_json", "{body}: {answer:?}");
    }
    assert_eq!(pool.queued_messages().await.expect("stream"), 0);
}
