//! Traces across the queue: the W3C trace context of a POST travels in the work message
//! to the worker and on into the handler, and the api and workers record spans after
//! OpenTelemetry's messaging conventions. Spans are exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with
//! the SDK's other `OTEL_*` settings (sampler, batch delay, headers). Without an
//! endpoint nothing is recorded, and a caller's context still reaches the handler.
//! See docs/operations.md#tracing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use workpool_core::message::TraceContext;

/// The instrumentation scope of Workpool's spans.
const SCOPE: &str = "workpool";

/// The variables that turn export on.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long the exporter waits for the collector, and a stopping process for its last
/// spans.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// `messaging.system` of every span: JetStream is NATS.
pub fn messaging_system() -> KeyValue {
    KeyValue::new("messaging.system", "nats")
}

/// Whether spans are exported (set once, when export starts).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are recorded at all: callers skip making spans that would go nowhere.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Why export could not start (the process runs on without it).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Client(#[from] crate::http_client::ClientError),
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Span export while it lives; dropping it sends the spans still batched.
pub struct Export(SdkTracerProvider);

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(err) = self.0.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::warn!(%err, "the last spans were not exported");
        }
    }
}

/// Starts exporting the spans of `service` when an OTLP endpoint is configured. Call it
/// outside an async runtime: the exporter's HTTP client blocks (in the SDK's own batch
/// thread).
pub fn start_export(service: &str) -> Result<Option<Export>, ExportError> {
    if !ENDPOINT_VARIABLES
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
    {
        return Ok(None);
    }
    let client = crate::http_client::blocking_client_builder()?
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(crate::http_client::ClientError::from)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    global::set_tracer_provider(provider.clone());
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some(Export(provider)))
}

/// The tracer of Workpool's spans: a no-op one while nothing is exported.
pub fn tracer() -> global::BoxedTracer {
    global::tracer_provider().tracer(SCOPE)
}

/// The context a carrier names: a `traceparent` (and `tracestate`). No context (a new
/// trace) when there is none or it is malformed, as W3C Trace Context asks.
pub fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let mut carrier = HashMap::new();
    if let Some(parent) = traceparent {
        carrier.insert("traceparent".to_owned(), parent.to_owned());
    }
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The context carried in a work message.
pub fn extract_carried(carried: Option<&TraceContext>) -> Context {
    carried.map_or_else(Context::new, |trace| {
        extract(Some(&trace.traceparent), trace.tracestate.as_deref())
    })
}

/// What carries `cx` on: its `traceparent` and `tracestate`, if it has a valid span.
pub fn carry(cx: &Context) -> Option<TraceContext> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier
            .remove("tracestate")
            .filter(|state| !state.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_traceparent_is_carried_on_unchanged_where_no_span_is_recorded() {
        let cx = extract(Some(PARENT), Some("vendor=1"));
        let carried = carry(&cx).expect("a valid context");
        assert_eq!(carried.traceparent, PARENT);
        assert_eq!(carried.tracestate.as_deref(), Some("vendor=1"));
        assert_eq!(
            carry(&extract_carried(Some(&carried))),
            Some(carried),
            "a message's context reads back as sent"
        );
    }

    #[test]
    fn a_malformed_or_missing_traceparent_starts_no_context() {
        for bad in [
            "",
            "00-xyz",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(carry(&extract(Some(bad), None)), None, "{bad}");
        }
        assert_eq!(carry(&extract(None, None)), None);
        assert_eq!(carry(&extract_carried(None)), None);
    }
}
