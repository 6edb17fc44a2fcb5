//! The hold of one running attempt on its message and its record, and the fence that
//! stops the attempt once the hold can no longer be proven.
//!
//! The server redelivers a message `ackWait` after the last in-progress ack it received.
//! The heartbeat sends that ack and then renews the attempt's lease in the record with a
//! compare-and-set; the write's answer proves that the connection carried the ack and
//! that no other attempt has taken the record. When no heartbeat has been proven for
//! half of `ackWait` (NATS cut off, the process paused, the server slow), the attempt is
//! *lost*: it stops before the server can hand the message to anyone else, writes
//! nothing and acknowledges nothing. See docs/reliability.md.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use workpool_core::progress::Progress;
use workpool_core::{WorkId, WorkRecord};

use crate::progress::{PROGRESS_WRITE_EVERY, Reporter};
use crate::records::{Records, Renewed};

/// The record as our attempt last wrote it, and its revision.
#[derive(Debug, Clone)]
pub struct Current {
    pub record: WorkRecord,
    pub revision: u64,
}

/// A running attempt's hold; the heartbeat stops when it is dropped.
pub struct Hold {
    current: Arc<Mutex<Current>>,
    /// Where the handler reports progress; the heartbeat writes it.
    reporter: Reporter,
    reported: watch::Receiver<Option<Progress>>,
    lost: CancellationToken,
    cancel_requested: CancellationToken,
    _heartbeat: AbortOnDropHandle<()>,
}

/// What the heartbeat needs.
pub struct Beat {
    pub id: WorkId,
    pub records: Records,
    pub message: Arc<jetstream::Message>,
    pub ack_wait: Duration,
    /// How often to beat: often enough for the fence, and for the record not to expire
    /// (the results bucket forgets a record `resultTTL` after its last write).
    pub every: Duration,
    /// When the first renewal is due, and when the hold is lost unless one was proven
    /// by then: `every` and half of `ackWait` after the attempt's first proof, or, for an
    /// attempt that started unrecorded, its first recording of `working`
    /// ([`workpool_core::unrecorded`]).
    pub first_beat_at: Instant,
    pub first_fence_at: Instant,
}

impl Hold {
    pub fn start(beat: Beat, record: WorkRecord, revision: u64) -> Self {
        let current = Arc::new(Mutex::new(Current { record, revision }));
        let lost = CancellationToken::new();
        let cancel_requested = CancellationToken::new();
        let (reporter, reported) = Reporter::channel();
        let heartbeat = tokio::spawn(heartbeat(
            beat,
            current.clone(),
            reported.clone(),
            lost.clone(),
            cancel_requested.clone(),
        ));
        Self {
            current,
            reporter,
            reported,
            lost,
            cancel_requested,
            _heartbeat: AbortOnDropHandle::new(heartbeat),
        }
    }

    /// The record and revision to write the outcome on, with the latest progress
    /// reported, written or not.
    pub fn current(&self) -> Current {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(progress) = self.reported.borrow().clone() {
            current.record.progress = Some(progress);
        }
        current
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Resolves once the hold is lost: the attempt must stop at once.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Resolves once a DELETE asked (through the record) for the work to stop.
    pub async fn cancel_requested(&self) {
        self.cancel_requested.cancelled().await;
    }
}

/// How often a running attempt beats: four times per `ackWait` (its record never expires
/// while it runs, so `resultTTL` does not matter).
pub fn beat_interval(ack_wait: Duration) -> Duration {
    (ack_wait / 4).max(Duration::from_millis(50))
}

/// How long a hold lasts without a proven heartbeat: half of `ackWait`, leaving the
/// other half for the attempt to stop before the server may redeliver.
pub fn fence(ack_wait: Duration) -> Duration {
    ack_wait / 2
}

async fn heartbeat(
    beat: Beat,
    current: Arc<Mutex<Current>>,
    mut reported: watch::Receiver<Option<Progress>>,
    lost: CancellationToken,
    cancel_requested: CancellationToken,
) {
    let every = beat.every;
    let mut next_beat_at = beat.first_beat_at;
    let mut fenced_at = beat.first_fence_at;
    // Progress is written by the next beat, brought forward to no sooner than
    // `PROGRESS_WRITE_EVERY` after the last one that wrote progress, nor before the
    // first beat of an attempt that started unrecorded (its first write is `working`).
    let mut progress_due_at = beat
        .first_beat_at
        .min(Instant::now() + PROGRESS_WRITE_EVERY);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_beat_at) => {}
            () = tokio::time::sleep_until(fenced_at) => break,
            Ok(()) = reported.changed() => {
                next_beat_at = next_beat_at.min(progress_due_at.max(Instant::now()));
                continue;
            }
        }
        let sent = Instant::now();
        let progress = reported.borrow_and_update().clone();
        if progress.is_some() {
            progress_due_at = sent + PROGRESS_WRITE_EVERY;
        }
        let renew = async {
            // Fire and forget; the renewal below, on the same connection, proves it went.
            beat.message.ack_with(AckKind::Progress).await.ok();
            let Current {
                mut record,
                revision,
            } = current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            record.progress = progress.or(record.progress);
            beat.records.renew(&beat.id, record, revision).await.ok()
        };
        let renewed = tokio::time::timeout_at(fenced_at, renew).await;
        let (record, revision, cancel) = match renewed {
            Err(_) | Ok(Some(Renewed::Lost)) => break,
            Ok(Some(Renewed::Held { record, revision })) => (record, revision, false),
            Ok(Some(Renewed::CancelRequested { record, revision })) => (record, revision, true),
            // Not proven this time: try again sooner, until the fence.
            Ok(None) => {
                next_beat_at = Instant::now() + every / 2;
                continue;
            }
        };
        *current.lock().unwrap_or_else(PoisonError::into_inner) = Current { record, revision };
        fenced_at = sent + fence(beat.ack_wait);
        next_beat_at = Instant::now() + every;
        if cancel {
            cancel_requested.cancel();
        }
    }
    tracing::warn!("the attempt lost its hold on the work (no proven heartbeat); stopping it");
    lost.cancel();
}
