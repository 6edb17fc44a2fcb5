//! The queue over time, for the console: `GET /api/v1/queue` answers the queue's figures
//! now (waiting, running, scheduled, dead, the age of the oldest waiting work, the rates
//! in and out) and the last 120 looks, one every 5 s by default
//! (`WORKPOOL_QUEUE_SAMPLE_EVERY`). Each api pod takes its own looks in the background,
//! so any pod answers with a history.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use workpool_runtime::queue_figures::{self, QueueFigures, Rates, Sample};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

/// How many looks are kept: ten minutes of them, at one every 5 s.
const HISTORY: usize = 120;

/// One look at the queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueuePoint {
    pub at: DateTime<Utc>,
    /// Work queued and not yet delivered to a worker.
    pub pending: u64,
    /// Work delivered to a worker and not yet finished.
    pub running: u64,
    /// Delayed work waiting for its time.
    pub scheduled: u64,
    /// Messages in the dead-letter stream.
    pub dead: u64,
    /// How long the oldest pending work has waited.
    pub oldest_pending_seconds: Option<f64>,
    /// Work stored per second since the look before (none for the first).
    pub in_per_second: Option<f64>,
    /// Work finished (removed from the stream) per second since the look before.
    pub out_per_second: Option<f64>,
}

/// The queue now and over the last ten minutes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueOverview {
    pub now: QueuePoint,
    /// Oldest first: the last 120 looks, one every 5 s by default.
    pub history: Vec<QueuePoint>,
}

/// The looks a pod has taken.
#[derive(Debug, Default)]
pub struct History {
    looks: Mutex<Looks>,
}

#[derive(Debug, Default)]
struct Looks {
    points: VecDeque<QueuePoint>,
    last: Option<Sample>,
}

impl History {
    /// Adds a look taken now and gives it back.
    fn record(&self, figures: &QueueFigures) -> QueuePoint {
        let sample = Sample {
            at: tokio::time::Instant::now(),
            published: figures.published,
            stored: figures.stored,
        };
        let mut looks = self.looks.lock().unwrap_or_else(PoisonError::into_inner);
        let rates = looks.last.and_then(|last| Rates::between(last, sample));
        looks.last = Some(sample);
        let point = point(figures, rates, Utc::now());
        if looks.points.len() == HISTORY {
            looks.points.pop_front();
        }
        looks.points.push_back(point.clone());
        point
    }

    fn points(&self) -> Vec<QueuePoint> {
        let looks = self.looks.lock().unwrap_or_else(PoisonError::into_inner);
        looks.points.iter().cloned().collect()
    }
}

fn point(figures: &QueueFigures, rates: Option<Rates>, at: DateTime<Utc>) -> QueuePoint {
    let waited = figures
        .oldest_pending
        .map(|queued| (at - queued).num_milliseconds().max(0) as f64 / 1000.0);
    QueuePoint {
        at,
        pending: figures.pending,
        running: figures.in_flight,
        scheduled: figures.scheduled,
        dead: figures.dead_letters,
        oldest_pending_seconds: waited,
        in_per_second: rates.map(|r| r.in_per_second),
        out_per_second: rates.map(|r| r.out_per_second),
    }
}

/// Looks at the queue `every` so often while the process runs (once it is bound to its
/// NATS objects).
pub async fn sample(state: AppState, every: Duration) {
    let mut every = tokio::time::interval(every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Ok(queue) = state.queue() else {
            continue;
        };
        match queue_figures::figures(queue.js(), state.names(), &state.config().spec).await {
            Ok(figures) => {
                state.history().record(&figures);
            }
            Err(err) => tracing::debug!(%err, "queue figures not read"),
        }
    }
}

/// The queue now and over the last minutes.
#[utoipa::path(
    get, path = "/api/v1/queue", tag = "queue",
    responses(
        (status = 200, description = "The queue's figures now, and the last 120 looks (one every 5 s by default: 10 minutes)", body = QueueOverview),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = ErrorBody),
        (status = 403, description = "The token is not an admin's (when auth is on)", body = ErrorBody),
        (status = 503, description = "NATS is unreachable (see Retry-After)", body = ErrorBody),
    )
)]
pub async fn overview(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<QueueOverview>, ApiError> {
    // The whole queue, every tenant's work: an operator's view.
    caller.must_be_admin()?;
    let queue = state.queue()?;
    let figures = queue_figures::figures(queue.js(), state.names(), &state.config().spec)
        .await
        .map_err(ApiError::unavailable_from)?;
    let history = state.history();
    let now = point(&figures, None, Utc::now());
    Ok(Json(QueueOverview {
        now,
        history: history.points(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_give_rates_and_keep_ten_minutes() {
        let history = History::default();
        let mut figures = QueueFigures {
            pending: 3,
            published: 100,
            stored: 10,
            ..QueueFigures::default()
        };
        let first = history.record(&figures);
        assert_eq!((first.pending, first.in_per_second), (3, None));
        for _ in 0..HISTORY + 5 {
            figures.published += 10;
            history.record(&figures);
        }
        let points = history.points();
        assert_eq!(points.len(), HISTORY);
        assert!(points.last().unwrap().in_per_second.is_some());
    }

    #[test]
    fn the_oldest_pending_work_is_an_age() {
        let at = Utc::now();
        let figures = QueueFigures {
            oldest_pending: Some(at - chrono::Duration::seconds(90)),
            ..QueueFigures::default()
        };
        assert_eq!(point(&figures, None, at).oldest_pending_seconds, Some(90.0));
    }
}
