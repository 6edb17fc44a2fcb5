//! The operator's Prometheus metrics, with a drop timer so no early return forgets to
//! observe a reconcile's duration.

use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Debug)]
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
    pub leader: IntGauge,
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
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
        })
    }

    /// Observes the reconcile's duration when the returned guard is dropped.
    pub fn timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            histogram: &self.duration,
            started: Instant::now(),
        }
    }

    pub fn reconciled(&self) {
        self.reconciles.with_label_values(&["ok"]).inc();
    }

    pub fn failed(&self, category: &str) {
        self.reconciles.with_label_values(&["error"]).inc();
        self.errors.with_label_values(&[category]).inc();
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}
