//! `GET /api/v1/cluster` and the live `/console` page: the pool's api and worker pods,
//! their readiness, the keyed partitions each worker pulls, work in flight and counts.
//! Members come from the EndpointSlices of the pool's Services; what each worker owns and
//! runs comes from the workers themselves, asked all at once over NATS.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use futures::StreamExt;
use tokio::sync::watch;
use workpool_core::cluster::{
    ApiMember, ClusterView, PeerReply, PeerRequest, WorkerMember, WorkerView,
};

use crate::AppState;
use crate::error::ApiError;

/// How long the api collects the workers' answers.
const GATHER_FOR: Duration = Duration::from_millis(750);

type Pods = watch::Receiver<BTreeSet<String>>;

/// Ready pods of the pool's api and worker Services, when running on Kubernetes.
#[derive(Debug, Default)]
pub struct Members {
    api: Option<Pods>,
    workers: Option<Pods>,
}

impl Members {
    /// Watches the given Services; without a Kubernetes API (or Service names) the
    /// cluster view shows what answers.
    pub async fn watch(namespace: &str, api: Option<&str>, workers: Option<&str>) -> Self {
        if api.is_none() && workers.is_none() {
            return Self::default();
        }
        match kube::Client::try_default().await {
            Ok(client) => {
                let watch = |service: Option<&str>| {
                    service.map(|service| {
                        workpool_core::membership::watch_service(client.clone(), namespace, service)
                    })
                };
                Self {
                    api: watch(api),
                    workers: watch(workers),
                }
            }
            Err(err) => {
                tracing::warn!(%err, "no Kubernetes API: the cluster view shows only what answers");
                Self::default()
            }
        }
    }
}

/// Asks every worker for its view at once and collects the answers for a moment.
async fn gather(state: &AppState, expected: usize) -> Result<Vec<WorkerView>, ApiError> {
    let client = state.queue()?.client().clone();
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|err| ApiError::Unavailable(format!("NATS: {err}")))?;
    let request = serde_json::to_vec(&PeerRequest::View).unwrap_or_default();
    client
        .publish_with_reply(state.names().peers_all_subject(), inbox, request.into())
        .await
        .map_err(|err| ApiError::Unavailable(format!("NATS: {err}")))?;
    let mut views = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER_FOR;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
        if let Ok(PeerReply::View(view)) = serde_json::from_slice(&message.payload) {
            views.push(view);
        }
        // Every member answered: no need to wait out the deadline.
        if expected > 0 && views.len() >= expected {
            break;
        }
    }
    Ok(views)
}

/// Builds the view from the members and the workers' answers.
pub fn assemble(
    state: &AppState,
    api_members: Option<BTreeSet<String>>,
    worker_members: Option<BTreeSet<String>>,
    views: Vec<WorkerView>,
) -> ClusterView {
    let names = state.names();
    let from_kubernetes = worker_members.is_some();
    let api = match api_members {
        Some(pods) => {
            let mut api: Vec<ApiMember> = pods
                .into_iter()
                .map(|pod| ApiMember { pod, ready: true })
                .collect();
            if !api.iter().any(|member| member.pod == state.pod()) {
                api.push(ApiMember {
                    pod: state.pod().to_owned(),
                    ready: false,
                });
            }
            api
        }
        None => vec![ApiMember {
            pod: state.pod().to_owned(),
            ready: true,
        }],
    };
    let members = worker_members.unwrap_or_default();
    let mut workers: BTreeMap<String, WorkerMember> = views
        .into_iter()
        .map(|view| {
            let member = members.contains(&view.pod) || !from_kubernetes;
            (
                view.pod.clone(),
                WorkerMember {
                    member,
                    answered: true,
                    view,
                },
            )
        })
        .collect();
    for pod in &members {
        workers.entry(pod.clone()).or_insert_with(|| WorkerMember {
            member: true,
            answered: false,
            view: WorkerView {
                pod: pod.clone(),
                ..Default::default()
            },
        });
    }
    let partitions = state.config().spec.worker.partitions;
    let owned: BTreeSet<u32> = workers
        .values()
        .flat_map(|worker| worker.view.partitions.iter().copied())
        .collect();
    ClusterView {
        namespace: names.namespace.clone(),
        pool: names.pool.clone(),
        answered_by: state.pod().to_owned(),
        partitions,
        api,
        workers: workers.into_values().collect(),
        unowned_partitions: (0..partitions).filter(|p| !owned.contains(p)).collect(),
        from_kubernetes,
    }
}

/// The pool's processes, their partitions and the work they run.
#[utoipa::path(
    get, path = "/api/v1/cluster", tag = "cluster",
    responses(
        (status = 200, description = "Members, partitions and work in flight", body = ClusterView),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = crate::error::ErrorBody),
        (status = 503, description = "NATS is unreachable", body = crate::error::ErrorBody),
    )
)]
pub async fn view(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    let members = state.members();
    let api_members = members.api.as_ref().map(|pods| pods.borrow().clone());
    let worker_members = members.workers.as_ref().map(|pods| pods.borrow().clone());
    let expected = worker_members.as_ref().map_or(0, BTreeSet::len);
    let views = gather(&state, expected).await?;
    Ok(Json(assemble(&state, api_members, worker_members, views)))
}

/// The live console: a page that shows `GET /api/v1/cluster` and refreshes itself.
pub async fn console() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("console.html"),
    )
}
