//! Dead letters as an API: work that failed for good is kept in the pool's dead-letter
//! stream, where it can be listed, inspected, retried and purged (docs/api.md, "Dead
//! letters").
//!
//! A retry queues the work again under the same id, as a new submission: its message is
//! published first, then the `failed` record is removed (so GET shows it `pending`), then
//! the dead letters of it up to the one retried. A crash between the steps leaves the
//! work queued and its dead letter in place; a second retry finds the work live and only
//! removes the letter.

use async_nats::jetstream::{self, kv, stream::DirectGetErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use workpool_core::message::{DEAD_LETTER_ATTEMPTS_HEADER, DEAD_LETTER_ERROR_HEADER, WorkMessage};
use workpool_core::{PoolNames, WorkId, WorkRecord, WorkStatus};

use crate::error::ApiError;
use crate::queue::{Published, Queue};

/// One message of the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub sequence: u64,
    pub at: DateTime<Utc>,
    /// The work, unless the message was not a work message at all.
    pub work: Option<WorkMessage>,
    pub payload: Bytes,
    pub error: String,
    pub attempts: u32,
}

impl DeadLetter {
    fn read(message: jetstream::message::StreamMessage) -> Self {
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
        };
        let nanos = message.time.unix_timestamp_nanos();
        Self {
            sequence: message.sequence,
            at: DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX)),
            work: serde_json::from_slice(&message.payload).ok(),
            error: header(DEAD_LETTER_ERROR_HEADER).unwrap_or_default(),
            attempts: header(DEAD_LETTER_ATTEMPTS_HEADER)
                .and_then(|text| text.parse().ok())
                .unwrap_or(0),
            payload: message.payload,
        }
    }

    /// The tenant whose work it is; `None` also for an unreadable message.
    pub fn tenant(&self) -> Option<&str> {
        self.work.as_ref().and_then(|work| work.tenant.as_deref())
    }
}

/// A dead letter as the api shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    /// Its place in the dead-letter stream; a listing continues after it.
    pub sequence: u64,
    /// When the work was dead-lettered.
    pub dead_at: DateTime<Utc>,
    /// The error of the last attempt.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// The work's id; absent for a message that was not a work message at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<WorkId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The work's data, as submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// When the failed submission was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<DateTime<Utc>>,
    /// A message that was not a work message: its payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        let payload = letter
            .work
            .is_none()
            .then(|| String::from_utf8_lossy(&letter.payload).into_owned());
        let work = letter.work;
        Self {
            sequence: letter.sequence,
            dead_at: letter.at,
            error: letter.error,
            attempts: letter.attempts,
            id: work.as_ref().map(|work| work.id.clone()),
            task: work.as_ref().map(|work| work.task.clone()),
            key: work.as_ref().and_then(|work| work.key.clone()),
            submitted_at: work.as_ref().map(|work| work.created_at),
            data: work.map(|work| work.data),
            payload,
        }
    }
}

/// A page of a listing: the letters, and where the next page starts, if any.
#[derive(Debug)]
pub struct Page {
    pub letters: Vec<DeadLetter>,
    pub next: Option<u64>,
}

/// How many messages one listing reads at most, visible to the caller or not, so a
/// tenant with few letters among many does not make one request read them all.
const MAX_SCANNED: usize = 10_000;

/// The pool's dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    names: PoolNames,
    stream: jetstream::stream::Stream,
}

impl DeadLetters {
    pub async fn bind(
        js: &jetstream::Context,
        names: &PoolNames,
    ) -> Result<Self, jetstream::context::GetStreamError> {
        let stream = js.get_stream(names.dead_letter_stream()).await?;
        Ok(Self {
            names: names.clone(),
            stream,
        })
    }

    /// The first letter at or after `sequence` on `subject`, if any.
    async fn next(&self, subject: &str, sequence: u64) -> Result<Option<DeadLetter>, ApiError> {
        match self
            .stream
            .direct_get_next_for_subject(subject, Some(sequence))
            .await
        {
            Ok(message) => Ok(Some(DeadLetter::read(message))),
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(err) => Err(ApiError::unavailable_from(err)),
        }
    }

    /// Up to `limit` letters after `after` that `visible` lets through, oldest first.
    pub async fn page(
        &self,
        after: u64,
        limit: usize,
        visible: impl Fn(&DeadLetter) -> bool,
    ) -> Result<Page, ApiError> {
        let filter = self.names.dead_letter_filter();
        let (mut letters, mut sequence) = (Vec::new(), after.saturating_add(1));
        for _ in 0..MAX_SCANNED {
            let Some(letter) = self.next(&filter, sequence).await? else {
                return Ok(Page {
                    letters,
                    next: None,
                });
            };
            sequence = letter.sequence.saturating_add(1);
            if visible(&letter) {
                letters.push(letter);
                if letters.len() == limit {
                    break;
                }
            }
        }
        let next = Some(sequence - 1);
        Ok(Page { letters, next })
    }

    /// The latest dead letter of `id`.
    pub async fn latest(&self, id: &WorkId) -> Result<Option<DeadLetter>, ApiError> {
        let subject = self.names.dead_letter_subject(id);
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(DeadLetter::read(message))),
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(err) => Err(ApiError::unavailable_from(err)),
        }
    }

    /// Removes the dead letters of `id` up to and including `through`: one written
    /// later, by a retry that failed again, stays.
    pub async fn forget(&self, id: &WorkId, through: u64) -> Result<u64, ApiError> {
        let purge = self
            .stream
            .purge()
            .filter(self.names.dead_letter_subject(id))
            .sequence(through.saturating_add(1));
        Ok(purge.await.map_err(ApiError::unavailable_from)?.purged)
    }

    /// Removes one letter.
    pub async fn delete(&self, sequence: u64) -> Result<(), ApiError> {
        self.stream
            .delete_message(sequence)
            .await
            .map(drop)
            .map_err(ApiError::unavailable_from)
    }

    /// Removes every letter.
    pub async fn purge_all(&self) -> Result<u64, ApiError> {
        Ok(self
            .stream
            .purge()
            .await
            .map_err(ApiError::unavailable_from)?
            .purged)
    }
}

/// What a retry did.
#[derive(Debug)]
pub enum Retried {
    /// The work is queued again, as a new submission.
    Queued,
    /// The work is live already (retried before, or submitted again): its record.
    Live(Box<WorkRecord>),
}

/// How many times a retry reads again when the work changed under it.
const RETRY_ROUNDS: usize = 8;

impl Queue {
    /// Queues the work of `letter` again, accepted by `pod`, and removes the letter.
    pub async fn retry_dead_letter(
        &self,
        letter: &DeadLetter,
        pod: &str,
    ) -> Result<Retried, ApiError> {
        let Some(work) = &letter.work else {
            return Err(ApiError::Conflict {
                code: "unreadable",
                message: "this dead letter is not a work message; it can be purged, not retried"
                    .into(),
            });
        };
        for _ in 0..RETRY_ROUNDS {
            let stored = self.stored(&work.id).await?;
            let live = self
                .live(&stored)
                .filter(|r| r.status != WorkStatus::Failed);
            if let Some(record) = live {
                let record = Box::new(record.clone());
                self.dead_letters()
                    .forget(&work.id, letter.sequence)
                    .await?;
                return Ok(Retried::Live(record));
            }
            if let Some(queued) = self.queued(&work.id, &stored).await? {
                self.dead_letters()
                    .forget(&work.id, letter.sequence)
                    .await?;
                return Ok(Retried::Live(Box::new(queued.pending_record())));
            }
            let message = WorkMessage {
                created_at: Utc::now(),
                accepted_by: pod.to_owned(),
                ..work.clone()
            };
            if let Published::New = self.publish(&message, stored.revision).await? {
                if stored.record.is_some() {
                    self.remove_failed_record(&work.id, stored.revision).await;
                }
                self.dead_letters()
                    .forget(&work.id, letter.sequence)
                    .await?;
                return Ok(Retried::Queued);
            }
            // Queued by a concurrent retry, or taken by a worker meanwhile: read again.
        }
        Err(ApiError::unavailable("the work kept changing; retry"))
    }

    /// Removes the `failed` record at `revision`, so the queued retry reads `pending`.
    /// A worker that took the work meanwhile has written over it, and its write stands;
    /// a failure leaves the `failed` record until a worker takes the retry.
    async fn remove_failed_record(&self, id: &WorkId, revision: u64) {
        match self
            .kv()
            .delete_expect_revision(id.as_str(), Some(revision))
            .await
        {
            Ok(()) => {}
            Err(err) if err.kind() == kv::DeleteErrorKind::WrongLastRevision => {}
            Err(err) => {
                tracing::warn!(%id, %err, "the retried work's failed record stays until a worker takes it")
            }
        }
    }
}
