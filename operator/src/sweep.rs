//! The repair of stranded `pending` records (`workpool_runtime::repair`): records the api
//! wrote whose work never reached the stream. Run from the reconcile, which already talks
//! to the pool's NATS, at most once a minute per pool.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use kube::runtime::events::EventType;
use workpool_core::crd::WorkPool;
use workpool_core::{PoolNames, PoolSpec};
use workpool_runtime::repair::sweep_stranded;

use crate::controller::{Context, key, publish};

/// How often a pool's bucket is swept, at most.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How old an untouched api record must be to count as stranded: far longer than any
/// publish of the api may take (its ack times out after seconds).
pub const STRANDED_AFTER: Duration = Duration::from_secs(60);
/// Bounds the whole sweep, so a slow NATS holds up the reconcile only this long.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(30);

/// When each pool was last swept.
#[derive(Debug)]
pub struct SweepThrottle {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl SweepThrottle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::default(),
        }
    }

    /// Whether the pool is due for a sweep at `now`; if so, it counts as swept then, so a
    /// failing sweep is not retried on every reconcile either.
    pub fn due(&self, pool: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.get(pool) {
            Some(at) if now.saturating_duration_since(*at) < self.every => false,
            _ => {
                last.insert(pool.to_owned(), now);
                true
            }
        }
    }

    /// Drops a deleted pool.
    pub fn forget(&self, pool: &str) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pool);
    }
}

/// Sweeps the pool's bucket if it is due. Never fails the reconcile: a failed sweep is
/// logged and tried again a minute later.
pub async fn sweep_if_due(
    ctx: &Context,
    pool: &WorkPool,
    js: &jetstream::Context,
    names: &PoolNames,
    spec: &PoolSpec,
) {
    let pool_key = key(pool);
    if !ctx.sweeps.due(&pool_key, Instant::now()) {
        return;
    }
    let swept = tokio::time::timeout(
        SWEEP_TIMEOUT,
        sweep_stranded(js, names, spec, STRANDED_AFTER),
    )
    .await;
    let swept = match swept {
        Ok(Ok(swept)) => swept,
        Ok(Err(error)) => {
            tracing::warn!(pool = %pool_key, %error, "sweep of stranded pending records failed");
            return;
        }
        Err(_) => {
            tracing::warn!(pool = %pool_key, timeout = ?SWEEP_TIMEOUT, "sweep of stranded pending records timed out");
            return;
        }
    };
    tracing::info!(
        pool = %pool_key, scanned = swept.scanned, stranded = swept.stranded,
        repaired = swept.repaired, "swept stranded pending records"
    );
    if swept.repaired > 0 {
        ctx.metrics
            .stranded_repaired(&names.namespace, &names.pool, swept.repaired);
        let note = format!(
            "deleted {} pending record(s) older than {}s whose work never reached the queue (an api stopped between record and publish); a retry of the same POST starts afresh",
            swept.repaired,
            STRANDED_AFTER.as_secs()
        );
        publish(
            ctx,
            pool,
            EventType::Normal,
            "StrandedRepaired",
            "Repair",
            note,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_swept_at_most_once_per_period() {
        let throttle = SweepThrottle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert!(throttle.due("ns/a", start), "the first sweep runs at once");
        assert!(!throttle.due("ns/a", start + Duration::from_secs(1)));
        assert!(!throttle.due("ns/a", start + Duration::from_secs(59)));
        assert!(throttle.due("ns/b", start), "pools are throttled apart");
        assert!(throttle.due("ns/a", start + Duration::from_secs(60)));
        assert!(
            !throttle.due("ns/a", start + Duration::from_secs(61)),
            "the period counts from the last sweep"
        );
        throttle.forget("ns/a");
        assert!(throttle.due("ns/a", start + Duration::from_secs(62)));
        // A clock reading before the last sweep (never with Instant, but harmless).
        assert!(!throttle.due(
            "ns/b",
            start.checked_sub(Duration::from_secs(1)).unwrap_or(start)
        ));
    }
}
