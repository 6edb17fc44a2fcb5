//! When a pool is reconciled again: a healthy pool on a resync interval, a pool NATS
//! refused only once it changes, and a failed reconcile after a backoff that grows with
//! the failures in a row.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kube::runtime::controller::Action;

use crate::error::Error;
use crate::queue::QueueFigures;

/// How often a healthy pool is looked at again (queue figures, autoscaling).
pub const RESYNC: Duration = Duration::from_secs(30);
pub const RESYNC_AUTOSCALED: Duration = Duration::from_secs(10);
/// Resyncs are spread so that pools that are not autoscaled take at most ten a second
/// between them: with 1,000 pools, each is looked at every 100 s, not every 30 s (which
/// was 33 reconciles a second, each reading NATS and the apiserver).
pub const RESYNC_PER_POOL: Duration = Duration::from_millis(100);
/// First and longest delay before retrying a failed reconcile.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(2);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The retry interval while a pool's NATS is unreachable.
pub const NATS_RETRY: Duration = Duration::from_secs(5);

/// Failed reconciles in a row, per pool (`namespace/name`). Only ever locked briefly and
/// never across an await, by the sync `error_policy` and after a reconcile.
#[derive(Debug, Default)]
pub struct Failures {
    counts: Mutex<HashMap<String, u32>>,
}

impl Failures {
    /// Counts one more failure of `pool`; returns how many in a row that makes.
    pub fn record(&self, pool: &str) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(pool.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Ends the row of failures of `pool` (it reconciled, or is gone).
    pub fn forget(&self, pool: &str) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pool);
    }
}

/// How long after its `failures`-th failure in a row a pool is looked at again. An
/// unreachable NATS is retried at a short fixed interval: the outage ends without any
/// change to the pool, and the pool should be Ready again within seconds of NATS coming
/// back, not after a backoff that grew while it was down.
pub fn retry_after(error: &Error, failures: u32) -> Duration {
    if matches!(error, Error::NatsUnreachable(_)) {
        return NATS_RETRY;
    }
    let exponent = failures.saturating_sub(1).min(10);
    (BACKOFF_FIRST * 2u32.pow(exponent)).min(BACKOFF_MAX)
}

/// How long a healthy pool waits for its next look, among `pools` pools; `often` for a
/// pool that is autoscaled or has schedules.
pub fn resync_after(pools: usize, often: bool) -> Duration {
    if often {
        return RESYNC_AUTOSCALED;
    }
    let spread = RESYNC_PER_POOL.saturating_mul(u32::try_from(pools).unwrap_or(u32::MAX));
    RESYNC.max(spread)
}

/// What follows a reconcile that applied the children and the status, from what the
/// queue said: a resync when it answered, no retry while NATS refuses the spec (only a
/// change of the pool can help), else the error for `error_policy` to retry.
pub fn after_reconcile(
    figures: Result<QueueFigures, Error>,
    resync: Duration,
) -> Result<Action, Error> {
    match figures {
        Ok(_) => Ok(Action::requeue(resync)),
        Err(err) if err.is_permanent() => Ok(Action::await_change()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{refused, unreachable};

    #[test]
    fn an_unreachable_nats_is_retried_at_a_fixed_interval_however_long_it_lasts() {
        for failures in [1, 5, 50] {
            assert_eq!(retry_after(&unreachable(), failures), NATS_RETRY);
        }
    }

    #[test]
    fn other_failures_back_off_exponentially_up_to_the_maximum() {
        let kube = Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded);
        let delays: Vec<u64> = (1..=9).map(|n| retry_after(&kube, n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(retry_after(&kube, 0), BACKOFF_FIRST, "as if the first");
        assert_eq!(retry_after(&kube, u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn failures_count_per_pool_until_forgotten() {
        let failures = Failures::default();
        assert_eq!(failures.record("ns/a"), 1);
        assert_eq!(failures.record("ns/a"), 2);
        assert_eq!(failures.record("ns/b"), 1, "pools count apart");
        failures.forget("ns/a");
        assert_eq!(failures.record("ns/a"), 1, "a success ends the row");
        assert_eq!(failures.record("ns/b"), 2);
    }

    #[test]
    fn a_healthy_pool_is_resynced_sooner_when_autoscaled_and_later_among_many() {
        assert_eq!(resync_after(1, false), RESYNC);
        assert_eq!(resync_after(1, true), RESYNC_AUTOSCALED);
        assert_eq!(resync_after(1_000, false), Duration::from_secs(100));
        assert_eq!(resync_after(1_000, true), RESYNC_AUTOSCALED);
        let ok = Ok(QueueFigures::default());
        assert_eq!(
            after_reconcile(ok, RESYNC).ok(),
            Some(Action::requeue(RESYNC))
        );
    }

    #[test]
    fn a_refused_spec_waits_for_a_change_and_an_outage_is_retried() {
        assert_eq!(
            after_reconcile(Err(refused()), RESYNC).ok(),
            Some(Action::await_change())
        );
        let retried = after_reconcile(Err(unreachable()), RESYNC);
        assert!(matches!(retried, Err(Error::NatsUnreachable(_))));
    }
}
