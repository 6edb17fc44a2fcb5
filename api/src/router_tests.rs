//! The real router with the real state, called in process (`oneshot`): every answer the
//! api gives before it needs NATS. The state is the one the binary serves while it has
//! not bound to the pool's NATS objects yet, so work that passes every check is answered
//! `503`; the answers that need a live server (404 of an unknown id, 409, 429, dedupe)
//! are tested against one in `e2e/tests/api_errors.rs`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;
use workpool_core::{PoolNames, PoolSpec};
use workpool_runtime::config::PoolConfig;

use crate::auth::Auth;
use crate::{AppState, cluster, router};

/// The body limit of the test pool (`queue.maxPayloadBytes`).
const LIMIT: usize = 1024;
pub(crate) const SECRET: &[u8] = b"s3cret";
const ID: &str = "0123456789abcdef0123456789abcdef";
const UNBOUND: &str =
    "the queue is unavailable (not yet bound to the pool's NATS objects); retry later";

/// The state the binary serves with until it has bound to the pool's NATS objects.
pub(crate) fn state(auth: Option<Auth>) -> AppState {
    let spec = PoolSpec::from_json(&format!(r#"{{"queue": {{"maxPayloadBytes": {LIMIT}}}}}"#))
        .expect("spec");
    let config = PoolConfig {
        names: PoolNames::new("default", "demo").expect("names"),
        spec,
        pod: "demo-api-0".to_owned(),
        nats_creds_file: None,
        nats_ca_file: None,
        peer_key: None,
    };
    AppState::new(config, auth, cluster::Members::default(), 10).expect("state")
}

/// The api as the binary serves it, without auth.
fn open_api() -> Router {
    router(state(None))
}

/// The api with auth on, signed with [`SECRET`].
fn guarded_api() -> Router {
    router(state(Some(Auth::hs256(SECRET))))
}

pub(crate) fn token(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("token")
}

/// A valid token of an admin (it may use every route).
fn good_token() -> String {
    token(
        SECRET,
        &json!({"sub": "me", "exp": 4_000_000_000u64, "workpool_admin": true}),
    )
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| panic!("{err}: {self:?}"))
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII"))
    }

    /// Asserts the documented error answer: `status`, a JSON `{"error", "code"}` body
    /// with `code`, `Retry-After` exactly on 429 and 503, `WWW-Authenticate` exactly on
    /// 401. Returns the message.
    #[track_caller]
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(
            self.header(header::CONTENT_TYPE),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        let fields = body.as_object().expect("an object");
        assert_eq!(fields.len(), 2, "only error and code: {body}");
        assert_eq!(body["code"], code, "{body}");
        let message = body["error"].as_str().expect("error is text").to_owned();
        assert!(!message.is_empty(), "{body}");
        let retry_after = matches!(status, 429 | 503).then_some("1");
        assert_eq!(self.header(header::RETRY_AFTER), retry_after, "{self:?}");
        let challenge = (status == 401).then_some("Bearer");
        assert_eq!(self.header(header::WWW_AUTHENTICATE), challenge, "{self:?}");
        message
    }
}

async fn call(api: &Router, request: Request<Body>) -> Answer {
    let response = api.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        body,
    }
}

fn request(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn get(uri: &str) -> Request<Body> {
    request(Method::GET, uri)
        .body(Body::empty())
        .expect("request")
}

fn delete(uri: &str) -> Request<Body> {
    request(Method::DELETE, uri)
        .body(Body::empty())
        .expect("request")
}

/// A POST of `body` to `/api/v1/work`, declared as JSON.
fn post(body: impl Into<Body>) -> Request<Body> {
    post_with(&[(header::CONTENT_TYPE, "application/json")], body)
}

fn post_with(headers: &[(header::HeaderName, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut builder = request(Method::POST, "/api/v1/work");
    for (name, value) in headers {
        builder = builder.header(name, *value);
    }
    builder.body(body.into()).expect("request")
}

fn with_bearer(mut request: Request<Body>, token: &str) -> Request<Body> {
    let value = HeaderValue::try_from(format!("Bearer {token}")).expect("header");
    request.headers_mut().insert(header::AUTHORIZATION, value);
    request
}

#[tokio::test]
async fn bodies_that_are_not_a_json_object_are_400_invalid_json() {
    let api = open_api();
    let bodies: [&[u8]; 8] = [
        b"{\"data\":",
        b"",
        b"null",
        b"[1,2]",
        b"[null]",
        b" \n 7",
        b"\xff\xfe\xfd",
        b"{\"data\": 1, \"data\": 2}",
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(body).into_owned();
        let message = call(&api, post(body.to_vec()))
            .await
            .error(400, "invalid_json");
        assert!(
            message.starts_with("invalid work: "),
            "{shown:?}: {message}"
        );
    }
    let missing = call(&api, post(r#"{"task":"x"}"#)).await;
    assert!(missing.error(400, "invalid_json").contains("data"));
    let unknown = call(&api, post(r#"{"data":1,"colour":9}"#)).await;
    assert!(
        unknown.error(400, "invalid_json").contains("colour"),
        "names the unknown field"
    );
    let wrong_type = call(&api, post(r#"{"data": 1, "task": 5}"#)).await;
    wrong_type.error(400, "invalid_json");
}

#[tokio::test]
async fn a_bad_task_or_key_is_400_invalid_work() {
    let api = open_api();
    let task = "task must be dot-separated words of letters, digits, '-' and '_' (such as addressing.address.reconcile), at most 64 characters";
    let long_task = format!(r#"{{"data": 1, "task": "{}"}}"#, "t".repeat(65));
    for body in [
        r#"{"data":1,"task":"no spaces"}"#.to_owned(),
        r#"{"data":1,"task":""}"#.to_owned(),
        r#"{"data":1,"task":"a..b"}"#.to_owned(),
        long_task,
    ] {
        assert_eq!(
            call(&api, post(body)).await.error(400, "invalid_work"),
            task
        );
    }
    let long_key = format!(r#"{{"data": 1, "key": "{}"}}"#, "k".repeat(257));
    for body in [r#"{"data": 1, "key": ""}"#.to_owned(), long_key] {
        assert_eq!(
            call(&api, post(body)).await.error(400, "invalid_work"),
            "key must be 1-256 bytes"
        );
    }
}

#[tokio::test]
async fn an_idempotency_key_must_be_1_to_256_visible_ascii_characters() {
    let api = open_api();
    let message = "Idempotency-Key must be 1-256 visible ASCII characters";
    let too_long = "k".repeat(257);
    for key in ["", too_long.as_str()] {
        let request = post_with(
            &[
                (header::CONTENT_TYPE, "application/json"),
                (header::HeaderName::from_static("idempotency-key"), key),
            ],
            r#"{"data": 1}"#,
        );
        let answer = call(&api, request).await;
        assert_eq!(answer.error(400, "invalid_idempotency_key"), message);
    }
    let mut opaque = post(r#"{"data": 1}"#);
    opaque.headers_mut().insert(
        "idempotency-key",
        HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a valid header value"),
    );
    let answer = call(&api, opaque).await;
    assert_eq!(answer.error(400, "invalid_idempotency_key"), message);
    // The longest key passes; the work then needs the queue.
    let longest = "k".repeat(256);
    let request = post_with(
        &[
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("idempotency-key"), &longest),
        ],
        r#"{"data": 1}"#,
    );
    assert_eq!(call(&api, request).await.error(503, "unavailable"), UNBOUND);
}

#[tokio::test]
async fn ids_that_are_not_32_lowercase_hex_characters_are_400_invalid_id() {
    let api = open_api();
    let upper = ID.to_uppercase();
    let short = &ID[1..];
    // `%ff%fe` is not UTF-8 once decoded: the same JSON error, not axum's text.
    for id in [
        "not-an-id",
        "%ff%fe",
        "%00",
        "..%2F..",
        upper.as_str(),
        short,
    ] {
        let uri = format!("/api/v1/work/{id}");
        for request in [get(&uri), delete(&uri), get(&format!("{uri}?wait=1s"))] {
            let answer = call(&api, request).await;
            let message = answer.error(400, "invalid_id");
            if !id.starts_with('%') {
                assert_eq!(message, "a work id is 32 lowercase hex characters", "{id}");
            }
        }
    }
}

#[tokio::test]
async fn wait_must_be_a_duration_of_at_most_60s() {
    let api = open_api();
    for wait in ["forever", "10m", "61s", "", "-1s", "%ff", "30"] {
        let answer = call(&api, get(&format!("/api/v1/work/{ID}?wait={wait}"))).await;
        assert_eq!(
            answer.error(400, "invalid_wait"),
            "wait must be a duration like 30s, at most 60s",
            "wait={wait}"
        );
    }
    let twice = call(&api, get(&format!("/api/v1/work/{ID}?wait=1s&wait=2s"))).await;
    assert!(
        twice.error(400, "invalid_query").contains("wait"),
        "{twice:?}"
    );
    // The id is checked before the query.
    let both = call(&api, get("/api/v1/work/nope?wait=forever")).await;
    both.error(400, "invalid_id");
    for wait in ["60s", "1m", "250ms"] {
        let answer = call(&api, get(&format!("/api/v1/work/{ID}?wait={wait}"))).await;
        assert_eq!(answer.error(503, "unavailable"), UNBOUND, "wait={wait}");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_no_route() {
    let api = open_api();
    for path in [
        "/api/v2/nothing",
        "/",
        "/api/v1/work/",
        "/api/v1/work/a/b",
        "/api/v1",
    ] {
        for method in [Method::GET, Method::POST] {
            let answer = call(
                &api,
                request(method, path).body(Body::empty()).expect("request"),
            )
            .await;
            assert_eq!(
                answer.error(404, "no_route"),
                format!("no such route: {path}")
            );
        }
    }
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_405_method_not_allowed() {
    let api = open_api();
    let work = format!("/api/v1/work/{ID}");
    for (method, path, allow) in [
        (Method::PUT, "/api/v1/work", "POST,GET,HEAD"),
        (Method::DELETE, "/api/v1/work", "POST,GET,HEAD"),
        (Method::POST, "/api/v1/queue", "GET,HEAD"),
        (Method::POST, work.as_str(), "GET,HEAD,DELETE"),
        (Method::PATCH, work.as_str(), "GET,HEAD,DELETE"),
        (Method::POST, "/api/v1/cluster", "GET,HEAD"),
        (Method::POST, "/healthz", "GET,HEAD"),
        (Method::DELETE, "/metrics", "GET,HEAD"),
        (Method::PUT, "/api/v1/openapi.json", "GET,HEAD"),
    ] {
        let answer = call(
            &api,
            request(method.clone(), path)
                .body(Body::from("x"))
                .expect("request"),
        )
        .await;
        assert_eq!(
            answer.error(405, "method_not_allowed"),
            "this method is not allowed on this route",
            "{method} {path}"
        );
        assert_eq!(answer.header(header::ALLOW), Some(allow), "{method} {path}");
    }
}

#[tokio::test]
async fn bodies_over_the_pools_limit_are_413_payload_too_large() {
    let api = open_api();
    let message = format!("request body is larger than the pool's limit of {LIMIT} bytes");
    let big = json!({"data": "x".repeat(2 * LIMIT)}).to_string();
    // Declared with Content-Length, and streamed without one.
    let declared = call(&api, post(big.clone())).await;
    assert_eq!(declared.error(413, "payload_too_large"), message);
    let chunks = big
        .into_bytes()
        .chunks(100)
        .map(|chunk| Ok::<_, std::io::Error>(Bytes::copy_from_slice(chunk)))
        .collect::<Vec<_>>();
    let streamed = call(&api, post(Body::from_stream(futures::stream::iter(chunks)))).await;
    assert_eq!(streamed.error(413, "payload_too_large"), message);
    // One byte over the limit is refused; the limit itself is not.
    let at = |size: usize| {
        let padding = size - r#"{"data":""}"#.len();
        format!(r#"{{"data":"{}"}}"#, "x".repeat(padding))
    };
    call(&api, post(at(LIMIT + 1)))
        .await
        .error(413, "payload_too_large");
    assert_eq!(
        call(&api, post(at(LIMIT))).await.error(503, "unavailable"),
        UNBOUND
    );
}

#[tokio::test]
async fn a_body_that_breaks_off_is_400_invalid_body() {
    let api = open_api();
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"data\": ")),
        Err(std::io::Error::other("connection reset")),
    ];
    let answer = call(&api, post(Body::from_stream(futures::stream::iter(chunks)))).await;
    answer.error(400, "invalid_body");
}

#[tokio::test]
async fn a_declared_type_other_than_json_is_415_unsupported_media_type() {
    let api = open_api();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json-patch+json",
        "multipart/form-data; boundary=x",
        "",
    ] {
        let request = post_with(&[(header::CONTENT_TYPE, content_type)], r#"{"data": 1}"#);
        assert_eq!(
            call(&api, request)
                .await
                .error(415, "unsupported_media_type"),
            "content type must be application/json",
            "{content_type:?}"
        );
    }
    let mut opaque = post(r#"{"data": 1}"#);
    opaque.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_bytes(b"application/j\xe9son").expect("header"),
    );
    call(&api, opaque)
        .await
        .error(415, "unsupported_media_type");
    // The type is checked before the body is read: even an oversized one is a 415.
    let big = json!({"data": "x".repeat(2 * LIMIT)}).to_string();
    call(
        &api,
        post_with(&[(header::CONTENT_TYPE, "text/plain")], big),
    )
    .await
    .error(415, "unsupported_media_type");
    // JSON with parameters or in capitals, or no declared type, is read as JSON.
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        " application/json ;charset=UTF-8",
    ] {
        let request = post_with(&[(header::CONTENT_TYPE, content_type)], r#"{"data": 1}"#);
        assert_eq!(
            call(&api, request).await.error(503, "unavailable"),
            UNBOUND,
            "{content_type:?}"
        );
    }
    let undeclared = call(&api, post_with(&[], r#"{"data": 1}"#)).await;
    assert_eq!(undeclared.error(503, "unavailable"), UNBOUND);
    call(&api, post_with(&[], "data=1"))
        .await
        .error(400, "invalid_json");
}

#[tokio::test]
async fn valid_requests_are_503_with_retry_after_until_the_queue_is_bound() {
    let api = open_api();
    let work = format!("/api/v1/work/{ID}");
    for request in [
        post(r#"{"data": {"a": 1}, "task": "resize", "key": "k"}"#),
        get(&work),
        get(&format!("{work}?wait=5s")),
        delete(&work),
        get("/api/v1/cluster"),
    ] {
        let what = format!("{} {}", request.method(), request.uri());
        assert_eq!(
            call(&api, request).await.error(503, "unavailable"),
            UNBOUND,
            "{what}"
        );
    }
    // Not ready, but alive.
    assert_eq!(
        call(&api, get("/readyz")).await.error(503, "unavailable"),
        UNBOUND
    );
    let alive = call(&api, get("/healthz")).await;
    assert_eq!((alive.status, alive.text()), (StatusCode::OK, "ok\n"));
}

/// Every route that needs a token, with a request that passes all other checks.
fn guarded_requests() -> Vec<Request<Body>> {
    vec![
        post(r#"{"data": 1}"#),
        get(&format!("/api/v1/work/{ID}")),
        get(&format!("/api/v1/work/{ID}?wait=1s")),
        delete(&format!("/api/v1/work/{ID}")),
        get("/api/v1/cluster"),
    ]
}

#[tokio::test]
async fn with_auth_on_every_work_route_is_401_without_a_valid_token() {
    let api = guarded_api();
    let wrong_secret = token(b"other", &json!({"sub": "me", "exp": 4_000_000_000u64}));
    let expired = token(SECRET, &json!({"sub": "me", "exp": 1_000_000_000u64}));
    let no_expiry = token(SECRET, &json!({"sub": "me"}));
    let good = good_token();
    let headers = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer not-a-jwt".to_owned()),
        Some(format!("Bearer {wrong_secret}")),
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {no_expiry}")),
        Some(format!("bearer {good}")),
        Some(format!("Basic {good}")),
        Some(good.clone()),
    ];
    for authorization in headers {
        for mut request in guarded_requests() {
            let what = format!("{} {} {authorization:?}", request.method(), request.uri());
            if let Some(value) = &authorization {
                let value = HeaderValue::try_from(value.as_str()).expect("header");
                request.headers_mut().insert(header::AUTHORIZATION, value);
            }
            assert_eq!(
                call(&api, request).await.error(401, "unauthorized"),
                "missing or invalid bearer token",
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn with_auth_on_the_cluster_view_needs_the_admin_claim() {
    let api = guarded_api();
    let tenant = token(SECRET, &json!({"sub": "me", "exp": 4_000_000_000u64}));
    for request in guarded_requests() {
        let what = format!("{} {}", request.method(), request.uri());
        let answer = call(&api, with_bearer(request, &tenant)).await;
        if what.ends_with("/api/v1/cluster") {
            answer.error(403, "forbidden");
        } else {
            assert_eq!(answer.error(503, "unavailable"), UNBOUND, "{what}");
        }
    }
}

#[tokio::test]
async fn with_auth_on_a_valid_token_passes_to_the_other_checks() {
    let api = guarded_api();
    let good = good_token();
    for request in guarded_requests() {
        let what = format!("{} {}", request.method(), request.uri());
        let answer = call(&api, with_bearer(request, &good)).await;
        assert_eq!(answer.error(503, "unavailable"), UNBOUND, "{what}");
    }
    // Spaces around the token are trimmed.
    let spaced = with_bearer(get(&format!("/api/v1/work/{ID}")), &format!(" {good} "));
    call(&api, spaced).await.error(503, "unavailable");
    let bad_id = with_bearer(get("/api/v1/work/nope"), &good);
    call(&api, bad_id).await.error(400, "invalid_id");
    let text = with_bearer(
        post_with(&[(header::CONTENT_TYPE, "text/plain")], "x"),
        &good,
    );
    call(&api, text).await.error(415, "unsupported_media_type");
}

#[tokio::test]
async fn a_route_added_to_the_guarded_group_needs_a_token_too() {
    let state = state(Some(Auth::hs256(SECRET)));
    let routes = Router::new().route("/api/v1/new", axum::routing::get(|| async { "new\n" }));
    let api = crate::guarded(routes, &state).with_state(state);
    call(&api, get("/api/v1/new"))
        .await
        .error(401, "unauthorized");
    let answer = call(&api, with_bearer(get("/api/v1/new"), &good_token())).await;
    assert_eq!((answer.status, answer.text()), (StatusCode::OK, "new\n"));
}

#[tokio::test]
async fn with_auth_on_the_token_is_checked_before_anything_else() {
    let api = guarded_api();
    let big = json!({"data": "x".repeat(2 * LIMIT)}).to_string();
    for request in [
        post_with(&[(header::CONTENT_TYPE, "text/plain")], "x"),
        post(big),
        post("[1]"),
        post(r#"{"data":1,"task":"no spaces"}"#),
        get("/api/v1/work/nope?wait=forever"),
        delete("/api/v1/work/%ff"),
    ] {
        call(&api, request).await.error(401, "unauthorized");
    }
    // Routing comes first: an unknown route or method is not a matter of tokens.
    call(&api, get("/api/v2/nothing"))
        .await
        .error(404, "no_route");
    let put = request(Method::PUT, "/api/v1/work")
        .body(Body::empty())
        .expect("request");
    call(&api, put).await.error(405, "method_not_allowed");
}

#[tokio::test]
async fn with_auth_on_probes_metrics_the_document_and_the_console_stay_open() {
    let api = guarded_api();
    let alive = call(&api, get("/healthz")).await;
    assert_eq!((alive.status, alive.text()), (StatusCode::OK, "ok\n"));
    // Not ready (not bound), which is not a matter of tokens.
    call(&api, get("/readyz")).await.error(503, "unavailable");
    let metrics = call(&api, get("/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let document = call(&api, get("/api/v1/openapi.json")).await;
    assert_eq!(document.status, StatusCode::OK);
    let console = call(&api, get("/console")).await;
    assert_eq!(console.status, StatusCode::OK);
    assert_eq!(
        console.header(header::CONTENT_TYPE),
        Some("text/html; charset=utf-8")
    );
}

#[tokio::test]
async fn hostile_input_never_gets_a_500() {
    let api = open_api();
    let deep = format!("{{\"data\":{}{}}}", "[".repeat(400), "]".repeat(400));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"{\"data\": \"\\ud800\"}".to_vec(),
        b"{\"data\": 1e999999}".to_vec(),
        b"{\"data\": 1, \"data\": 2}".to_vec(),
        b"{\"data\": 1, \"task\": 5}".to_vec(),
        b"{\"data\": 1, \"key\": \"\"}".to_vec(),
        b"{\"data\": \"nul \\u0000 inside\"}".to_vec(),
        b"{\"data\": 1}\n{\"data\": 2}".to_vec(),
        deep.into_bytes(),
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let answer = call(
            &api,
            post_with(
                &[(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                body,
            ),
        )
        .await;
        assert!(
            answer.status.is_client_error() || answer.status == StatusCode::SERVICE_UNAVAILABLE,
            "{shown:?} got {answer:?}"
        );
        let code = answer.json()["code"].as_str().map(str::to_owned);
        assert!(code.is_some(), "{shown:?}: JSON error expected, {answer:?}");
    }
    for path in [
        "/api/v1/work/%00",
        "/api/v1/work/..%2F..",
        "/api/v1/work/0000?wait=%ff",
        "/api/v1/work/",
        "/api/v1/work/%",
    ] {
        let answer = call(&api, get(path)).await;
        assert!(
            answer.status.is_client_error() && answer.json()["code"].is_string(),
            "{path}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn the_served_document_is_the_generated_one() {
    let answer = call(&open_api(), get("/api/v1/openapi.json")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header(header::CONTENT_TYPE),
        Some("application/json")
    );
    let generated: Value = serde_json::from_str(&crate::openapi::document()).expect("JSON");
    assert_eq!(answer.json(), generated);
    assert_eq!(generated["info"]["title"], "Workpool API");
}

#[tokio::test]
async fn answers_are_counted_by_matched_route_method_and_code() {
    let api = guarded_api();
    call(&api, get("/api/v2/nothing")).await;
    call(&api, get("/api/v1/work/nope")).await;
    call(&api, get(&format!("/api/v1/work/{ID}"))).await;
    let metrics = call(&api, get("/metrics")).await;
    assert_eq!(
        metrics.header(header::CONTENT_TYPE),
        Some("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    let count = |route: &str, method: &str, code: &str| {
        text.lines()
            .find(|line| {
                line.starts_with("workpool_api_requests_total{")
                    && line.contains(&format!("route=\"{route}\""))
                    && line.contains(&format!("method=\"{method}\""))
                    && line.contains(&format!("code=\"{code}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(
        count("unmatched", "GET", "404").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        count("/api/v1/work/{id}", "GET", "401").as_deref(),
        Some("2"),
        "{text}"
    );
    assert!(text.contains("namespace=\"default\""), "{text}");
    assert!(text.contains("pool=\"demo\""), "{text}");
}
