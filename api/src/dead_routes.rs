//! The HTTP handlers of `/api/v1/dead`: dead letters listed, inspected, retried and
//! purged. A caller sees the dead letters of its own work; an admin (or anyone, with
//! auth off) sees them all, and also messages that were not work at all.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use workpool_core::WorkId;

use crate::AppState;
use crate::auth::Caller;
use crate::dead_letters::{DeadLetter, DeadLetterView, Retried};
use crate::error::{ApiError, ErrorBody};
use crate::routes::{SubmitAnswer, count_accepted, parse_id};

/// Letters per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// The most letters one `POST /api/v1/dead/retry` retries, and one non-admin
/// `DELETE /api/v1/dead` removes; the answer's `next` says where to go on.
const MAX_BULK: usize = 1_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Continue after this sequence (the previous page's `next`).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Letters per page, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// What a bulk retry or purge did.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BulkAnswer {
    /// Work queued again.
    #[serde(default)]
    pub retried: usize,
    /// Work found live already (retried before, or submitted again); its letter is gone.
    #[serde(default)]
    pub live: usize,
    /// Dead letters removed (by a purge).
    #[serde(default)]
    pub purged: u64,
    /// More letters remain past the bound of one request: ask again with `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AfterParams {
    /// Continue after this sequence (a previous answer's `next`).
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// A sequence to continue after: 0 (the start) when none is given, 400 below 0.
fn start_after(after: Option<i64>) -> Result<u64, ApiError> {
    u64::try_from(after.unwrap_or(0))
        .map_err(|_| ApiError::bad_request("invalid_query", "after must be 0 or more"))
}

fn visible(caller: &Caller) -> impl Fn(&DeadLetter) -> bool + '_ {
    move |letter| match letter.work {
        Some(_) => caller.admin || caller.owns(letter.tenant()),
        None => caller.admin,
    }
}

fn retriable(caller: &Caller) -> impl Fn(&DeadLetter) -> bool + '_ {
    let visible = visible(caller);
    move |letter| letter.work.is_some() && visible(letter)
}

fn query<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params
        .map(|Query(params)| params)
        .map_err(|err| ApiError::bad_request("invalid_query", err.body_text()))
}

/// The latest dead letter of the id in the path that `caller` may see, or 404.
async fn latest_visible(
    state: &AppState,
    caller: &Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<(WorkId, DeadLetter), ApiError> {
    let id = parse_id(id)?;
    let letter = state.queue()?.dead_letters().latest(&id).await?;
    match letter.filter(|letter| visible(caller)(letter)) {
        Some(letter) => Ok((id, letter)),
        None => Err(ApiError::NoDeadLetter(id.to_string())),
    }
}

/// List dead letters.
#[utoipa::path(
    get, path = "/api/v1/dead", tag = "dead letters", params(ListParams),
    responses(
        (status = 200, description = "Dead letters, oldest first", body = DeadLetterList),
        (status = 400, description = "Malformed after or limit", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let params = query(params)?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1-{MAX_PAGE}"),
        ));
    }
    let dead = state.queue()?.dead_letters();
    let page = dead
        .page(start_after(params.after)?, limit, visible(&caller))
        .await?;
    Ok(Json(DeadLetterList {
        dead_letters: page.letters.into_iter().map(Into::into).collect(),
        next: page.next,
    }))
}

/// Inspect the latest dead letter of work.
#[utoipa::path(
    get, path = "/api/v1/dead/{id}", tag = "dead letters",
    params(("id" = String, Path, description = "The work id", pattern = "^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 404, description = "No dead letter of this work", body = ErrorBody),
        (status = 503, description = "NATS is unreachable", body = ErrorBody),
    )
)]
pub async fn inspect(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let (_, letter) = latest_visible(&state, &caller, id).await?;
    Ok(Json(letter.into()))
}

/// Retry dead-lettered work: queue it again under the same id, with every attempt anew.
#[utoipa::path(
    post, path = "/api/v1/dead/{id}/retry", tag = "dead letters",
    params(("id" = String, Path, description = "The work id", pattern = "^[0-9a-f]{32}$")),
    responses(
        (status = 202, description = "Queued again; its dead letters are removed", body = SubmitAnswer),
        (status = 200, description = "The work is live already (retried before, or submitted again): its status; its dead letters are removed", body = SubmitAnswer),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 404, description = "No dead letter of this work", body = ErrorBody),
        (status = 429, description = "The queue is full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable", body = ErrorBody),
    )
)]
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (id, letter) = latest_visible(&state, &caller, id).await?;
    let answer = |status: &str, accepted_by: &str| SubmitAnswer {
        status: status.to_owned(),
        callback: id.clone(),
        accepted_by: accepted_by.to_owned(),
    };
    Ok(match retry_letter(&state, &letter).await? {
        Retried::Queued => {
            let answer = answer("accepted", state.pod());
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Retried::Live(record) => {
            Json(answer(record.status.as_str(), &record.accepted_by)).into_response()
        }
    })
}

/// Retries one letter; new work is counted and announced as a POST's is.
async fn retry_letter(state: &AppState, letter: &DeadLetter) -> Result<Retried, ApiError> {
    let queue = state.queue()?;
    let retried = queue.retry_dead_letter(letter, state.pod()).await?;
    if let (Retried::Queued, Some(work)) = (&retried, &letter.work) {
        count_accepted(state, queue, &work.id, &work.task).await;
    }
    Ok(retried)
}

/// Retry every dead letter the caller may see, up to 1,000 per request.
#[utoipa::path(
    post, path = "/api/v1/dead/retry", tag = "dead letters", params(AfterParams),
    responses(
        (status = 200, description = "What was retried; `next` when more remain", body = BulkAnswer),
        (status = 400, description = "Malformed after", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 429, description = "The queue is full: the answer so far is lost, ask again (retries are idempotent)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable (retries are idempotent: ask again)", body = ErrorBody),
    )
)]
pub async fn retry_all(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<AfterParams>, QueryRejection>,
) -> Result<Json<BulkAnswer>, ApiError> {
    let after = start_after(query(params)?.after)?;
    let dead = state.queue()?.dead_letters();
    let page = dead.page(after, MAX_BULK, retriable(&caller)).await?;
    let mut answer = BulkAnswer {
        next: page.next,
        ..BulkAnswer::default()
    };
    for letter in &page.letters {
        match retry_letter(&state, letter).await? {
            Retried::Queued => answer.retried += 1,
            Retried::Live(_) => answer.live += 1,
        }
    }
    Ok(Json(answer))
}

/// Purge the dead letters of work.
#[utoipa::path(
    delete, path = "/api/v1/dead/{id}", tag = "dead letters",
    params(("id" = String, Path, description = "The work id", pattern = "^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "Removed", body = BulkAnswer),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 404, description = "No dead letter of this work", body = ErrorBody),
        (status = 503, description = "NATS is unreachable", body = ErrorBody),
    )
)]
pub async fn purge(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<BulkAnswer>, ApiError> {
    let (id, letter) = latest_visible(&state, &caller, id).await?;
    let dead = state.queue()?.dead_letters();
    let purged = dead.forget(&id, letter.sequence).await?;
    Ok(Json(BulkAnswer {
        purged,
        ..BulkAnswer::default()
    }))
}

/// Purge every dead letter the caller may see: all at once for an admin, else up to
/// 1,000 per request.
#[utoipa::path(
    delete, path = "/api/v1/dead", tag = "dead letters", params(AfterParams),
    responses(
        (status = 200, description = "Removed; `next` when more remain", body = BulkAnswer),
        (status = 400, description = "Malformed after", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable", body = ErrorBody),
    )
)]
pub async fn purge_all(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<AfterParams>, QueryRejection>,
) -> Result<Json<BulkAnswer>, ApiError> {
    let after = start_after(query(params)?.after)?;
    let dead = state.queue()?.dead_letters();
    if caller.admin && after == 0 {
        let purged = dead.purge_all().await?;
        return Ok(Json(BulkAnswer {
            purged,
            ..BulkAnswer::default()
        }));
    }
    let page = dead.page(after, MAX_BULK, visible(&caller)).await?;
    for letter in &page.letters {
        dead.delete(letter.sequence).await?;
    }
    Ok(Json(BulkAnswer {
        purged: u64::try_from(page.letters.len()).unwrap_or(u64::MAX),
        next: page.next,
        ..BulkAnswer::default()
    }))
}
