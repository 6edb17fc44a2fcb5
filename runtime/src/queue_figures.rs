//! A pool's queue in figures, read through the JetStream API: work waiting, running,
//! scheduled and dead, the age of the oldest waiting work, and (from two looks) the rates
//! in and out. The operator writes them into a WorkPool's status and scales on them; the
//! api's console charts them.

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use workpool_core::names::DELAYED_CONSUMER;
use workpool_core::streams::{keyed_consumers, work_consumers};
use workpool_core::{PoolNames, PoolSpec};

/// Queue figures of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueFigures {
    pub pending: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
    /// Delayed work waiting for its time (module `delayed` of the worker).
    pub scheduled: u64,
    /// When the oldest work not yet delivered to a worker was queued.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// The work stream's last sequence (every message it ever stored) and what it holds
    /// now: two looks give the rates in and out ([`Rates::between`]).
    pub published: u64,
    pub stored: u64,
}

impl QueueFigures {
    /// Work that still needs a worker: queued plus running.
    pub fn backlog(&self) -> u64 {
        self.pending + self.in_flight
    }
}

/// A figure that could not be read, with the client's own error.
#[derive(Debug, thiserror::Error)]
pub enum FiguresError {
    #[error("stream {stream}: {source}")]
    GetStream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("stream {stream}: {source}")]
    StreamInfo {
        stream: String,
        #[source]
        source: jetstream::stream::InfoError,
    },
    #[error("consumer {consumer}: {source}")]
    GetConsumer {
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("consumer {consumer}: {source}")]
    ConsumerInfo {
        consumer: String,
        #[source]
        source: jetstream::context::ConsumerInfoError,
    },
}

impl FiguresError {
    /// Whether JetStream answered that an object is missing (a queue problem), rather
    /// than NATS not answering at all (an outage).
    pub fn is_missing(&self) -> bool {
        match self {
            FiguresError::GetStream { source, .. } => matches!(
                source.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(_)
            ),
            FiguresError::GetConsumer { source, .. } => answered_by_jetstream(source.as_ref()),
            FiguresError::StreamInfo { .. } | FiguresError::ConsumerInfo { .. } => false,
        }
    }
}

/// Reads the figures. A missing consumer is an error: guessing (and scaling to max)
/// would be worse than not scaling.
pub async fn figures(
    js: &jetstream::Context,
    names: &PoolNames,
    spec: &PoolSpec,
) -> Result<QueueFigures, FiguresError> {
    let (stream, state) = stream_state(js, &names.stream()).await?;
    let mut figures = QueueFigures {
        published: state.last_sequence,
        stored: state.messages,
        ..QueueFigures::default()
    };
    let consumers = work_consumers(names, spec)
        .into_iter()
        .chain(keyed_consumers(names, spec))
        .filter_map(|c| {
            let filter = c
                .filter_subjects
                .first()
                .cloned()
                .unwrap_or(c.filter_subject);
            Some((c.durable_name?, filter))
        });
    for (name, filter) in consumers {
        let info = consumer_info(&stream, &name).await?;
        figures.pending += info.num_pending;
        figures.in_flight += info.num_ack_pending as u64;
        if info.num_pending > 0 {
            let queued_at = next_queued_at(&stream, &filter, info.delivered.stream_sequence).await;
            figures.oldest_pending = match (figures.oldest_pending, queued_at) {
                (Some(oldest), Some(queued_at)) => Some(oldest.min(queued_at)),
                (oldest, queued_at) => oldest.or(queued_at),
            };
        }
    }
    let delayed = consumer_info(&stream, DELAYED_CONSUMER).await?;
    figures.scheduled = delayed.num_pending + delayed.num_ack_pending as u64;
    let (_, dead) = stream_state(js, &names.dead_letter_stream()).await?;
    figures.dead_letters = dead.messages;
    Ok(figures)
}

async fn stream_state(
    js: &jetstream::Context,
    name: &str,
) -> Result<(jetstream::stream::Stream, jetstream::stream::State), FiguresError> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|source| FiguresError::GetStream {
            stream: name.to_owned(),
            source,
        })?;
    let state = stream
        .info()
        .await
        .map_err(|source| FiguresError::StreamInfo {
            stream: name.to_owned(),
            source,
        })?
        .state
        .clone();
    Ok((stream, state))
}

async fn consumer_info(
    stream: &jetstream::stream::Stream,
    name: &str,
) -> Result<jetstream::consumer::Info, FiguresError> {
    let mut consumer: jetstream::consumer::PullConsumer =
        stream
            .get_consumer(name)
            .await
            .map_err(|source| FiguresError::GetConsumer {
                consumer: name.to_owned(),
                source,
            })?;
    let info = consumer
        .info()
        .await
        .map_err(|source| FiguresError::ConsumerInfo {
            consumer: name.to_owned(),
            source,
        })?;
    Ok(info.clone())
}

/// When the first message on `filter` after `delivered` (a consumer's last delivered
/// stream sequence) was stored: its oldest work not yet delivered. `None` if it cannot
/// be read: the figure is left out rather than failing the others.
async fn next_queued_at(
    stream: &jetstream::stream::Stream,
    filter: &str,
    delivered: u64,
) -> Option<DateTime<Utc>> {
    let message = stream
        .direct_get_next_for_subject(filter, Some(delivered + 1))
        .await
        .ok()?;
    let nanos = i64::try_from(message.time.unix_timestamp_nanos()).ok()?;
    Some(DateTime::from_timestamp_nanos(nanos))
}

/// Whether an error is JetStream's answer (rather than no answer at all).
fn answered_by_jetstream(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<jetstream::Error>().is_some()
            || e.downcast_ref::<jetstream::stream::ConsumerError>()
                .is_some_and(|c| {
                    matches!(c.kind(), jetstream::stream::ConsumerErrorKind::JetStream(_))
                })
    })
}

/// One look at a work stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Instant,
    /// The stream's last sequence: every message it ever stored.
    pub published: u64,
    /// Messages it holds now.
    pub stored: u64,
}

/// Messages per second in and out between two looks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub in_per_second: f64,
    pub out_per_second: f64,
}

impl Rates {
    /// The rates between `earlier` and `later`; `None` if no time passed or the stream
    /// was made again in between (its sequence went back).
    pub fn between(earlier: Sample, later: Sample) -> Option<Self> {
        let seconds = later.at.checked_duration_since(earlier.at)?.as_secs_f64();
        let came_in = later.published.checked_sub(earlier.published)?;
        if seconds <= 0.0 {
            return None;
        }
        // Out: what came in, less what the stream holds more than before.
        let held_more = i128::from(later.stored) - i128::from(earlier.stored);
        let went_out = (i128::from(came_in) - held_more).max(0);
        Some(Self {
            in_per_second: round(came_in as f64 / seconds),
            out_per_second: round(went_out as f64 / seconds),
        })
    }
}

/// One decimal: enough to read, and a status that does not change with every jitter.
fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn in_is_what_was_stored_and_out_what_left() {
        let start = Instant::now();
        let earlier = Sample {
            at: start,
            published: 100,
            stored: 40,
        };
        // 50 came in within 10 s; the stream holds 10 more: 40 went out.
        let later = Sample {
            at: start + Duration::from_secs(10),
            published: 150,
            stored: 50,
        };
        let rates = Rates::between(earlier, later).expect("rates");
        assert_eq!((rates.in_per_second, rates.out_per_second), (5.0, 4.0));
    }
}
