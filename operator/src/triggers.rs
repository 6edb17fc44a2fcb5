//! What makes the operator look at a pool again: only what can change what it does.
//! - a WorkPool's generation (its spec; deletion bumps it too) or its annotations (the
//!   abandon annotation);
//! - a child Deployment's readiness, which the pool's status reports;
//! - a child Deployment or Service going away, which must be put back.
//!
//! The operator's own writes (the status, the finalizer, the children as it applied
//! them) trigger nothing, so a new pool is reconciled once, not once per write
//! ([operator.md](../../docs/operator.md#what-makes-a-pool-reconcile)).

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use workpool_core::crd::WorkPool;

use crate::applied::Applied;
use crate::children::MANAGED_BY;

/// The label selector of every child the operator makes.
fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"))
}

/// WorkPools whose generation or annotations changed, with the store the controller
/// reads them from.
pub fn pools(
    api: Api<WorkPool>,
) -> (
    impl Stream<Item = Result<WorkPool, watcher::Error>> + Send + 'static,
    reflector::Store<WorkPool>,
) {
    let (reader, writer) = reflector::store();
    let changed = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        );
    (changed, reader)
}

/// Child Deployments whose ready replicas changed, or that went away. A Deployment first
/// seen with no ready replica (one the operator just created) triggers nothing.
pub fn deployments(
    api: Api<Deployment>,
    applied: Arc<Applied>,
) -> impl Stream<Item = Result<Deployment, watcher::Error>> + Send + 'static {
    let mut ready: HashMap<(String, String), i32> = HashMap::new();
    watcher(api, managed())
        .default_backoff()
        .filter_map(move |event| {
            future::ready(match event {
                Ok(Event::Apply(deployment) | Event::InitApply(deployment)) => {
                    let now = ready_replicas(&deployment);
                    let before = ready.insert(key(&deployment), now).unwrap_or(0);
                    (before != now).then_some(Ok(deployment))
                }
                Ok(Event::Delete(deployment)) => {
                    ready.remove(&key(&deployment));
                    applied.forget_owner_of(&deployment);
                    Some(Ok(deployment))
                }
                Ok(Event::Init | Event::InitDone) => None,
                Err(err) => Some(Err(err)),
            })
        })
}

/// Children of kind `K` that went away.
pub fn deleted<K>(
    api: Api<K>,
    applied: Arc<Applied>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, managed())
        .default_backoff()
        .filter_map(move |event| {
            future::ready(match event {
                Ok(Event::Delete(object)) => {
                    applied.forget_owner_of(&object);
                    Some(Ok(object))
                }
                Ok(_) => None,
                Err(err) => Some(Err(err)),
            })
        })
}

fn ready_replicas(deployment: &Deployment) -> i32 {
    deployment
        .status
        .as_ref()
        .and_then(|status| status.ready_replicas)
        .unwrap_or(0)
}

fn key(object: &impl Resource) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}
