//! The HTTP handlers of `/api/v1/work` and the health routes.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use workpool_core::WorkId;
use workpool_core::events::{WorkEvent, WorkEventKind};
use workpool_core::message::WorkSubmission;
use workpool_runtime::events::PublishEvent;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::queue::{self, Cancel, Submitted};
use crate::send_span::SendSpan;

/// The longest long-poll a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The answer to a POST.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmitAnswer {
    /// `accepted` for new work; the current status when the same work was already known.
    pub status: String,
    /// The work id, to GET the result with.
    pub callback: WorkId,
    /// The api pod that accepted the work.
    pub accepted_by: String,
}

pub use workpool_core::record::WorkView;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Long-poll: answer as soon as the work is finished, or after this long (e.g. `30s`,
    /// at most 60s).
    pub wait: Option<String>,
}

/// Publishes a `work.<verb>` event made by this api pod.
pub(crate) async fn announce(
    state: &AppState,
    queue: &crate::queue::Queue,
    event: WorkEventKind,
    id: &WorkId,
    task: &str,
    attempt: u32,
) {
    WorkEvent {
        event,
        id: id.clone(),
        task: task.to_owned(),
        by: state.pod().to_owned(),
        attempt,
        error: None,
        at: chrono::Utc::now(),
    }
    .publish(queue.client(), state.names())
    .await;
}

fn work_location(id: &WorkId) -> HeaderValue {
    // A work id is 32 hex characters (checked wherever one is made or read), and a header
    // value refuses only control characters.
    #[allow(clippy::expect_used)]
    HeaderValue::try_from(format!("/api/v1/work/{id}")).expect("a work path is a header value")
}

/// The id in the path; a path axum cannot decode (not UTF-8) is an invalid id too, with
/// the same JSON error.
pub(crate) fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<WorkId, ApiError> {
    let Path(text) = path.map_err(|err| ApiError::bad_request("invalid_id", err.body_text()))?;
    text.parse()
        .map_err(|err: workpool_core::ids::InvalidWorkId| {
            ApiError::bad_request("invalid_id", err.to_string())
        })
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(()); // No declared type: the body must still parse as JSON.
    };
    // A type that is not text is not JSON either.
    let essence = value
        .to_str()
        .ok()
        .and_then(|mime| mime.split(';').next())
        .map(str::trim);
    if essence.is_some_and(|essence| essence.eq_ignore_ascii_case("application/json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        })
    }
}

/// 1-256 visible ASCII characters (space included), what a header value may hold.
pub(crate) fn is_idempotency_key(key: &[u8]) -> bool {
    (1..=256).contains(&key.len()) && key.iter().all(|byte| (b' '..=b'~').contains(byte))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| is_idempotency_key(key.as_bytes()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-256 visible ASCII characters",
            )
        })?;
    Ok(Some(key))
}

/// Submit work.
#[utoipa::path(
    post, path = "/api/v1/work", tag = "work",
    request_body(content = WorkSubmission, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Derive the id from this key instead of the content (1-256 visible ASCII characters)", min_length = 1, max_length = 256),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context: the work's spans join this trace, and the handler gets it (a malformed one starts a new trace)"),
        ("tracestate" = Option<String>, Header, description = "W3C Trace Context vendor data, carried with `traceparent`"),
    ),
    responses(
        (status = 202, description = "Accepted and durably queued", body = SubmitAnswer,
         headers(("Location" = String, description = "Where to GET the work"))),
        (status = 200, description = "The same work is already known: its current status, not queued again", body = SubmitAnswer),
        (status = 400, description = "Invalid JSON or shape", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 413, description = "Body over the pool's limit", body = ErrorBody),
        (status = 415, description = "Content type is not application/json", body = ErrorBody),
        (status = 429, description = "The queue is full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable (see Retry-After)", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| body_error(rejection, state.max_body_bytes()));
    let work = read_submission(&headers, body)?;
    let idempotency = idempotency_key(&headers)?;
    let id = work.id(state.id_scope(&caller), idempotency);
    let queue = state.queue()?;
    let send = SendSpan::start(&headers, state.names(), 1);
    send.work(&id, work.task());
    let trace = send.carried();
    let accepted = queue::Accepted {
        pod: state.pod(),
        tenant: caller.tenant.as_deref(),
        trace: trace.as_ref(),
    };
    let submitted = match queue.submit(&id, &work, accepted).await {
        Ok(submitted) => submitted,
        Err(err) => {
            send.end(Err(&err));
            return Err(err);
        }
    };
    let (status, answer) = outcome(&state, queue, &id, &work, submitted).await;
    send.end(Ok(&answer.status));
    let location = [(header::LOCATION, work_location(&id))];
    Ok((status, location, Json(answer)).into_response())
}

/// A body axum could not read: over `limit`, or broken off.
pub(crate) fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
        _ => ApiError::bad_request("invalid_body", rejection.body_text()),
    }
}

/// The answer to a submission the queue took: `202` for new work (counted and announced),
/// `200` with its status for work already known.
pub(crate) async fn outcome(
    state: &AppState,
    queue: &crate::queue::Queue,
    id: &WorkId,
    work: &WorkSubmission,
    submitted: Submitted,
) -> (StatusCode, SubmitAnswer) {
    match submitted {
        Submitted::Accepted => {
            count_accepted(state, queue, id, work.task()).await;
            let answer = SubmitAnswer {
                status: "accepted".into(),
                callback: id.clone(),
                accepted_by: state.pod().to_owned(),
            };
            (StatusCode::ACCEPTED, answer)
        }
        Submitted::Existing(record) => {
            state.metrics().duplicate(work.task());
            let answer = SubmitAnswer {
                status: record.status.as_str().to_owned(),
                callback: id.clone(),
                accepted_by: record.accepted_by,
            };
            (StatusCode::OK, answer)
        }
    }
}

/// Counts new work as accepted and announces it (`work.accepted`).
pub(crate) async fn count_accepted(
    state: &AppState,
    queue: &crate::queue::Queue,
    id: &WorkId,
    task: &str,
) {
    state.metrics().accepted(task);
    announce(state, queue, WorkEventKind::Accepted, id, task, 0).await;
}

/// Whether the first byte that is not white space is `first`.
pub(crate) fn starts_with(body: &[u8], first: u8) -> bool {
    body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&first)
}

/// The work a POST submits and its id, after every check that needs no NATS, in this
/// order: content type, body (size), JSON shape, the work's fields, `Idempotency-Key`.
fn read_submission(
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<WorkSubmission, ApiError> {
    check_json_content_type(headers)?;
    let body = body?;
    // serde also reads a struct from a JSON array, by position (`[null]` would be work
    // with data null), so anything but an object is refused before parsing.
    if !starts_with(&body, b'{') {
        return Err(ApiError::bad_request(
            "invalid_json",
            "invalid work: the body must be a JSON object",
        ));
    }
    let work: WorkSubmission = serde_json::from_slice(&body)
        .map_err(|err| ApiError::bad_request("invalid_json", format!("invalid work: {err}")))?;
    work.validate()
        .map_err(|err| ApiError::bad_request("invalid_work", err.to_string()))?;
    Ok(work)
}

/// Get the status (and result) of work.
#[utoipa::path(
    get, path = "/api/v1/work/{id}", tag = "work",
    params(("id" = String, Path, description = "The callback id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$"), WaitParams),
    responses(
        (status = 200, description = "The work record", body = WorkView),
        (status = 400, description = "Malformed id or wait", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 404, description = "Unknown id, or the record expired", body = ErrorBody),
        (status = 429, description = "With `wait`: too many requests already wait in this api pod (see Retry-After)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<WaitParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<WorkView>, ApiError> {
    let id = parse_id(id)?;
    let Query(params) =
        params.map_err(|err| ApiError::bad_request("invalid_query", err.body_text()))?;
    let wait = match params.wait.as_deref() {
        None => None,
        Some(text) => Some(
            humantime::parse_duration(text)
                .ok()
                .filter(|wait| *wait <= MAX_WAIT)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_wait",
                        "wait must be a duration like 30s, at most 60s",
                    )
                })?,
        ),
    };
    let queue = state.queue()?;
    let tenant = caller.tenant.as_deref();
    let record = match wait {
        Some(wait) => queue.wait_for_end(&id, wait, tenant).await?,
        None => queue
            .record(&id)
            .await?
            .map(|(record, _)| record)
            .filter(|record| caller.owns(record.tenant.as_deref())),
    };
    record
        .map(|record| {
            Json(WorkView {
                id: id.clone(),
                record,
            })
        })
        .ok_or_else(|| ApiError::NotFound(id.to_string()))
}

/// Cancel work that has not finished (queued or running).
#[utoipa::path(
    delete, path = "/api/v1/work/{id}", tag = "work",
    params(("id" = String, Path, description = "The callback id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "Cancelled: queued work is removed from the queue; running work was aborted by its worker", body = WorkView),
        (status = 202, description = "Cancel requested: the running attempt's worker did not confirm; the record asks it to stop (`cancel_requested`), and the work ends `cancelled` once no handler runs it", body = WorkView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 404, description = "Unknown id, or the record expired", body = ErrorBody),
        (status = 409, description = "Already finished (worked or failed); a DELETE of cancelled work answers 200 again", body = ErrorBody),
        (status = 429, description = "Running work: too many requests already wait in this api pod (see Retry-After)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let queue = state.queue()?;
    let (record, by_worker) = match queue.cancel(&id, caller.tenant.as_deref()).await? {
        Cancel::Done { record, by_worker } => (record, by_worker),
        Cancel::Requested(record) => {
            let view = Json(WorkView { id, record });
            return Ok((StatusCode::ACCEPTED, view).into_response());
        }
        Cancel::Already(record) => return Ok(Json(WorkView { id, record }).into_response()),
    };
    if !by_worker {
        state.metrics().cancelled(&record.task);
    }
    announce(
        &state,
        queue,
        WorkEventKind::Cancelled,
        &id,
        &record.task,
        record.attempts,
    )
    .await;
    Ok(Json(WorkView { id, record }).into_response())
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: NATS is reachable and the pool's bucket and stream are bound.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready", body = ErrorBody),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let queue = state.queue()?;
    if queue.is_connected() {
        Ok("ready\n")
    } else {
        Err(ApiError::unavailable("NATS is not connected"))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    workpool_runtime::admin::metrics_response(state.metrics().registry())
}
