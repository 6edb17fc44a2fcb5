//! Where `http` handlers report progress (docs/worker.md, "Progress"): a listener on
//! loopback, one path per running attempt, named by a random token. The worker sends the
//! path in the `Workpool-Progress-Url` header of each request; a handler POSTs
//! `{"percent"?: 0-100, "message"?: "..."}` there while it works. Loopback only: the
//! handler is the pod's own sidecar, and nothing else can reach the listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use workpool_core::progress::Progress;

use crate::progress::Reporter;

type Attempts = Arc<Mutex<HashMap<String, Reporter>>>;

/// The listener and the attempts it takes reports for; cheap to clone.
#[derive(Debug, Clone)]
pub struct ProgressEndpoint {
    address: SocketAddr,
    attempts: Attempts,
    registered: Arc<AtomicU64>,
}

/// A running attempt's place at the endpoint, removed when dropped.
#[derive(Debug)]
pub struct Registration {
    url: String,
    token: String,
    attempts: Attempts,
}

/// The body a handler POSTs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    message: Option<String>,
}

impl ProgressEndpoint {
    /// Listens on a free loopback port, serving for as long as the process runs.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let attempts = Attempts::default();
        let app = axum::Router::new()
            .route("/progress/{token}", axum::routing::post(report))
            .with_state(attempts.clone());
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(%err, "progress endpoint stopped");
            }
        });
        Ok(Self {
            address,
            attempts,
            registered: Arc::default(),
        })
    }

    /// Takes reports for one attempt until the registration is dropped.
    pub fn register(&self, reporter: Reporter) -> Registration {
        let mut bytes = [0u8; 16];
        // Without randomness the token is still unique (the count); only guessing it
        // gets easier, and the listener is on loopback.
        let _ = getrandom::fill(&mut bytes);
        let count = self.registered.fetch_add(1, Ordering::Relaxed);
        let token = format!("{count}-{}", hex::encode(bytes));
        let url = format!("http://{}/progress/{token}", self.address);
        lock(&self.attempts).insert(token.clone(), reporter);
        Registration {
            url,
            token,
            attempts: self.attempts.clone(),
        }
    }
}

impl Registration {
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.attempts).remove(&self.token);
    }
}

fn lock(attempts: &Attempts) -> std::sync::MutexGuard<'_, HashMap<String, Reporter>> {
    attempts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn report(
    State(attempts): State<Attempts>,
    Path(token): Path<String>,
    axum::Json(report): axum::Json<Report>,
) -> StatusCode {
    let progress = Progress::now(report.percent, report.message.as_deref());
    if progress.percent.is_none() && progress.message.is_none() {
        return StatusCode::BAD_REQUEST;
    }
    match lock(&attempts).get(&token) {
        Some(reporter) => {
            reporter.report(progress);
            StatusCode::NO_CONTENT
        }
        // The attempt ended (or never was): its progress means nothing now.
        None => StatusCode::NOT_FOUND,
    }
}
