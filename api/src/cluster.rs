//! `GET /api/v1/cluster` and the live `/console` page: the pool's api and worker pods,
//! their readiness, the keyed partitions each worker pulls, work in flight and counts.
//! Members come from the EndpointSlices of the pool's Services; what each worker owns and
//! runs comes from the workers themselves, asked all at once over NATS.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use workpool_core::cluster::{
    ApiMember, ClusterView, PeerReply, PeerRequest, WorkerMember, WorkerView,
};
use workpool_core::peer_auth::PeerKey;

use crate::AppState;
use crate::auth::Caller;
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
                        workpool_runtime::membership::watch_service(
                            client.clone(),
                            namespace,
                            service,
                        )
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

fn nats_error(err: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::unavailable_with(format!("NATS: {err}"), err)
}

/// `request` as the payload of a peer message, signed with the pool's peer key; `None`
/// without a key, since workers act on no unsigned request.
pub(crate) fn peer_payload(key: Option<&PeerKey>, request: &PeerRequest) -> Option<Bytes> {
    key.map(|key| key.sign(request, chrono::Utc::now()).into())
}

/// Asks every worker for its view at once and collects the answers for a moment.
async fn gather(state: &AppState, expected: usize) -> Result<Vec<WorkerView>, ApiError> {
    let client = state.queue()?.client().clone();
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.map_err(nats_error)?;
    let Some(request) = peer_payload(state.config().peer_key.as_ref(), &PeerRequest::View) else {
        tracing::warn!("no peer key: the workers cannot be asked for their view");
        return Ok(Vec::new());
    };
    client
        .publish_with_reply(state.names().peers_all_subject(), inbox, request)
        .await
        .map_err(nats_error)?;
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
    let workers = workers(worker_members, views);
    let partitions = state.config().spec.worker.partitions;
    let owned: BTreeSet<u32> = workers
        .iter()
        .flat_map(|worker| worker.view.partitions.iter().copied())
        .collect();
    ClusterView {
        namespace: names.namespace.clone(),
        pool: names.pool.clone(),
        answered_by: state.pod().to_owned(),
        partitions,
        api: api(state.pod(), api_members),
        workers,
        unowned_partitions: (0..partitions).filter(|p| !owned.contains(p)).collect(),
        from_kubernetes,
    }
}

/// The api pods: the ready endpoints of the api Service, and this pod (not ready when it
/// is not among them); without the Service, this pod alone.
fn api(this_pod: &str, members: Option<BTreeSet<String>>) -> Vec<ApiMember> {
    let Some(pods) = members else {
        return vec![ApiMember {
            pod: this_pod.to_owned(),
            ready: true,
        }];
    };
    let mut api: Vec<ApiMember> = pods
        .into_iter()
        .map(|pod| ApiMember { pod, ready: true })
        .collect();
    if !api.iter().any(|member| member.pod == this_pod) {
        api.push(ApiMember {
            pod: this_pod.to_owned(),
            ready: false,
        });
    }
    api
}

/// The workers that answered and the members that did not, by pod name. Without the
/// worker Service (`members` is `None`) every worker that answered counts as a member.
fn workers(members: Option<BTreeSet<String>>, views: Vec<WorkerView>) -> Vec<WorkerMember> {
    let from_kubernetes = members.is_some();
    let members = members.unwrap_or_default();
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
    workers.into_values().collect()
}

/// The pool's processes, their partitions and the work they run.
#[utoipa::path(
    get, path = "/api/v1/cluster", tag = "cluster",
    responses(
        (status = 200, description = "Members, partitions and work in flight", body = ClusterView),
        (status = 401, description = "Missing or invalid token (when auth is on)", body = crate::error::ErrorBody),
        (status = 403, description = "The token has no admin claim (when auth is on)", body = crate::error::ErrorBody),
        (status = 503, description = "NATS is unreachable", body = crate::error::ErrorBody),
    )
)]
pub async fn view(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ClusterView>, ApiError> {
    // Every pod and the work each runs: an admin's view, not a tenant's.
    caller.must_be_admin()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router_tests::state;

    fn pods(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|&name| name.to_owned()).collect()
    }

    fn answered(pod: &str, partitions: &[u32]) -> WorkerView {
        WorkerView {
            pod: pod.to_owned(),
            ready: true,
            partitions: partitions.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn outside_kubernetes_the_view_is_this_pod_and_the_workers_that_answered() {
        let state = state(None);
        let partitions = state.config().spec.worker.partitions;
        let view = assemble(&state, None, None, vec![answered("w-1", &[0])]);
        assert!(!view.from_kubernetes);
        assert_eq!(
            (view.namespace.as_str(), view.pool.as_str()),
            ("default", "demo")
        );
        assert_eq!(view.answered_by, "demo-api-0");
        assert_eq!(
            view.api,
            vec![ApiMember {
                pod: "demo-api-0".into(),
                ready: true
            }]
        );
        assert_eq!(view.workers.len(), 1);
        assert!(view.workers[0].member && view.workers[0].answered);
        assert_eq!(view.partitions, partitions);
        assert_eq!(view.unowned_partitions, (1..partitions).collect::<Vec<_>>());
    }

    #[test]
    fn members_that_did_not_answer_are_listed_and_strangers_are_not_members() {
        let state = state(None);
        let view = assemble(
            &state,
            Some(pods(&["demo-api-1"])),
            Some(pods(&["w-1", "w-2"])),
            vec![answered("w-1", &[0, 1]), answered("w-9", &[2])],
        );
        assert!(view.from_kubernetes);
        let api: Vec<(&str, bool)> = view.api.iter().map(|m| (m.pod.as_str(), m.ready)).collect();
        assert_eq!(api, [("demo-api-1", true), ("demo-api-0", false)]);
        let workers: Vec<(&str, bool, bool)> = view
            .workers
            .iter()
            .map(|w| (w.view.pod.as_str(), w.member, w.answered))
            .collect();
        assert_eq!(
            workers,
            [
                ("w-1", true, true),
                ("w-2", true, false),
                ("w-9", false, true)
            ]
        );
        assert!(
            !view.unowned_partitions.contains(&2),
            "a stranger's partitions are owned"
        );
    }
}
