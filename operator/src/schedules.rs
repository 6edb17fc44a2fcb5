//! Queues the ticks of a pool's schedules as delayed work (docs/operator.md,
//! "Schedules"). Every reconcile queues the ticks due within [`AHEAD`]; a tick queued
//! twice (by a later reconcile, another operator replica, a retry) is the same work on
//! the same subject, which the stream keeps once, and the workers move it to the queue
//! when it is due.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use workpool_core::PoolNames;
use workpool_core::crd::ScheduleStatus;
use workpool_core::message::{RECORD_REVISION_HEADER, WorkMessage};
use workpool_core::schedule::Schedule;
use workpool_runtime::publish_errors::is_subject_taken;

/// How far ahead ticks are queued: several times the wait between reconciles of a pool
/// with schedules ([`crate::requeue::RESYNC_AUTOSCALED`]), so ticks are waiting in NATS
/// before they are due even when a reconcile or two is late.
pub const AHEAD: Duration = Duration::from_secs(60);
/// The most ticks one schedule queues per reconcile.
const MOST_AHEAD: usize = 120;

/// A tick that could not be queued.
#[derive(Debug, thiserror::Error)]
#[error("schedule {schedule}: the tick at {tick} was not queued: {source}")]
pub struct TickNotQueued {
    pub schedule: String,
    pub tick: DateTime<Utc>,
    #[source]
    pub source: async_nats::Error,
}

/// Queues each schedule's ticks due after `now` and within [`AHEAD`]; says where each
/// schedule stands.
pub async fn queue_ticks(
    js: &jetstream::Context,
    names: &PoolNames,
    pool_uid: &str,
    schedules: &[Schedule],
    now: DateTime<Utc>,
) -> Result<Vec<ScheduleStatus>, TickNotQueued> {
    let until = now + chrono::Duration::from_std(AHEAD).unwrap_or_default();
    let mut statuses = Vec::with_capacity(schedules.len());
    for schedule in schedules {
        let ticks = schedule.ticks(now, until, MOST_AHEAD);
        for tick in &ticks {
            let message = schedule.tick_message(names, pool_uid, *tick);
            queue_tick(js, names, &message)
                .await
                .map_err(|source| TickNotQueued {
                    schedule: schedule.name().to_owned(),
                    tick: *tick,
                    source,
                })?;
        }
        let next = ticks.first().copied().or_else(|| schedule.next(now));
        statuses.push(ScheduleStatus {
            name: schedule.name().to_owned(),
            next: next.map(|tick| tick.to_rfc3339()),
            next_id: next.map(|tick| schedule.tick_id(names, pool_uid, tick).to_string()),
            queued_ahead: u32::try_from(ticks.len()).unwrap_or(u32::MAX),
        });
    }
    Ok(statuses)
}

/// Publishes a tick's delayed work, accepted on no record (revision 0); a tick already
/// waiting is refused as a duplicate or as a second message on its subject, and that is
/// success.
async fn queue_tick(
    js: &jetstream::Context,
    names: &PoolNames,
    message: &WorkMessage,
) -> Result<(), async_nats::Error> {
    let subject = names.delayed_subject(&message.task, &message.id);
    let publish = jetstream::message::PublishMessage::build()
        .payload(message.to_json().into())
        .message_id(format!("{}.0", message.id).as_str())
        .header(RECORD_REVISION_HEADER, "0");
    match js.send_publish(subject, publish).await?.await {
        Ok(_) => Ok(()),
        Err(err) if is_subject_taken(&err) => Ok(()),
        Err(err) => Err(err.into()),
    }
}
