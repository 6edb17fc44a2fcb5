//! Property tests of the api's request handling, in process (no NATS): whatever bytes and
//! headers a client sends, the answer is a 4xx with a JSON error, except that a valid
//! request gets as far as the queue, which is not bound here (`503 unavailable`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};
use tower::ServiceExt;
use workpool_api::cluster::Members;
use workpool_api::{AppState, router};
use workpool_core::message::WorkSubmission;
use workpool_core::spec::QueueSpec;
use workpool_core::{PoolNames, PoolSpec, WorkId};
use workpool_runtime::config::PoolConfig;

/// The pool's body limit here: small, so that bodies over it are common.
const LIMIT: usize = 512;

fn app() -> Router {
    let spec = PoolSpec {
        queue: QueueSpec {
            max_payload_bytes: LIMIT,
            ..QueueSpec::default()
        },
        ..PoolSpec::default()
    };
    let config = PoolConfig {
        names: PoolNames::new("default", "demo").unwrap(),
        spec,
        pod: "demo-api-0".into(),
        nats_creds_file: None,
        nats_ca_file: None,
        peer_key: None,
    };
    let state = AppState::new(config, None, Members::default(), 16).unwrap();
    router(state)
}

struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    /// The `code` of a JSON error body, if the body is one.
    fn code(&self) -> Option<String> {
        let body: Value = serde_json::from_slice(&self.body).ok()?;
        let error = body.get("error")?.as_str()?;
        (!error.is_empty()).then_some(())?;
        body.get("code")?.as_str().map(str::to_owned)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect()
    }
}

fn send(runtime: &tokio::runtime::Runtime, app: &Router, request: Request<Body>) -> Answer {
    runtime.block_on(async {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Answer {
            status,
            body: body.to_vec(),
        }
    })
}

/// The only 5xx an api without NATS may give: the queue is unavailable.
fn assert_no_server_error(answer: &Answer) -> Result<(), TestCaseError> {
    if answer.status.is_server_error() {
        prop_assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.text()
        );
        let code = answer.code();
        prop_assert_eq!(code.as_deref(), Some("unavailable"), "{}", answer.text());
    }
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-d]{0,3}", inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// POST bodies: raw bytes, near-submissions (bad tasks, keys, unknown fields), deep
/// nesting and bodies over the limit.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64),
        3 => (
            prop::option::weighted(0.9, json()),
            prop::option::of(prop_oneof!["[a-z_-]{1,8}", ".{0,70}"]),
            prop::option::of(".{0,8}"),
            prop::option::weighted(0.2, "[a-z]{1,5}"),
        )
            .prop_map(|(data, task, key, extra)| {
                let mut object = Map::new();
                if let Some(data) = data {
                    object.insert("data".into(), data);
                }
                if let Some(task) = task {
                    object.insert("task".into(), Value::String(task));
                }
                if let Some(key) = key {
                    object.insert("key".into(), Value::String(key));
                }
                if let Some(extra) = extra {
                    object.insert(extra, Value::Null);
                }
                serde_json::to_vec(&object).unwrap()
            }),
        1 => (1usize..1000).prop_map(|depth| format!(
            "{{\"data\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()),
        1 => (LIMIT - 16..LIMIT + 64).prop_map(|size| format!(
            "{{\"data\":\"{}\"}}",
            "x".repeat(size - 11)
        )
        .into_bytes()),
    ]
}

/// A Content-Type header: none, JSON in its spellings, other types, or arbitrary bytes.
#[derive(Debug, Clone)]
enum ContentType {
    Absent,
    Json(&'static str),
    Other(&'static str),
    Arbitrary(Vec<u8>),
}

fn content_type() -> impl Strategy<Value = ContentType> {
    prop_oneof![
        Just(ContentType::Absent),
        prop::sample::select(vec![
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;x=y",
        ])
        .prop_map(ContentType::Json),
        prop::sample::select(vec![
            "application/x-www-form-urlencoded",
            "text/plain",
            "application/jsonx",
            "",
        ])
        .prop_map(ContentType::Other),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(ContentType::Arbitrary),
    ]
}

fn is_valid_submission(body: &[u8]) -> bool {
    serde_json::from_slice::<WorkSubmission>(body).is_ok_and(|work| work.validate().is_ok())
}

/// `text` as one percent-encoded path segment.
fn segment(text: &[u8]) -> String {
    text.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn posts_of_any_body_and_headers_get_a_client_error_or_reach_the_queue(
        body in body(),
        content_type in content_type(),
        idempotency_key in prop::option::weighted(0.3, prop::collection::vec(any::<u8>(), 0..300)),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let app = app();
        let mut request = Request::builder().method(Method::POST).uri("/api/v1/work");
        match &content_type {
            ContentType::Absent => {}
            ContentType::Json(value) | ContentType::Other(value) => {
                request = request.header(header::CONTENT_TYPE, *value);
            }
            ContentType::Arbitrary(bytes) => {
                if let Ok(value) = HeaderValue::from_bytes(bytes) {
                    request = request.header(header::CONTENT_TYPE, value);
                }
            }
        }
        let key_header = idempotency_key
            .as_deref()
            .and_then(|bytes| HeaderValue::from_bytes(bytes).ok());
        if let Some(value) = &key_header {
            request = request.header("idempotency-key", value.clone());
        }
        let answer = send(&runtime, &app, request.body(Body::from(body.clone())).unwrap());

        assert_no_server_error(&answer)?;
        prop_assert!(answer.code().is_some(), "{} {}", answer.status, answer.text());
        let json_type = matches!(content_type, ContentType::Absent | ContentType::Json(_));
        let valid = is_valid_submission(&body) && body.len() <= LIMIT;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            prop_assert!(valid, "{}", String::from_utf8_lossy(&body));
        }
        if matches!(content_type, ContentType::Other(_)) {
            prop_assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        } else if json_type && body.len() > LIMIT {
            prop_assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.text());
        } else if json_type && key_header.is_none() {
            let expected = if valid {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            prop_assert_eq!(answer.status, expected, "{}", answer.text());
        }
    }

    #[test]
    fn reads_and_cancels_of_any_id_get_a_client_error_or_reach_the_queue(
        id in prop_oneof![
            prop::collection::vec(any::<u8>(), 1..40),
            "[0-9a-f]{32}".prop_map(String::into_bytes),
            "[0-9a-fA-F]{32}".prop_map(String::into_bytes),
        ],
        wait in prop::option::of(prop_oneof![
            ".{0,8}",
            (0u64..120).prop_map(|s| format!("{s}s")),
            Just("100ms".to_owned()),
        ]),
        delete in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let app = app();
        let mut uri = format!("/api/v1/work/{}", segment(&id));
        if let Some(wait) = &wait {
            uri.push_str("?wait=");
            uri.push_str(&segment(wait.as_bytes()));
        }
        let method = if delete { Method::DELETE } else { Method::GET };
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let answer = send(&runtime, &app, request);

        assert_no_server_error(&answer)?;
        // (An id that decodes to invalid UTF-8 gets axum's own plain-text 400, so the JSON
        // error body is checked for the others only.)
        if std::str::from_utf8(&id).is_ok() {
            prop_assert!(answer.code().is_some(), "{} {}", answer.status, answer.text());
        }
        let valid_id = std::str::from_utf8(&id).is_ok_and(|id| id.parse::<WorkId>().is_ok());
        if !valid_id {
            prop_assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
        } else if delete || wait.is_none() {
            prop_assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.text());
        }
    }
}
