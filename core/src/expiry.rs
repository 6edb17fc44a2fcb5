//! When a work record expires. A record lives as long as its work is open: `pending` and
//! `working` records never expire, whatever the wait in the queue; a terminal record
//! (`worked`, `failed`, `cancelled`) expires `resultTTL` after it was written. This is
//! JetStream's per-message TTL (`Nats-TTL`, NATS 2.11+) on the results bucket, which
//! has no age limit of its own: an age limit on the bucket would also expire records of
//! work still queued, and a resubmission would then start a second generation of work
//! the first one still owes (docs/reliability.md).

use std::time::Duration;

use crate::WorkStatus;

/// How long the server keeps the marker it writes where a record expired, so watchers
/// see the expiry; the shortest TTL NATS allows.
pub const EXPIRY_MARKER_TTL: Duration = Duration::from_secs(1);

/// How long a record written with `status` lives: `resultTTL` (in whole seconds, rounded
/// up: NATS's granularity) once terminal, else until its next change.
pub fn record_ttl(result_ttl: Duration, status: WorkStatus) -> Option<Duration> {
    let whole_seconds = result_ttl.as_secs() + u64::from(result_ttl.subsec_nanos() > 0);
    status
        .is_terminal()
        .then(|| Duration::from_secs(whole_seconds.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_terminal_records_expire_and_in_whole_seconds() {
        let ttl = Duration::from_millis(2500);
        assert_eq!(record_ttl(ttl, WorkStatus::Pending), None);
        assert_eq!(record_ttl(ttl, WorkStatus::Working), None);
        for status in [
            WorkStatus::Worked,
            WorkStatus::Failed,
            WorkStatus::Cancelled,
        ] {
            assert_eq!(record_ttl(ttl, status), Some(Duration::from_secs(3)));
        }
        let short = Duration::from_millis(200);
        assert_eq!(
            record_ttl(short, WorkStatus::Worked),
            Some(Duration::from_secs(1))
        );
    }
}
