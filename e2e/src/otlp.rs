//! An OTLP/HTTP trace receiver for tests: it decodes what exporters POST to
//! `/v1/traces` (protobuf) and keeps every span with the service that sent it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

use crate::{HarnessError, Result};

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    pub name: String,
    /// OTLP's span kind: 2 server, 3 client, 4 producer, 5 consumer, 1 internal.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attributes whose value is a string or an integer, as text.
    pub attributes: HashMap<String, String>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub start_ns: u64,
    pub end_ns: u64,
}

pub const PRODUCER: i32 = 4;
pub const CONSUMER: i32 = 5;
pub const INTERNAL: i32 = 1;
pub const STATUS_ERROR: i32 = 2;

/// The receiver: its endpoint (for `OTEL_EXPORTER_OTLP_ENDPOINT`) and what it got.
pub struct OtlpReceiver {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("binding the OTLP receiver"))?;
        let address = listener
            .local_addr()
            .map_err(HarnessError::io("OTLP receiver address"))?;
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(spans.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            endpoint: format!("http://{address}"),
            spans,
            task,
        })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = texts(&resource.attributes)
            .remove("service.name")
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            received.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: texts(&span.attributes),
                status: span.status.map_or(0, |status| status.code),
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
            });
        }
    }
    spans
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(received);
    StatusCode::OK
}

fn texts(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|attribute| Some((attribute.key.clone(), text(attribute.value.as_ref()?)?)))
        .collect()
}

fn text(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        any_value::Value::IntValue(number) => Some(number.to_string()),
        any_value::Value::BoolValue(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
