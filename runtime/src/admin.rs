//! The health and metrics endpoints of the worker and the operator: `/healthz` (the
//! process serves HTTP), `/readyz` (the component says it can do its job) and `/metrics`
//! (its registry in the Prometheus text format).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::metrics;

/// Whether the component is ready to serve; asked on every `/readyz`.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// The endpoints' state: what `/readyz` asks and what `/metrics` renders.
#[derive(Clone)]
pub struct Admin {
    ready: Readiness,
    registry: Registry,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    pub fn new(registry: Registry, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            ready: Arc::new(ready),
            registry,
        }
    }

    /// `/healthz`, `/readyz` and `/metrics`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(serve_metrics))
            .with_state(self)
    }

    /// Serves the endpoints on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if (admin.ready)() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn serve_metrics(State(admin): State<Admin>) -> Response {
    metrics_response(&admin.registry)
}

/// The registry's series as an HTTP answer (a 500 naming the error if they cannot be
/// encoded).
pub fn metrics_response(registry: &Registry) -> Response {
    match metrics::render(registry) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(err) => {
            tracing::warn!(%err, "metrics not encodable");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get_text(router: Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = router.oneshot(request).await.expect("answer");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_follows_the_readiness_check_and_healthz_does_not() {
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let admin = Admin::new(Registry::new(), move || flag.load(Ordering::Relaxed));
        let (status, _) = get_text(admin.clone().router(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            get_text(admin.clone().router(), "/healthz").await.0,
            StatusCode::OK
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(
            get_text(admin.router(), "/readyz").await,
            (StatusCode::OK, "ready\n".to_owned())
        );
    }

    #[tokio::test]
    async fn metrics_renders_the_registry_with_its_constant_labels() {
        let registry = metrics::pool_registry("ns", "pool").expect("registry");
        let counter =
            prometheus::IntCounter::new("workpool_test_total", "a test counter").expect("counter");
        registry
            .register(Box::new(counter.clone()))
            .expect("register");
        counter.inc_by(3);
        let (status, text) = get_text(Admin::new(registry, || true).router(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        // The constant labels come in no fixed order.
        let line = text
            .lines()
            .find(|line| line.starts_with("workpool_test_total{"))
            .unwrap_or_else(|| panic!("no series: {text}"));
        assert!(line.ends_with("} 3"), "{line}");
        for label in [r#"namespace="ns""#, r#"pool="pool""#] {
            assert!(line.contains(label), "{line}");
        }
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
