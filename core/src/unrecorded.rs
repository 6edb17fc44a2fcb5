//! How long an attempt may run before its start is recorded. The first attempt of fresh
//! work (a first delivery, moments after the worker's pull) runs at once, without
//! writing `working` first: a job that ends within [`first_record_after`] costs one
//! write, its outcome, instead of two. An attempt still running then records `working`
//! with its lease, as every other attempt does before it starts. One that cannot do so
//! by [`unrecorded_run_limit`] after its pull stops (docs/reliability.md).
//!
//! The server may redeliver a message no earlier than `ackWait` after it delivered it,
//! and it delivered it after the worker's pull; the limit is at most half of `ackWait`, so
//! an unrecorded attempt is over before anyone else can start one. A DELETE that finds
//! work `pending` waits the limit out after cancelling, so it never answers while an
//! unrecorded attempt may still run.
//!
//! Keyed work never starts unrecorded. That DELETE also removes the message, and the
//! server then frees the key's partition at once: its next job would start while the
//! unrecorded attempt ran on. Recorded first, a running keyed job is `working`, and the
//! DELETE stops it through its worker instead.

use std::time::Duration;

/// The longest an attempt runs unrecorded, whatever `ackWait`.
pub const UNRECORDED_RUN_MAX: Duration = Duration::from_millis(500);

/// How long after its pull an unrecorded attempt must have recorded `working`, or stop.
pub fn unrecorded_run_limit(ack_wait: Duration) -> Duration {
    UNRECORDED_RUN_MAX.min(ack_wait / 2)
}

/// When, after its pull, an attempt still running records `working`: halfway to the
/// limit, leaving the other half for that write.
pub fn first_record_after(ack_wait: Duration) -> Duration {
    unrecorded_run_limit(ack_wait) / 2
}

/// Whether a delivery pulled `since_pull` ago may start unrecorded: unkeyed work only,
/// and only while a quarter of the limit has passed, so the attempt has time to run.
pub fn may_start_unrecorded(keyed: bool, since_pull: Duration, ack_wait: Duration) -> bool {
    !keyed && since_pull < unrecorded_run_limit(ack_wait) / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_half_of_ack_wait_at_most() {
        assert_eq!(
            unrecorded_run_limit(Duration::from_secs(30)),
            UNRECORDED_RUN_MAX
        );
        assert_eq!(
            unrecorded_run_limit(Duration::from_millis(600)),
            Duration::from_millis(300)
        );
        let ack_wait = Duration::from_secs(30);
        assert!(first_record_after(ack_wait) < unrecorded_run_limit(ack_wait));
    }

    #[test]
    fn only_a_delivery_fresh_from_its_pull_starts_unrecorded() {
        let ack_wait = Duration::from_secs(30);
        assert!(may_start_unrecorded(
            false,
            Duration::from_millis(10),
            ack_wait
        ));
        assert!(!may_start_unrecorded(
            false,
            Duration::from_millis(125),
            ack_wait
        ));
        assert!(!may_start_unrecorded(
            false,
            Duration::from_secs(2),
            ack_wait
        ));
    }

    #[test]
    fn keyed_work_always_records_its_start() {
        let ack_wait = Duration::from_secs(30);
        assert!(!may_start_unrecorded(true, Duration::ZERO, ack_wait));
    }
}
