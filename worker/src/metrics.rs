//! The worker's Prometheus metrics.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use workpool_core::message::DEFAULT_TASK;
use workpool_core::metric_labels::BoundedLabel;

/// Distinct task names kept as label values before the rest count as `other`.
const TASK_LABELS: usize = 50;

/// Buckets from a millisecond to ten minutes: builtin work is fast, real work is not.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    started: IntCounterVec,
    worked: IntCounterVec,
    failed: IntCounterVec,
    retried: IntCounterVec,
    skipped: IntCounterVec,
    cancelled: IntCounterVec,
    parked: IntCounterVec,
    handler_duration: HistogramVec,
    latency: HistogramVec,
    pub in_flight: IntGauge,
    tasks: BoundedLabel,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
) -> Result<IntCounterVec, prometheus::Error> {
    let counter = IntCounterVec::new(Opts::new(name, help), &["task"])?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
) -> Result<HistogramVec, prometheus::Error> {
    let histogram = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        &["task"],
    )?;
    registry.register(Box::new(histogram.clone()))?;
    Ok(histogram)
}

impl WorkerMetrics {
    pub fn new(namespace: &str, pool: &str) -> Result<Self, prometheus::Error> {
        let registry = workpool_runtime::metrics::pool_registry(namespace, pool)?;
        let in_flight = IntGauge::new(
            "workpool_work_in_flight",
            "Attempts running in this worker now.",
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let metrics = Self {
            parked: counter(
                &registry,
                "workpool_work_parked_total",
                "Deliveries put aside because their group was at a limit, by task.",
            )?,
            started: counter(
                &registry,
                "workpool_work_started_total",
                "Attempts started, by task.",
            )?,
            worked: counter(
                &registry,
                "workpool_work_worked_total",
                "Work finished successfully, by task.",
            )?,
            failed: counter(
                &registry,
                "workpool_work_failed_total",
                "Work failed for good (dead-lettered), by task.",
            )?,
            retried: counter(
                &registry,
                "workpool_work_retried_total",
                "Failed attempts that will be retried, by task.",
            )?,
            skipped: counter(
                &registry,
                "workpool_work_skipped_total",
                "Deliveries skipped because the work was already finished or cancelled, by task.",
            )?,
            cancelled: counter(
                &registry,
                "workpool_work_cancelled_total",
                "Work cancelled through DELETE, by task.",
            )?,
            handler_duration: histogram(
                &registry,
                "workpool_handler_duration_seconds",
                "Time one attempt's handler ran.",
            )?,
            latency: histogram(
                &registry,
                "workpool_work_latency_seconds",
                "Time from acceptance by the api to the end of the work (worked or failed).",
            )?,
            in_flight,
            registry,
            tasks: BoundedLabel::new(TASK_LABELS),
        };
        // Series for the default task exist from the start at zero, so rate() and the
        // dashboard see them before the first failure or retry.
        let task = [DEFAULT_TASK];
        for counter in [
            &metrics.started,
            &metrics.worked,
            &metrics.failed,
            &metrics.retried,
            &metrics.skipped,
            &metrics.cancelled,
            &metrics.parked,
        ] {
            counter.with_label_values(&task);
        }
        metrics.handler_duration.with_label_values(&task);
        metrics.latency.with_label_values(&task);
        Ok(metrics)
    }

    fn task(&self, task: &str) -> String {
        self.tasks.get(task)
    }

    pub fn started(&self, task: &str) {
        self.started
            .with_label_values(&[self.task(task).as_str()])
            .inc();
    }

    pub fn worked(&self, task: &str, latency_seconds: f64) {
        let task = self.task(task);
        self.worked.with_label_values(&[task.as_str()]).inc();
        self.latency
            .with_label_values(&[task.as_str()])
            .observe(latency_seconds);
    }

    pub fn failed(&self, task: &str, latency_seconds: f64) {
        let task = self.task(task);
        self.failed.with_label_values(&[task.as_str()]).inc();
        self.latency
            .with_label_values(&[task.as_str()])
            .observe(latency_seconds);
    }

    pub fn retried(&self, task: &str) {
        self.retried
            .with_label_values(&[self.task(task).as_str()])
            .inc();
    }

    pub fn parked(&self, task: &str) {
        self.parked
            .with_label_values(&[self.task(task).as_str()])
            .inc();
    }

    pub fn skipped(&self, task: &str) {
        self.skipped
            .with_label_values(&[self.task(task).as_str()])
            .inc();
    }

    pub fn cancelled(&self, task: &str) {
        self.cancelled
            .with_label_values(&[self.task(task).as_str()])
            .inc();
    }

    /// Totals over all tasks, for the cluster view.
    pub fn counts(&self) -> workpool_core::cluster::WorkerCounts {
        let total = |counter: &IntCounterVec| {
            let families = prometheus::core::Collector::collect(counter);
            families
                .iter()
                .flat_map(|family| family.get_metric())
                .map(|metric| metric.get_counter().get_value() as u64)
                .sum()
        };
        workpool_core::cluster::WorkerCounts {
            started: total(&self.started),
            worked: total(&self.worked),
            failed: total(&self.failed),
            cancelled: total(&self.cancelled),
        }
    }

    pub fn handler_ran(&self, task: &str, seconds: f64) {
        self.handler_duration
            .with_label_values(&[self.task(task).as_str()])
            .observe(seconds);
    }

    /// The registry the health server's `/metrics` renders.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
