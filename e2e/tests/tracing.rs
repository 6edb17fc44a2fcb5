//! Traces across the queue: a caller's `traceparent` reaches the handler, and an OTLP
//! receiver gets one connected trace per job (the api's `send` span, the worker's
//! `queue wait` and one `process` span per attempt).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use serde_json::json;
use workpool_e2e::otlp::{CONSUMER, INTERNAL, OtlpReceiver, PRODUCER, ReceivedSpan, STATUS_ERROR};
use workpool_e2e::pool::{TestPool, shell_handler_spec};

const WAIT: Duration = Duration::from_secs(30);

/// The caller's trace and span.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Answers the `TRACEPARENT` it got; work whose data says `retry` fails its first
/// attempt.
const HANDLER: &str = r#"input=$(cat); case "$input" in *retry*) [ "$WORKPOOL_ATTEMPT" = 1 ] && exit 1;; esac; printf '"%s"' "$TRACEPARENT""#;

/// The spans of one job: its trace is the one its `send` span (named by the job's id)
/// is in.
struct Trace {
    send: ReceivedSpan,
    rest: Vec<ReceivedSpan>,
}

impl Trace {
    fn of(spans: &[ReceivedSpan], id: &str) -> Option<Self> {
        let send = spans.iter().find(|span| {
            span.kind == PRODUCER
                && span
                    .attributes
                    .get("messaging.message.id")
                    .map(String::as_str)
                    == Some(id)
        })?;
        let rest = spans
            .iter()
            .filter(|span| span.trace_id == send.trace_id && span.span_id != send.span_id)
            .cloned()
            .collect();
        Some(Self {
            send: send.clone(),
            rest,
        })
    }

    fn named(&self, name: &str) -> Vec<&ReceivedSpan> {
        self.rest.iter().filter(|span| span.name == name).collect()
    }

    fn attempts(&self) -> Vec<&ReceivedSpan> {
        let mut attempts: Vec<&ReceivedSpan> = self
            .rest
            .iter()
            .filter(|span| span.kind == CONSUMER)
            .collect();
        attempts.sort_by_key(|span| span.attributes["workpool.attempt"].clone());
        attempts
    }

    /// Complete: a queue wait and `attempts` process spans.
    fn has(&self, attempts: usize) -> bool {
        self.named("queue wait").len() == 1 && self.attempts().len() == attempts
    }
}

#[tokio::test]
async fn each_job_is_one_connected_trace_from_the_post_to_the_handler() {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            receiver.endpoint.clone(),
        ),
        // Spans go out within a tenth of a second instead of five.
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let mut spec = shell_handler_spec(HANDLER);
    spec.worker.backoff = vec![Duration::from_millis(100)];
    let mut pool = TestPool::start_with_api_env(spec, 1, 0, env.clone())
        .await
        .expect("pool");
    pool.add_worker_with_env(&env).await.expect("worker");

    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let traced = pool
        .send(
            pool.http
                .post(format!("{}/api/v1/work", pool.api_url(0)))
                .header("traceparent", &traceparent)
                .header("tracestate", "caller=1")
                .json(&json!({"data": "traced"})),
        )
        .await
        .expect("post");
    assert_eq!(traced.status, 202, "{traced:?}");
    let traced = traced.str("callback").to_owned();
    let untraced = pool
        .submit(&json!({"data": "untraced"}))
        .await
        .expect("post");
    let retried = pool.submit(&json!({"data": "retry"})).await.expect("post");
    let mut results = Vec::new();
    for id in [&traced, &untraced, &retried] {
        let done = pool.wait_status(id, "worked", WAIT).await.expect("worked");
        results.push(done.body["result"].as_str().unwrap_or_default().to_owned());
    }

    let deadline = tokio::time::Instant::now() + WAIT;
    let traces = loop {
        let spans = receiver.spans();
        let traces: Vec<Option<Trace>> = [&traced, &untraced, &retried]
            .iter()
            .map(|id| Trace::of(&spans, id))
            .collect();
        let complete = traces
            .iter()
            .zip([1, 1, 2])
            .all(|(trace, attempts)| trace.as_ref().is_some_and(|trace| trace.has(attempts)));
        if complete {
            break traces.into_iter().flatten().collect::<Vec<_>>();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "incomplete traces; received {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The caller's trace goes on; a POST without one starts its own.
    assert_eq!(traces[0].send.trace_id, CALLER_TRACE);
    assert_eq!(traces[0].send.parent_span_id, CALLER_SPAN);
    for trace in &traces[1..] {
        assert_eq!(
            trace.send.parent_span_id, "",
            "a root span: {:?}",
            trace.send
        );
    }
    let ids: std::collections::HashSet<&str> = traces
        .iter()
        .map(|trace| trace.send.trace_id.as_str())
        .collect();
    assert_eq!(ids.len(), 3, "one trace per job");

    for (trace, result) in traces.iter().zip(&results) {
        let send = &trace.send;
        assert_eq!(send.service, "workpool-api", "{send:?}");
        assert!(send.name.starts_with("send "), "{send:?}");
        assert_eq!(send.attributes["messaging.system"], "nats", "{send:?}");
        assert_eq!(
            send.attributes["messaging.operation.type"], "send",
            "{send:?}"
        );
        assert_eq!(send.attributes["workpool.answer"], "accepted", "{send:?}");
        // Every other span hangs off the send span: one connected trace.
        for span in &trace.rest {
            assert_eq!(span.service, "workpool-worker", "{span:?}");
            assert_eq!(span.parent_span_id, send.span_id, "{span:?}");
        }
        let wait = trace.named("queue wait")[0];
        assert_eq!(wait.kind, INTERNAL);
        assert!(wait.start_ns <= wait.end_ns, "{wait:?}");
        let attempts = trace.attempts();
        for (n, attempt) in attempts.iter().enumerate() {
            assert!(attempt.name.starts_with("process "), "{attempt:?}");
            assert_eq!(attempt.attributes["messaging.operation.type"], "process");
            assert_eq!(attempt.attributes["workpool.attempt"], (n + 1).to_string());
            assert!(wait.end_ns <= attempt.start_ns, "{wait:?} {attempt:?}");
        }
        // The handler ran within its attempt's span.
        let last = attempts.last().unwrap();
        assert_eq!(last.attributes["workpool.outcome"], "worked", "{last:?}");
        assert_eq!(
            result,
            &format!("00-{}-{}-01", send.trace_id, last.span_id),
            "the handler's TRACEPARENT"
        );
    }
    let first_of_retried = traces[2].attempts()[0];
    assert_eq!(
        first_of_retried.status, STATUS_ERROR,
        "{first_of_retried:?}"
    );
    assert_eq!(
        first_of_retried.attributes["workpool.outcome"],
        "failed, to retry"
    );
}

/// Without an endpoint nothing is exported, and the caller's context still reaches the
/// handler unchanged.
#[tokio::test]
async fn without_export_the_callers_traceparent_reaches_the_handler() {
    let spec = shell_handler_spec(HANDLER);
    let pool = TestPool::start(spec, 1, 1).await.expect("pool");
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let answer = pool
        .send(
            pool.http
                .post(format!("{}/api/v1/work", pool.api_url(0)))
                .header("traceparent", &traceparent)
                .json(&json!({"data": "traced"})),
        )
        .await
        .expect("post");
    let done = pool
        .wait_status(answer.str("callback"), "worked", WAIT)
        .await
        .expect("worked");
    assert_eq!(done.body["result"], json!(traceparent));
    let plain = pool.submit(&json!({"data": "plain"})).await.expect("post");
    let done = pool
        .wait_status(&plain, "worked", WAIT)
        .await
        .expect("worked");
    assert_eq!(done.body["result"], json!(""), "no context, no TRACEPARENT");
}
