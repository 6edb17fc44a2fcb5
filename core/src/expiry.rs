//! When a work record expires. A record lives as long as its work is open: `working`
//! records never expire, whatever the wait in the queue. A terminal record (`worked`,
//! `failed`, `cancelled`) is *expired* `resultTTL` after it was written: GET answers
//! `404` and the same content runs again as a new submission. The bucket *keeps* it
//! [`KEPT_PAST_EXPIRY`] longer (JetStream's per-message TTL, `Nats-TTL`, NATS 2.11+; the
//! bucket has no age limit of its own). While it is kept, a redelivery of its message (a
//! worker died between writing the outcome and acking) finds it and runs nothing; with no
//! `pending` record, a delivery that finds no record at all is fresh work
//! (docs/reliability.md#a-record-outlives-its-expiry).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{WorkRecord, WorkStatus};

/// How long the server keeps the marker it writes where a record expired, so watchers
/// see the expiry; the shortest TTL NATS allows.
pub const EXPIRY_MARKER_TTL: Duration = Duration::from_secs(1);

/// How long the bucket keeps a terminal record after it expired, for redeliveries of
/// messages whose ack was lost: far longer than a redelivery takes while any worker
/// pulls (`ackWait`), and more than the stream's dedupe window.
pub const KEPT_PAST_EXPIRY: Duration = Duration::from_secs(600);

/// How long the bucket keeps a record written with `status`: `resultTTL` plus
/// [`KEPT_PAST_EXPIRY`] (in whole seconds, rounded up: NATS's granularity) once
/// terminal, else until its next change.
pub fn record_ttl(result_ttl: Duration, status: WorkStatus) -> Option<Duration> {
    let kept = result_ttl.saturating_add(KEPT_PAST_EXPIRY);
    let whole_seconds = kept.as_secs() + u64::from(kept.subsec_nanos() > 0);
    status
        .is_terminal()
        .then(|| Duration::from_secs(whole_seconds))
}

/// Whether `record` has expired at `now`: terminal, and written its ttl ago (the one
/// its submission asked for, else the pool's `resultTTL`). An expired record is answered
/// as gone, and the same content is a new submission.
pub fn is_expired(record: &WorkRecord, result_ttl: Duration, now: DateTime<Utc>) -> bool {
    let ttl = record.ttl.unwrap_or(result_ttl);
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    record.status.is_terminal()
        && record
            .updated_at
            .checked_add_signed(ttl)
            .is_some_and(|end| end <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_terminal_records_expire_and_are_kept_past_it_in_whole_seconds() {
        let ttl = Duration::from_millis(2500);
        assert_eq!(record_ttl(ttl, WorkStatus::Pending), None);
        assert_eq!(record_ttl(ttl, WorkStatus::Working), None);
        for status in [
            WorkStatus::Worked,
            WorkStatus::Failed,
            WorkStatus::Cancelled,
        ] {
            assert_eq!(record_ttl(ttl, status), Some(Duration::from_secs(603)));
        }
    }

    #[test]
    fn a_terminal_record_expires_result_ttl_after_its_write() {
        let now = Utc::now();
        let mut record = WorkRecord::pending("default", None, "api-0", now);
        let ttl = Duration::from_secs(10);
        let later = now + chrono::Duration::seconds(10);
        assert!(!is_expired(&record, ttl, later), "pending never expires");
        record.advance(WorkStatus::Worked, now).expect("forward");
        assert!(!is_expired(
            &record,
            ttl,
            later - chrono::Duration::milliseconds(1)
        ));
        assert!(is_expired(&record, ttl, later));
        assert!(!is_expired(&record, Duration::MAX, later), "an endless TTL");
    }
}
