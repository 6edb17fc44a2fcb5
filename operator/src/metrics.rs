//! The operator's Prometheus metrics. A reconcile's duration is observed by a drop guard
//! ([`HistogramTimer`]), so no early return forgets it.

use prometheus::{
    Histogram, HistogramOpts, HistogramTimer, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::queue::QueueFigures;

#[derive(Debug)]
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
    pub leader: IntGauge,
    pending: IntGaugeVec,
    in_flight: IntGaugeVec,
    dead_letters: IntGaugeVec,
    scheduled: IntGaugeVec,
    oldest_pending_age: IntGaugeVec,
}

fn pool_gauge(
    registry: &Registry,
    name: &str,
    help: &str,
) -> Result<IntGaugeVec, prometheus::Error> {
    let gauge = IntGaugeVec::new(Opts::new(name, help), &["namespace", "pool"])?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

impl OperatorMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "workpool_operator_reconciles_total",
                "Reconciles of WorkPools, by result.",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "workpool_operator_reconcile_errors_total",
                "Failed reconciles, by error category.",
            ),
            &["category"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "workpool_operator_reconcile_duration_seconds",
                "Time one reconcile took.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let leader = IntGauge::new(
            "workpool_operator_leader",
            "1 while this replica holds the leader lease.",
        )?;
        // Every result and error category starts at zero, so rate() and alerts see them.
        for result in ["ok", "error"] {
            reconciles.with_label_values(&[result]);
        }
        for category in crate::error::Error::CATEGORIES {
            errors.with_label_values(&[category]);
        }
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        workpool_runtime::metrics::register_process_collector(&registry)?;
        Ok(Self {
            pending: pool_gauge(
                &registry,
                "workpool_queue_pending",
                "Work queued and not yet delivered to a worker, by pool (read at each reconcile).",
            )?,
            in_flight: pool_gauge(
                &registry,
                "workpool_queue_in_flight",
                "Work delivered to workers and not yet acknowledged, by pool.",
            )?,
            dead_letters: pool_gauge(
                &registry,
                "workpool_queue_dead_letters",
                "Work in the pool's dead-letter subject (failed for good), by pool.",
            )?,
            scheduled: pool_gauge(
                &registry,
                "workpool_queue_scheduled",
                "Delayed work (run_at, delay, schedules) waiting for its time, by pool.",
            )?,
            oldest_pending_age: pool_gauge(
                &registry,
                "workpool_queue_oldest_pending_age_seconds",
                "Age of the oldest work not yet delivered to a worker (0 when none), by pool.",
            )?,
            registry,
            reconciles,
            errors,
            duration,
            leader,
        })
    }

    /// Observes the reconcile's duration when the returned guard is dropped.
    pub fn timer(&self) -> HistogramTimer {
        self.duration.start_timer()
    }

    pub fn reconciled(&self) {
        self.reconciles.with_label_values(&["ok"]).inc();
    }

    pub fn failed(&self, category: &str) {
        self.reconciles.with_label_values(&["error"]).inc();
        self.errors.with_label_values(&[category]).inc();
    }

    /// Records a pool's queue figures; `None` (NATS unreachable) drops them rather than
    /// leaving stale values that look current.
    pub fn queue(&self, namespace: &str, pool: &str, figures: Option<QueueFigures>) {
        match figures {
            Some(figures) => {
                let age = figures.oldest_pending.map_or(0, |queued_at| {
                    (chrono::Utc::now() - queued_at).num_seconds().max(0)
                });
                let values = [
                    figures.pending,
                    figures.in_flight,
                    figures.dead_letters,
                    figures.scheduled,
                    u64::try_from(age).unwrap_or(0),
                ];
                for (gauge, value) in self.gauges().into_iter().zip(values) {
                    gauge
                        .with_label_values(&[namespace, pool])
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                }
            }
            None => self.forget(namespace, pool),
        }
    }

    fn gauges(&self) -> [&IntGaugeVec; 5] {
        [
            &self.pending,
            &self.in_flight,
            &self.dead_letters,
            &self.scheduled,
            &self.oldest_pending_age,
        ]
    }

    /// Drops a pool's series (the pool is gone).
    pub fn forget(&self, namespace: &str, pool: &str) {
        for gauge in self.gauges() {
            let _ = gauge.remove_label_values(&[namespace, pool]);
        }
    }

    /// The registry the health server's `/metrics` renders.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    #[cfg(test)]
    fn render(&self) -> String {
        workpool_runtime::metrics::render(&self.registry).expect("metrics encode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(series))
    }

    #[test]
    fn a_reconcile_is_timed_once_its_timer_is_dropped() {
        let metrics = OperatorMetrics::new().expect("metrics");
        let count = "workpool_operator_reconcile_duration_seconds_count";
        assert_eq!(line(&metrics.render(), count), Some(&*format!("{count} 0")));
        {
            let _timer = metrics.timer();
        }
        assert_eq!(line(&metrics.render(), count), Some(&*format!("{count} 1")));
    }

    #[test]
    fn every_error_category_starts_at_zero() {
        let metrics = OperatorMetrics::new().expect("metrics");
        let text = metrics.render();
        for category in crate::error::Error::CATEGORIES {
            let series =
                format!("workpool_operator_reconcile_errors_total{{category=\"{category}\"}}");
            assert_eq!(line(&text, &series), Some(&*format!("{series} 0")));
        }
        metrics.failed("NatsUnreachable");
        let series = "workpool_operator_reconcile_errors_total{category=\"NatsUnreachable\"}";
        assert_eq!(
            line(&metrics.render(), series),
            Some(&*format!("{series} 1"))
        );
    }
}
