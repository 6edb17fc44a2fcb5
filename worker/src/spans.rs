//! A worker's spans of a piece of work, after OpenTelemetry's messaging conventions, in
//! the trace the work was sent in: its wait in the queue, and a `process` span for each
//! attempt, whose context the handler gets (docs/operations.md#tracing).

use std::time::SystemTime;

use async_nats::jetstream;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use workpool_core::PoolNames;
use workpool_core::message::{TraceContext, WorkMessage};
use workpool_runtime::otel;

/// Records how long `work` waited in the queue before its first delivery: from the
/// stream's timestamp of its message until now.
pub(crate) fn queue_wait(message: &jetstream::Message, work: &WorkMessage, names: &PoolNames) {
    if !otel::exporting() {
        return;
    }
    let Ok(info) = message.info() else {
        return;
    };
    if info.delivered != 1 {
        // A redelivery's wait includes earlier attempts, which have spans of their own.
        return;
    }
    let parent = otel::extract_carried(work.trace.as_ref());
    let tracer = otel::tracer();
    let mut attributes = messaging(work, names);
    attributes.push(KeyValue::new(
        "messaging.consumer.group.name",
        info.consumer.to_owned(),
    ));
    tracer
        .span_builder("queue wait")
        .with_kind(SpanKind::Internal)
        .with_start_time(SystemTime::from(info.published))
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent)
        .end();
}

/// The span of one attempt.
pub(crate) struct AttemptSpan {
    cx: Context,
    /// Whether a span is recorded: without one, ending it costs nothing.
    recording: bool,
    /// What the handler gets: the span's context, or (nothing recorded) the sender's.
    trace: Option<TraceContext>,
}

impl AttemptSpan {
    pub(crate) fn start(
        message: &jetstream::Message,
        work: &WorkMessage,
        attempt: u32,
        names: &PoolNames,
    ) -> Self {
        let parent = otel::extract_carried(work.trace.as_ref());
        if !otel::exporting() {
            return Self {
                cx: parent,
                recording: false,
                trace: work.trace.clone(),
            };
        }
        let mut attributes = messaging(work, names);
        attributes.extend([
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("workpool.attempt", i64::from(attempt)),
        ]);
        if let Ok(info) = message.info() {
            attributes.push(KeyValue::new(
                "messaging.consumer.group.name",
                info.consumer.to_owned(),
            ));
        }
        let tracer = otel::tracer();
        let span = tracer
            .span_builder(format!("process {}", names.stream()))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        let cx = parent.with_span(span);
        let trace = otel::carry(&cx);
        Self {
            cx,
            recording: true,
            trace,
        }
    }

    /// The attempt's trace context, for the handler.
    pub(crate) fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// Ends the span with how the attempt ended (`worked`, `failed`, ...) and, when it
    /// did not work, why.
    pub(crate) fn end(self, outcome: &'static str, error: Option<&str>) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("workpool.outcome", outcome));
        if let Some(error) = error {
            span.set_status(Status::error(error.to_owned()));
        }
        span.end();
    }
}

/// The attributes every span of `work` has.
fn messaging(work: &WorkMessage, names: &PoolNames) -> Vec<KeyValue> {
    vec![
        otel::messaging_system(),
        KeyValue::new("messaging.destination.name", names.stream()),
        KeyValue::new("messaging.message.id", work.id.to_string()),
        KeyValue::new("workpool.task", work.task.clone()),
    ]
}
