//! The span of a submission, after OpenTelemetry's messaging conventions: a `send`
//! (producer) span, a child of the caller's `traceparent` or the root of a new trace, whose
//! context the work message carries to the worker (docs/operations.md#tracing).

use axum::http::HeaderMap;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use workpool_core::message::TraceContext;
use workpool_core::{PoolNames, WorkId};
use workpool_runtime::otel;

pub(crate) struct SendSpan {
    cx: Context,
    /// Whether a span is recorded: without one, nothing is worth formatting for it.
    recording: bool,
}

impl SendSpan {
    /// Starts the span of a POST of `messages` pieces of work to the pool's stream.
    pub(crate) fn start(headers: &HeaderMap, names: &PoolNames, messages: usize) -> Self {
        let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
        let parent = match header("traceparent") {
            Some(traceparent) => otel::extract(Some(traceparent), header("tracestate")),
            None => Context::new(),
        };
        if !otel::exporting() {
            // Nothing is recorded: the caller's context goes on as it came.
            return Self {
                cx: parent,
                recording: false,
            };
        }
        let destination = names.stream();
        let mut attributes = vec![
            otel::messaging_system(),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.destination.name", destination.clone()),
        ];
        if messages > 1 {
            attributes.push(KeyValue::new(
                "messaging.batch.message_count",
                i64::try_from(messages).unwrap_or(i64::MAX),
            ));
        }
        let tracer = otel::tracer();
        let span = tracer
            .span_builder(format!("send {destination}"))
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        Self {
            cx: parent.with_span(span),
            recording: true,
        }
    }

    /// The context the work's message carries.
    pub(crate) fn carried(&self) -> Option<TraceContext> {
        otel::carry(&self.cx)
    }

    /// Names the one piece of work sent.
    pub(crate) fn work(&self, id: &WorkId, task: &str) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("messaging.message.id", id.to_string()));
        span.set_attribute(KeyValue::new("workpool.task", task.to_owned()));
    }

    /// Ends the span: `outcome` is how the submission was answered (`accepted`, the
    /// status of work already known), or the error that refused it.
    pub(crate) fn end(self, outcome: Result<&str, &dyn std::fmt::Display>) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        match outcome {
            Ok(answer) => span.set_attribute(KeyValue::new("workpool.answer", answer.to_owned())),
            Err(err) => span.set_status(Status::error(err.to_string())),
        }
        span.end();
    }
}
