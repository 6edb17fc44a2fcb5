//! The api's Prometheus metrics.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use workpool_core::message::DEFAULT_TASK;
use workpool_core::metric_labels::BoundedLabel;

/// Distinct task names kept as label values before the rest count as `other`.
const TASK_LABELS: usize = 50;

#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    accepted: IntCounterVec,
    duplicates: IntCounterVec,
    requests: IntCounterVec,
    duration: HistogramVec,
    cancelled: IntCounterVec,
    tasks: BoundedLabel,
}

impl ApiMetrics {
    pub fn new(namespace: &str, pool: &str) -> Result<Self, prometheus::Error> {
        let registry = workpool_runtime::metrics::pool_registry(namespace, pool)?;
        let accepted = IntCounterVec::new(
            Opts::new(
                "workpool_work_accepted_total",
                "Work accepted (202) by the api, by task.",
            ),
            &["task"],
        )?;
        let duplicates = IntCounterVec::new(
            Opts::new(
                "workpool_work_duplicates_total",
                "Submissions answered with already known work, by task.",
            ),
            &["task"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "workpool_api_requests_total",
                "HTTP requests answered, by route, method and status code.",
            ),
            &["route", "method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "workpool_api_request_duration_seconds",
                "Time to answer an HTTP request.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
                60.0,
            ]),
            &["route", "method"],
        )?;
        let cancelled = IntCounterVec::new(
            Opts::new(
                "workpool_work_cancelled_total",
                "Work cancelled through DELETE, by task.",
            ),
            &["task"],
        )?;
        registry.register(Box::new(cancelled.clone()))?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        // Series for the default task exist from the start at zero (see the worker's).
        for counter in [&accepted, &duplicates, &cancelled] {
            counter.with_label_values(&[DEFAULT_TASK]);
        }
        Ok(Self {
            registry,
            accepted,
            duplicates,
            requests,
            duration,
            cancelled,
            tasks: BoundedLabel::new(TASK_LABELS),
        })
    }

    pub fn accepted(&self, task: &str) {
        self.accepted
            .with_label_values(&[self.tasks.get(task).as_str()])
            .inc();
    }

    pub fn duplicate(&self, task: &str) {
        self.duplicates
            .with_label_values(&[self.tasks.get(task).as_str()])
            .inc();
    }

    pub fn cancelled(&self, task: &str) {
        self.cancelled
            .with_label_values(&[self.tasks.get(task).as_str()])
            .inc();
    }

    pub fn request(&self, route: &str, method: &str, code: u16, seconds: f64) {
        self.requests
            .with_label_values(&[route, method, &code.to_string()])
            .inc();
        self.duration
            .with_label_values(&[route, method])
            .observe(seconds);
    }

    /// The registry `/metrics` renders.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
