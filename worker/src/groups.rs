//! Group limits (docs/worker.md, "Group limits"). Before a job of a group starts, its
//! worker admits it against the group's state in the results bucket (one
//! compare-and-set); after the attempt it frees the slot. Work its group cannot take now
//! is put aside as delayed work due when the group may take it, so it holds no place in
//! the queue of other work: a busy group delays only itself.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, kv};
use chrono::Utc;
use workpool_core::group::{GroupState, Refused, park_for, state_key};
use workpool_core::message::{RECORD_REVISION_HEADER, WorkMessage};
use workpool_runtime::publish_errors::is_subject_taken;

use crate::Worker;
use crate::process::acknowledge;

/// Compare-and-set rounds before an admission gives up for now.
const CAS_ROUNDS: usize = 16;
/// How soon work whose group could not be read or written is tried again.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(1);
/// How soon work is put aside again when its previous copy, just due, is still there.
const PREVIOUS_COPY_RETRY: Duration = Duration::from_millis(200);

/// A slot of a group held by one job, freed after its attempt.
pub(crate) struct Slot {
    key: String,
    id: String,
}

/// What to do with a delivered message before it runs.
pub(crate) enum Admission {
    /// Run it; free the slot (if its group limits concurrency) afterwards.
    Run(Option<Slot>),
    /// It was put aside or handed back: nothing more to do now.
    Done,
}

#[derive(Debug, thiserror::Error)]
enum GroupError {
    #[error("reading group state: {0}")]
    Read(#[from] kv::EntryError),
    #[error("writing group state: {0}")]
    Write(#[source] kv::UpdateError),
    #[error("group state kept changing")]
    Contended,
}

impl Worker {
    /// Admits `work` within its group's limits, or puts it aside.
    pub(crate) async fn admit(
        &self,
        message: &jetstream::Message,
        work: &WorkMessage,
    ) -> Admission {
        let limits = &self.config.spec.groups;
        let Some(group) = work.group.as_deref().filter(|_| limits.any()) else {
            return Admission::Run(None);
        };
        let key = state_key(group);
        match self.try_admit(&key, work.id.as_str()).await {
            Ok(Ok(())) => Admission::Run(limits.concurrency.map(|_| Slot {
                key,
                id: work.id.to_string(),
            })),
            Ok(Err(refused)) => {
                self.park(message, work, refused).await;
                Admission::Done
            }
            Err(err) => {
                tracing::warn!(%err, group, "group limits not checked; trying again");
                acknowledge(message, AckKind::Nak(Some(UNREACHABLE_RETRY))).await;
                Admission::Done
            }
        }
    }

    /// Frees the slot `slot` holds (its hold ends by itself should this fail).
    pub(crate) async fn release(&self, slot: Slot) {
        for _ in 0..CAS_ROUNDS {
            let Ok((mut state, revision)) = self.group_state(&slot.key).await else {
                break;
            };
            if !state.release(&slot.id) {
                return;
            }
            match self.write_group_state(&slot.key, &state, revision).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(err) => {
                    tracing::warn!(%err, "group slot not freed; it frees when its hold ends");
                    return;
                }
            }
        }
    }

    async fn try_admit(&self, key: &str, id: &str) -> Result<Result<(), Refused>, GroupError> {
        for _ in 0..CAS_ROUNDS {
            let (mut state, revision) = self.group_state(key).await?;
            let hold = self.slot_hold();
            if let Err(refused) = state.admit(id, Utc::now(), &self.config.spec.groups, hold) {
                return Ok(Err(refused));
            }
            if self.write_group_state(key, &state, revision).await? {
                return Ok(Ok(()));
            }
        }
        Err(GroupError::Contended)
    }

    /// The longest a job keeps its slot if its worker never frees it: an attempt's
    /// timeout, and the time its message takes to come back after a crash.
    fn slot_hold(&self) -> Duration {
        let worker = &self.config.spec.worker;
        worker.timeout + worker.ack_wait
    }

    async fn group_state(&self, key: &str) -> Result<(GroupState, u64), GroupError> {
        Ok(match self.records.store().kv.entry(key).await? {
            Some(entry) => {
                let state = (entry.operation == kv::Operation::Put)
                    .then(|| serde_json::from_slice(&entry.value).ok())
                    .flatten()
                    .unwrap_or_default();
                (state, entry.revision)
            }
            None => (GroupState::default(), 0),
        })
    }

    /// Compare-and-set of a group's state; false if another worker wrote it first. The
    /// state expires once nothing in it can matter any more.
    async fn write_group_state(
        &self,
        key: &str,
        state: &GroupState,
        revision: u64,
    ) -> Result<bool, GroupError> {
        let value = serde_json::to_vec(state).unwrap_or_default().into();
        let ttl = self.config.spec.groups.state_ttl(self.slot_hold());
        match self
            .records
            .store()
            .update_expiring(key, value, revision, ttl)
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(err) => Err(GroupError::Write(err)),
        }
    }

    /// Puts refused work aside: a delayed copy, due when its group may take it, then
    /// the acknowledgement of this one, only once a new copy is stored. Dying between the
    /// two leaves this message, which is admitted or put aside again (a second copy).
    ///
    /// The copy's message id is new on every try, never a duplicate: a duplicate would
    /// look stored while its original may have come due and gone already. A copy refused
    /// because the delayed subject still holds the previous one (just due, its
    /// acknowledgement not yet in) leaves this message to be tried again shortly.
    async fn park(&self, message: &jetstream::Message, work: &WorkMessage, refused: Refused) {
        let now = Utc::now();
        let wait = park_for(refused, work.parked, now);
        let parked = WorkMessage {
            run_at: Some(now + chrono::Duration::from_std(wait).unwrap_or_default()),
            parked: work.parked.saturating_add(1),
            ..work.clone()
        };
        let revision = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(RECORD_REVISION_HEADER))
            .map_or("0", |value| value.as_str());
        let publish = jetstream::message::PublishMessage::build()
            .payload(parked.to_json().into())
            .message_id(
                format!(
                    "{}.{revision}.park.{}.{}",
                    work.id,
                    parked.parked,
                    now.timestamp_micros()
                )
                .as_str(),
            )
            .header(RECORD_REVISION_HEADER, revision);
        let subject = self.config.names.delayed_subject(&work.task, &work.id);
        let stored = match self.js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.map_err(|err| {
                let previous_copy = is_subject_taken(&err);
                (async_nats::Error::from(err), previous_copy)
            }),
            Err(err) => Err((async_nats::Error::from(err), false)),
        };
        match stored {
            Ok(_) => {
                tracing::debug!(?refused, ?wait, "group at its limit: work put aside");
                self.metrics.parked(&work.task);
                acknowledge(message, AckKind::Ack).await;
            }
            Err((_, true)) => {
                tracing::debug!("the previous copy is still waiting to go; trying again");
                acknowledge(message, AckKind::Nak(Some(PREVIOUS_COPY_RETRY))).await;
            }
            Err((err, false)) => {
                tracing::warn!(%err, "work not put aside; trying again");
                acknowledge(message, AckKind::Nak(Some(UNREACHABLE_RETRY))).await;
            }
        }
    }
}
