//! `POST /api/v1/work/batch`: many submissions in one request, a JSON array or NDJSON
//! (one per line). Each item gets the checks, dedupe and errors of a single POST and an
//! answer of its own, in order; the items' writes are pipelined on the api's NATS
//! connection rather than made one after another.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use workpool_core::WorkId;
use workpool_core::message::{TraceContext, WorkSubmission};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::{SubmitAnswer, body_error, outcome, starts_with};
use crate::send_span::SendSpan;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 1_000;
/// Most bytes in one batch body (or one item's limit, if that is larger).
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Items whose writes are in flight at once.
const PIPELINE: usize = 256;

/// One item of a batch: a single POST's body, with its `Idempotency-Key` as a field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub data: serde_json::Value,
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", max_length = 64)]
    pub task: Option<String>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub key: Option<String>,
    /// How long the result is kept once the work ends (at most the pool's `resultTTL`).
    #[serde(default)]
    #[schema(example = "30s")]
    pub ttl: Option<String>,
    /// Run no earlier than this time (RFC 3339), at most a year ahead.
    #[serde(default)]
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Run no earlier than this long after acceptance, such as `90s`.
    #[serde(default)]
    #[schema(example = "10m")]
    pub delay: Option<String>,
    /// `high`, `normal` (the default) or `low`; unkeyed work only.
    #[serde(default)]
    pub priority: Option<workpool_core::priority::Priority>,
    /// Where to POST the record once the work ends (a host the pool allows).
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub callback_url: Option<String>,
    /// Run within the pool's limits for this group (unkeyed work only).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub group: Option<String>,
    /// Derive the id from this instead of the content, as the header does for a single
    /// POST (1-256 visible ASCII characters).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub idempotency_key: Option<String>,
}

/// The answer to one item.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchItemAnswer {
    /// `accepted` for new work, the current status of work already known, or `refused`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<WorkId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_by: Option<String>,
    /// Why the item was refused: what a single POST of it would have been answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemError {
    /// The status a single POST of this item would have got (400, 413, 429, 503).
    pub http_status: u16,
    pub code: String,
    pub error: String,
}

/// The answer to a batch: one answer per item, in the order of the items.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchAnswer {
    pub items: Vec<BatchItemAnswer>,
    /// How many items were newly accepted, and how many refused.
    pub accepted: usize,
    pub refused: usize,
}

/// Submit many pieces of work at once.
#[utoipa::path(
    post, path = "/api/v1/work/batch", tag = "work",
    // Any array: each item is checked on its own and answered in `items` (a `BatchItem`
    // that is not valid is that item's 400, not the batch's).
    request_body(
        description = "1-1,000 items, each a `BatchItem`",
        content(
            (Vec<serde_json::Value> = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    params(
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context: every item's spans join this trace (one `send` span for the batch)"),
        ("tracestate" = Option<String>, Header, description = "W3C Trace Context vendor data, carried with `traceparent`"),
    ),
    responses(
        (status = 200, description = "Every item answered, in order: accepted, already known, or refused with the error a single POST would have got", body = BatchAnswer),
        (status = 400, description = "Not an array of items (or NDJSON), no items, or more than 1,000", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = crate::error::ErrorBody),
        (status = 413, description = "Body over 8 MiB (or one item's limit, if larger)", body = crate::error::ErrorBody),
        (status = 415, description = "Content type is not application/json or application/x-ndjson", body = crate::error::ErrorBody),
        (status = 503, description = "NATS is unreachable (see Retry-After)", body = crate::error::ErrorBody),
    )
)]
pub async fn submit_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchAnswer>), ApiError> {
    let format = Format::of(&headers)?;
    let body = body.map_err(|rejection| body_error(rejection, batch_limit(&state)))?;
    // Shared slices of the body: each item owns its bytes without a copy.
    let items: Vec<Bytes> = format
        .split(&body)?
        .into_iter()
        .map(|item| body.slice_ref(item))
        .collect();
    let queue = state.queue()?;
    let send = SendSpan::start(&headers, state.names(), items.len());
    let trace = send.carried();
    let answers: Vec<BatchItemAnswer> = futures::stream::iter(items)
        .map(|item| submit_item(&state, &caller, queue, item, trace.as_ref()))
        .buffered(PIPELINE)
        .collect()
        .await;
    let refused = answers.iter().filter(|a| a.error.is_some()).count();
    let accepted = answers.iter().filter(|a| a.status == "accepted").count();
    send.end(Ok(&format!("{accepted} accepted, {refused} refused")));
    Ok((
        StatusCode::OK,
        Json(BatchAnswer {
            items: answers,
            accepted,
            refused,
        }),
    ))
}

/// The body limit of a batch.
pub fn batch_limit(state: &AppState) -> usize {
    MAX_BATCH_BYTES.max(state.max_body_bytes())
}

async fn submit_item(
    state: &AppState,
    caller: &Caller,
    queue: &crate::queue::Queue,
    item: Bytes,
    trace: Option<&TraceContext>,
) -> BatchItemAnswer {
    let (work, idempotency_key) = match read_item(&item, state.max_body_bytes()) {
        Ok(read) => read,
        Err(err) => return refused(err),
    };
    let id = work.id(state.id_scope(caller), idempotency_key.as_deref());
    let accepted = crate::queue::Accepted {
        pod: state.pod(),
        tenant: caller.tenant.as_deref(),
        trace,
    };
    match queue.submit(&id, &work, accepted).await {
        Ok(submitted) => answered(outcome(state, queue, &id, &work, submitted).await.1),
        Err(err) => refused(err),
    }
}

fn answered(answer: SubmitAnswer) -> BatchItemAnswer {
    BatchItemAnswer {
        status: answer.status,
        callback: Some(answer.callback),
        accepted_by: Some(answer.accepted_by),
        error: None,
    }
}

fn refused(err: ApiError) -> BatchItemAnswer {
    BatchItemAnswer {
        status: "refused".into(),
        callback: None,
        accepted_by: None,
        error: Some(ItemError {
            http_status: err.status().as_u16(),
            code: err.code().to_owned(),
            error: err.to_string(),
        }),
    }
}

/// The item's work and its idempotency key, if it has one, with a single POST's checks
/// in its order.
fn read_item(item: &[u8], limit: usize) -> Result<(WorkSubmission, Option<String>), ApiError> {
    if item.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    if !starts_with(item, b'{') {
        return Err(ApiError::bad_request(
            "invalid_json",
            "invalid work: each item must be a JSON object",
        ));
    }
    let item: BatchItem = serde_json::from_slice(item)
        .map_err(|err| ApiError::bad_request("invalid_json", format!("invalid work: {err}")))?;
    let idempotency_key = item.idempotency_key;
    if idempotency_key
        .as_ref()
        .is_some_and(|key| !crate::routes::is_idempotency_key(key.as_bytes()))
    {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "idempotency_key must be 1-256 visible ASCII characters",
        ));
    }
    let work = WorkSubmission {
        data: item.data,
        task: item.task,
        key: item.key,
        ttl: item.ttl,
        run_at: item.run_at,
        delay: item.delay,
        priority: item.priority,
        callback_url: item.callback_url,
        group: item.group,
    };
    work.validate()
        .map_err(|err| ApiError::bad_request("invalid_work", err.to_string()))?;
    Ok((work, idempotency_key))
}

/// How the items are laid out in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    JsonArray,
    NdJson,
}

impl Format {
    fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(header::CONTENT_TYPE) else {
            return Ok(Format::JsonArray);
        };
        let essence = value
            .to_str()
            .ok()
            .and_then(|mime| mime.split(';').next())
            .map(|essence| essence.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some("application/json") => Ok(Format::JsonArray),
            Some("application/x-ndjson" | "application/jsonl") => Ok(Format::NdJson),
            _ => Err(ApiError::UnsupportedMediaType {
                expected: "application/json or application/x-ndjson",
            }),
        }
    }

    /// The items' bytes, each still to be read; the array is scanned, not parsed into
    /// values, so each item is parsed once, into its own type.
    fn split(self, body: &[u8]) -> Result<Vec<&[u8]>, ApiError> {
        let items: Vec<&[u8]> = match self {
            Format::JsonArray => {
                if !starts_with(body, b'[') {
                    return Err(ApiError::bad_request(
                        "invalid_json",
                        "a batch must be a JSON array of work (or NDJSON)",
                    ));
                }
                let raw: Vec<&RawValue> = serde_json::from_slice(body).map_err(|err| {
                    ApiError::bad_request("invalid_json", format!("invalid batch: {err}"))
                })?;
                raw.into_iter().map(|item| item.get().as_bytes()).collect()
            }
            Format::NdJson => body
                .split(|byte| *byte == b'\n')
                .filter(|line| line.iter().any(|byte| !byte.is_ascii_whitespace()))
                .collect(),
        };
        match items.len() {
            0 => Err(ApiError::bad_request(
                "empty_batch",
                "a batch needs at least one item",
            )),
            n if n > MAX_BATCH_ITEMS => Err(ApiError::bad_request(
                "too_many_items",
                format!("a batch holds at most {MAX_BATCH_ITEMS} items, not {n}"),
            )),
            _ => Ok(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_splits_into_its_items_unparsed() {
        let items = Format::JsonArray
            .split(br#" [{"data": 1}, {"data": [2, {"x": 3}]} ,"not work"]"#)
            .expect("split");
        assert_eq!(
            items,
            [
                &br#"{"data": 1}"#[..],
                br#"{"data": [2, {"x": 3}]}"#,
                br#""not work""#
            ]
        );
    }

    #[test]
    fn ndjson_splits_on_lines_and_skips_blank_ones() {
        let items = Format::NdJson
            .split(b"{\"data\": 1}\n\n  \n{\"data\": 2}\r\n")
            .expect("split");
        assert_eq!(items, [&b"{\"data\": 1}"[..], b"{\"data\": 2}\r"]);
    }

    #[test]
    fn a_batch_is_bounded_and_not_empty() {
        let many = format!("[{}]", vec![r#"{"data":0}"#; MAX_BATCH_ITEMS + 1].join(","));
        let err = Format::JsonArray
            .split(many.as_bytes())
            .expect_err("too many");
        assert_eq!(err.code(), "too_many_items");
        let err = Format::JsonArray.split(b"[]").expect_err("empty");
        assert_eq!(err.code(), "empty_batch");
        let err = Format::JsonArray
            .split(br#"{"data": 1}"#)
            .expect_err("an object");
        assert_eq!(err.code(), "invalid_json");
    }

    #[test]
    fn an_item_gets_a_single_posts_checks() {
        assert_eq!(
            read_item(br#"{"data": 1, "extra": 2}"#, 1024)
                .expect_err("unknown field")
                .code(),
            "invalid_json"
        );
        assert_eq!(
            read_item(b"[1]", 1024).expect_err("array").code(),
            "invalid_json"
        );
        assert_eq!(
            read_item(br#"{"data": 1, "task": "no spaces"}"#, 1024)
                .expect_err("task")
                .code(),
            "invalid_work"
        );
        assert_eq!(
            read_item(br#"{"data": 1, "idempotency_key": ""}"#, 1024)
                .expect_err("key")
                .code(),
            "invalid_idempotency_key"
        );
        assert_eq!(
            read_item(br#"{"data": "long"}"#, 8)
                .expect_err("size")
                .code(),
            "payload_too_large"
        );
        let (_, by_content) = read_item(br#"{"data": 1}"#, 1024).expect("work");
        let (_, by_key) = read_item(br#"{"data": 1, "idempotency_key": "k"}"#, 1024).expect("work");
        assert_eq!((by_content, by_key), (None, Some("k".to_owned())));
    }
}
