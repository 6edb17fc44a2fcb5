//! The OpenAPI document, generated from the handlers' annotations. A checked-in copy lives
//! in `docs/openapi.json`; a test fails when it drifts.

use axum::Json;
use utoipa::OpenApi;

use crate::error::ErrorBody;
use crate::routes::{self, SubmitAnswer, WorkView};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Workpool API",
        description = "Submit work, poll for its result."
    ),
    paths(
        routes::submit,
        crate::batch::submit_batch,
        routes::get,
        routes::cancel,
        crate::live::events,
        crate::recent::recent,
        crate::cluster::view,
        crate::overview::overview,
        crate::dead_routes::list,
        crate::dead_routes::inspect,
        crate::dead_routes::retry,
        crate::dead_routes::retry_all,
        crate::dead_routes::purge,
        crate::dead_routes::purge_all,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        serve
    ),
    components(schemas(
        SubmitAnswer,
        crate::batch::BatchItem,
        crate::batch::BatchItemAnswer,
        crate::batch::ItemError,
        crate::batch::BatchAnswer,
        WorkView,
        crate::live::RecordEvent,
        crate::dead_letters::DeadLetterView,
        crate::dead_routes::DeadLetterList,
        crate::dead_routes::BulkAnswer,
        ErrorBody,
        workpool_core::WorkStatus,
        workpool_core::message::WorkSubmission,
        workpool_core::cluster::ClusterView,
        crate::recent::RecentWork,
        crate::overview::QueueOverview,
        crate::overview::QueuePoint
    ))
)]
pub struct ApiDoc;

/// The document as pretty JSON with a trailing newline.
pub fn document() -> String {
    // Serializing fails only for maps with non-string keys, which an OpenAPI document
    // does not have; the served copy and the drift test would both show it at once.
    #[allow(clippy::expect_used)]
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document always serializes");
    text.push('\n');
    text
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn serve() -> Json<serde_json::Value> {
    // As a `Value` (keys sorted), as it was always served. See `document` for the expect.
    #[allow(clippy::expect_used)]
    let document =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document always serializes");
    Json(document)
}
