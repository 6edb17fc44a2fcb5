//! `GET /api/v1/work/{id}/events`: a work's record as server-sent events, one each time
//! it changes for a client, ending after the terminal one (docs/api.md, "Live updates").
//!
//! A stream follows the record through the api pod's shared results watch, as a
//! long-poll does, and holds one of its bounded waits while it is open. If the watch
//! stopped meanwhile (and so may have missed writes), the stream reads the record again.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use workpool_core::{WorkId, WorkRecord};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::queue::Queue;
use crate::routes::{WorkView, parse_id};
use crate::waiters::Waiter;

/// How often an idle stream checks that the results watch has stayed up.
const RECHECK: Duration = Duration::from_secs(5);

/// Follow work as server-sent events.
#[utoipa::path(
    get, path = "/api/v1/work/{id}/events", tag = "work",
    params(("id" = String, Path, description = "The callback id: 32 lowercase hex characters", pattern = "^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "One event per change of the work's record, the first at once, the last when it is finished; then the stream ends", content_type = "text/event-stream", body = RecordEvent),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 404, description = "Unknown id, or the record expired", body = ErrorBody),
        (status = 429, description = "Too many requests already wait in this api pod (see Retry-After)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(id)?;
    let queue = state.queue()?.clone();
    // Registered before the read, so a write between the two is still delivered.
    let waiter = queue.waiter(&id)?;
    let (record, revision) = queue
        .record(&id)
        .await?
        .filter(|(record, _)| caller.owns(record.tenant.as_deref()))
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    let follow = Follow {
        queue,
        id,
        waiter,
        revision,
        unseen: Some(record),
        shown: None,
    };
    let stream = futures::stream::unfold(follow, Follow::next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The schema of each event: `data` is the record as `GET /api/v1/work/{id}` answers
/// it, as JSON; `id` the bucket revision it was read at.
pub struct RecordEvent;

impl utoipa::PartialSchema for RecordEvent {
    fn schema() -> RefOr<Schema> {
        let data = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "The record as GET /api/v1/work/{id} answers it (JSON)",
            ))
            .content_media_type("application/json")
            .content_schema(Some(Ref::from_schema_name(WorkView::name())));
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("The bucket revision the record was read at"));
        let event = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["message"]));
        ObjectBuilder::new()
            .property("data", data)
            .property("id", id)
            .property("event", event)
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for RecordEvent {}

/// One open stream.
struct Follow {
    queue: Queue,
    id: WorkId,
    waiter: Waiter,
    /// The revision of the latest record read.
    revision: u64,
    /// A record read and not yet compared with what was shown.
    unseen: Option<WorkRecord>,
    /// The last record sent; `None` before the first.
    shown: Option<WorkRecord>,
}

impl Follow {
    /// The next event and the state after it; `None` ends the stream: after the
    /// terminal record, when the record is gone, or when it can no longer be read.
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if self
            .shown
            .as_ref()
            .is_some_and(|shown| shown.status.is_terminal())
        {
            return None;
        }
        loop {
            if let Some(record) = self.unseen.take()
                && self
                    .shown
                    .as_ref()
                    .is_none_or(|shown| differs(shown, &record))
            {
                let event = self.event(&record);
                self.shown = Some(record);
                return Some((Ok(event), self));
            }
            tokio::select! {
                () = self.waiter.changed() => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
            self.catch_up().await?;
        }
    }

    /// Takes in what the watch delivered, or reads the record again where the watch
    /// may have missed writes; `None` when the record is gone or unreadable.
    async fn catch_up(&mut self) -> Option<()> {
        if !self.waiter.covered() {
            self.waiter = self.queue.waiter(&self.id).ok()?;
            return self.read().await;
        }
        match self.waiter.latest() {
            Some(seen) if seen.revision > self.revision => match seen.record {
                Some(record) => {
                    (self.revision, self.unseen) = (seen.revision, Some(record));
                    Some(())
                }
                // Deleted, or an earlier generation's record ran out under queued work.
                None => self.read().await,
            },
            _ => Some(()),
        }
    }

    async fn read(&mut self) -> Option<()> {
        let (record, revision) = self.queue.record(&self.id).await.ok()??;
        (self.revision, self.unseen) = (self.revision.max(revision), Some(record));
        Some(())
    }

    fn event(&self, record: &WorkRecord) -> Event {
        let view = WorkView {
            id: self.id.clone(),
            record: record.clone(),
        };
        let event = Event::default().id(self.revision.to_string());
        event.json_data(&view).unwrap_or_else(|err| {
            // A record always serializes; should it not, the client still learns why.
            Event::default().event("error").data(err.to_string())
        })
    }
}

/// Whether `next` shows a client something `shown` did not: a heartbeat that only
/// moves the lease is no news.
fn differs(shown: &WorkRecord, next: &WorkRecord) -> bool {
    let without_lease = |record: &WorkRecord| WorkRecord {
        lease_until: None,
        ..record.clone()
    };
    without_lease(shown) != without_lease(next)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use workpool_core::WorkStatus;

    use super::*;

    #[test]
    fn a_renewed_lease_is_no_news_and_a_new_status_is() {
        let now = Utc::now();
        let mut working = WorkRecord::pending("echo", None, "api-0", now);
        working.advance(WorkStatus::Working, now).expect("forward");
        let renewed = WorkRecord {
            lease_until: Some(now + chrono::Duration::seconds(30)),
            ..working.clone()
        };
        assert!(!differs(&working, &renewed));
        let reported = WorkRecord {
            progress: Some(workpool_core::progress::Progress::now(Some(50.0), None)),
            ..renewed.clone()
        };
        assert!(differs(&renewed, &reported), "progress is news");
        let mut worked = reported.clone();
        worked.advance(WorkStatus::Worked, now).expect("forward");
        assert!(differs(&reported, &worked));
    }
}
