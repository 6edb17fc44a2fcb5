//! Recent work, for the console: `GET /api/v1/work` lists the records written last
//! (newest first) and work still queued without a record, filtered by status and task.
//! It reads the latest writes of the results bucket's stream and the latest messages of
//! the work stream by sequence, so a listing costs a bounded number of reads however
//! large the pool.

use std::collections::HashSet;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use workpool_core::expiry::is_expired;
use workpool_core::message::WorkMessage;
use workpool_core::record::WorkView;
use workpool_core::{WorkId, WorkRecord, WorkStatus};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

/// How many of the bucket's latest writes a listing looks at.
const SCAN_RECORDS: u64 = 1_000;
/// How many of the work stream's latest messages it looks at for queued work.
const SCAN_QUEUED: u64 = 500;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// Reads in flight at once.
const READS_AT_ONCE: usize = 32;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecentQuery {
    /// Only work with this status.
    pub status: Option<WorkStatus>,
    /// Only work of this task.
    pub task: Option<String>,
    /// How many to answer at most (default 50, at most 500).
    pub limit: Option<usize>,
}

/// Recent work, newest first, without results (GET the work for its result).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecentWork {
    pub items: Vec<WorkView>,
    /// Bucket writes and queued messages looked at: older work is not listed.
    pub scanned: u64,
}

/// Lists recent work.
#[utoipa::path(
    get, path = "/api/v1/work", tag = "work",
    params(RecentQuery),
    responses(
        (status = 200, description = "The latest work the caller may see, newest first", body = RecentWork),
        (status = 400, description = "An unknown status or a bad limit", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable (see Retry-After)", body = ErrorBody),
    )
)]
pub async fn recent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<RecentQuery>, QueryRejection>,
) -> Result<Json<RecentWork>, ApiError> {
    let Query(query) =
        query.map_err(|err| ApiError::bad_request("invalid_query", err.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1-{MAX_LIMIT}"),
        ));
    }
    let queue = state.queue()?;
    let (records, mut scanned) = latest(queue.records_stream(), SCAN_RECORDS, record_of).await?;
    let mut seen: HashSet<WorkId> = HashSet::new();
    let now = Utc::now();
    let mut items: Vec<WorkView> = Vec::new();
    for (id, record) in records {
        if !seen.insert(id.clone()) {
            continue; // an older write of the same work
        }
        if let Some(record) = record.filter(|r| !is_expired(r, queue.result_ttl(), now)) {
            items.push(WorkView { id, record });
        }
    }
    if query
        .status
        .is_none_or(|status| status == WorkStatus::Pending)
    {
        let (queued, looked) = latest(queue.work_stream(), SCAN_QUEUED, queued_of).await?;
        scanned += looked;
        for work in queued {
            if seen.insert(work.id.clone()) {
                let record = work.pending_record();
                items.push(WorkView {
                    id: work.id,
                    record,
                });
            }
        }
    }
    // As for dead letters: a caller sees its own tenant's work, an admin all of it.
    items.retain(|view| caller.admin || caller.owns(view.record.tenant.as_deref()));
    items.retain(|view| {
        query
            .status
            .is_none_or(|status| view.record.status == status)
    });
    items.retain(|view| {
        query
            .task
            .as_ref()
            .is_none_or(|task| &view.record.task == task)
    });
    items.sort_by_key(|view| std::cmp::Reverse(view.record.updated_at));
    items.truncate(limit);
    for view in &mut items {
        view.record.result = None;
    }
    Ok(Json(RecentWork { items, scanned }))
}

/// What `read` makes of the latest `most` messages of `stream`, newest first, and how
/// many were looked at. Messages removed meanwhile are skipped.
async fn latest<T>(
    stream: &Stream,
    most: u64,
    read: fn(StreamMessage) -> Option<T>,
) -> Result<(Vec<T>, u64), ApiError> {
    let state = stream
        .get_info()
        .await
        .map_err(ApiError::unavailable_from)?
        .state;
    if state.messages == 0 {
        return Ok((Vec::new(), 0));
    }
    let first = state
        .first_sequence
        .max(state.last_sequence.saturating_sub(most - 1));
    let sequences = (first..=state.last_sequence).rev();
    let looked = state.last_sequence - first + 1;
    let messages: Vec<_> = futures::stream::iter(sequences)
        .map(|sequence| stream.direct_get(sequence))
        .buffered(READS_AT_ONCE)
        .collect()
        .await;
    let mut read_ones = Vec::new();
    for message in messages {
        match message {
            Ok(message) => read_ones.extend(read(message)),
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => {}
            Err(err) => return Err(ApiError::unavailable_from(err)),
        }
    }
    Ok((read_ones, looked))
}

/// A bucket write: the work id, and its record (none for a removal). Keys that are not
/// work ids (a group's state) are skipped.
fn record_of(message: StreamMessage) -> Option<(WorkId, Option<WorkRecord>)> {
    let id: WorkId = message.subject.rsplit('.').next()?.parse().ok()?;
    let removed = message
        .headers
        .get("KV-Operation")
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
    if removed {
        return Some((id, None));
    }
    Some((id, serde_json::from_slice(&message.payload).ok()))
}

fn queued_of(message: StreamMessage) -> Option<WorkMessage> {
    serde_json::from_slice(&message.payload).ok()
}
