//! The WorkPool controller: reconcile a pool into its children, NATS objects and status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use workpool_core::crd::{QueueStatus, ReplicaStatus, WorkPool, WorkPoolStatus};
use workpool_core::{PoolNames, PoolSpec};

use crate::children::{self, Component, DefaultImage, PoolContext};
use crate::error::Error;
use crate::metrics::OperatorMetrics;
use crate::queue::{self, NatsClients, QueueFigures};
use crate::status::{self, condition};
use crate::sweep::{self, SweepThrottle};

/// The one field manager of every object the operator applies.
pub const MANAGER: &str = "workpool-operator";
/// Keeps a WorkPool until its NATS objects are gone (or retained).
pub const FINALIZER: &str = "workpool.dev/nats-objects";
/// How often a healthy pool is looked at again (queue figures, autoscaling).
const RESYNC: Duration = Duration::from_secs(30);
const RESYNC_AUTOSCALED: Duration = Duration::from_secs(10);
/// First and longest delay before retrying a failed reconcile.
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The retry interval while a pool's NATS is unreachable.
const NATS_RETRY: Duration = Duration::from_secs(5);

/// Handles shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    pub nats: NatsClients,
    pub image: DefaultImage,
    failures: Mutex<HashMap<String, u32>>,
    /// When each pool's stranded pending records were last swept.
    pub sweeps: SweepThrottle,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<OperatorMetrics>,
        image: DefaultImage,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            nats: NatsClients::default(),
            image,
            failures: Mutex::default(),
            sweeps: SweepThrottle::new(sweep::SWEEP_EVERY),
        }
    }
}

pub(crate) fn key(pool: &WorkPool) -> String {
    format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    )
}

/// Entry point for the controller: finalizer handling, then apply or cleanup.
pub async fn reconcile(pool: Arc<WorkPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.timer();
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let api: Api<WorkPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            finalizer::Event::Apply(pool) => apply(&pool, &ctx).await,
            finalizer::Event::Cleanup(pool) => crate::deletion::cleanup(&pool, &ctx).await,
        }
    })
    .await
    .map_err(|err| match err {
        finalizer::Error::ApplyFailed(err) | finalizer::Error::CleanupFailed(err) => err,
        finalizer::Error::AddFinalizer(err) | finalizer::Error::RemoveFinalizer(err) => {
            Error::Kube(err)
        }
        other => Error::Finalizer(other.to_string()),
    });
    if result.is_ok() {
        ctx.metrics.reconciled();
    }
    result
}

/// Failed reconciles are retried with exponential backoff; the error is counted and
/// reported as a Warning event by `apply` itself.
pub fn error_policy(pool: Arc<WorkPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.category());
    tracing::warn!(pool = %key(&pool), category = error.category(), %error, "reconcile failed");
    let failures = ctx.failures.try_lock().map(|mut map| {
        let count = map.entry(key(&pool)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    });
    Action::requeue(retry_after(error, failures.unwrap_or(1)))
}

/// How long after its `failures`-th failure in a row a pool is looked at again. An
/// unreachable NATS is retried at a short fixed interval: the outage ends without any
/// change to the pool, and the pool should be Ready again within seconds of NATS coming
/// back, not after a backoff that grew while it was down.
fn retry_after(error: &Error, failures: u32) -> Duration {
    if matches!(error, Error::NatsUnreachable(_)) {
        return NATS_RETRY;
    }
    let exponent = failures.saturating_sub(1).min(10);
    (BACKOFF_FIRST * 2u32.pow(exponent)).min(BACKOFF_MAX)
}

async fn apply_child<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
    K::DynamicType: Default,
{
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?)
}

pub(crate) async fn nats_credentials(
    ctx: &Context,
    namespace: &str,
    pool: &WorkPool,
) -> Result<Option<String>, Error> {
    let Some(secret_name) = &pool.spec.nats.credentials_secret else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    // Gone (for example with its namespace) is a credentials problem, not an API error.
    let secret = secrets
        .get_opt(secret_name)
        .await?
        .ok_or_else(|| Error::NatsCredentials(format!("secret {secret_name} not found")))?;
    let creds = secret
        .data
        .and_then(|data| {
            data.get("nats.creds")
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
        })
        .ok_or_else(|| {
            Error::NatsCredentials(format!("secret {secret_name} has no key nats.creds"))
        })?;
    Ok(Some(creds))
}

fn ready_count(deployment: &Deployment) -> i32 {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

pub(crate) async fn publish(
    ctx: &Context,
    pool: &WorkPool,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
        tracing::debug!(%err, "event not published");
    }
}

/// What NATS said about a pool's spec, and the queue figures when it answered.
struct QueueOutcome {
    /// NATS accepted the stream, bucket and consumers of this spec.
    accepted: bool,
    figures: Result<QueueFigures, Error>,
}

impl QueueOutcome {
    /// NATS answered and refused the spec (as opposed to not answering).
    fn refused(&self) -> bool {
        matches!(self.figures, Err(Error::NatsConfigRejected(_)))
    }
}

/// Provisions the pool's NATS objects and reads its queue figures.
async fn reach_queue(
    ctx: &Context,
    namespace: &str,
    pool: &WorkPool,
    names: &PoolNames,
    spec: &PoolSpec,
) -> QueueOutcome {
    let failed = |err| QueueOutcome {
        accepted: false,
        figures: Err(err),
    };
    let js = match nats_credentials(ctx, namespace, pool).await {
        Ok(credentials) => ctx.nats.jetstream(&spec.nats.url, credentials).await,
        Err(err) => Err(err),
    };
    let js = match js {
        Ok(js) => js,
        Err(err) => return failed(err),
    };
    if let Err(err) = queue::ensure(&js, names, spec).await {
        return failed(err);
    }
    let figures = queue::figures(&js, names, spec).await;
    sweep::sweep_if_due(ctx, pool, &js, names, spec).await;
    QueueOutcome {
        accepted: true,
        figures,
    }
}

/// The settings the api and worker Deployments get: the new ones once NATS accepted
/// them; none while NATS refuses them (the Deployments stay as they are, so no pod ever
/// runs a refused spec); while NATS does not answer, the settings the pods already run
/// (only replicas, image and resources follow the WorkPool), or the new ones for a pool
/// that has no pods yet.
fn rollout_spec(
    outcome: &QueueOutcome,
    spec: &PoolSpec,
    deployed: Option<PoolSpec>,
) -> Option<PoolSpec> {
    if outcome.accepted {
        Some(spec.clone())
    } else if outcome.refused() {
        None
    } else {
        Some(deployed.unwrap_or_else(|| spec.clone()))
    }
}

/// Why the pods do not get the new settings, if they do not.
fn held_back(
    outcome: &QueueOutcome,
    spec: &PoolSpec,
    rollout: Option<&PoolSpec>,
) -> Option<&'static str> {
    match rollout {
        _ if outcome.accepted => None,
        None => Some("the api and worker Deployments stay as they are until NATS accepts the spec"),
        Some(rolled) if rolled != spec => {
            Some("the pods keep the settings NATS last accepted until NATS answers")
        }
        Some(_) => None,
    }
}

/// A pool's api and worker Deployments.
struct Deployments {
    api: Option<Deployment>,
    worker: Option<Deployment>,
}

async fn current_deployments(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Deployments, Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(Deployments {
        api: api
            .get_opt(&children::deployment_name(name, Component::Api))
            .await?,
        worker: api
            .get_opt(&children::deployment_name(name, Component::Worker))
            .await?,
    })
}

/// Workers wanted: the autoscaler's choice while `autoscale` is set, else the spec's.
fn desired_workers(
    pool: &WorkPool,
    figures: &Result<QueueFigures, Error>,
    current: Option<i32>,
) -> i32 {
    match (&pool.spec.worker.autoscale, figures) {
        (Some(scale), Ok(figures)) => queue::autoscaled_replicas(
            figures.backlog(),
            scale.target_backlog_per_replica,
            scale.min,
            scale.max,
        ),
        // Without a backlog reading, keep what runs now: never guess.
        (Some(scale), Err(_)) => current.unwrap_or(scale.min),
        (None, _) => pool.spec.worker.replicas,
    }
}

/// Applies every Kubernetes child; the Deployments only with `rollout` settings (without
/// them the current ones are kept as they are).
async fn apply_children(
    ctx: &Context,
    context: &PoolContext<'_>,
    rollout: Option<&PoolSpec>,
    current: Deployments,
    workers: i32,
) -> Result<Deployments, Error> {
    let (client, namespace) = (&ctx.client, context.namespace.as_str());
    apply_child::<ServiceAccount>(client, namespace, &context.service_account()).await?;
    apply_child::<Role>(client, namespace, &context.role()).await?;
    apply_child::<RoleBinding>(client, namespace, &context.role_binding()).await?;
    let deployments = match rollout {
        Some(spec) => {
            let context = PoolContext {
                spec,
                ..context.clone()
            };
            let api = context.deployment(Component::Api, context.pool.spec.api.replicas);
            let worker = context.deployment(Component::Worker, workers);
            Deployments {
                api: Some(apply_child(client, namespace, &api).await?),
                worker: Some(apply_child(client, namespace, &worker).await?),
            }
        }
        None => current,
    };
    apply_child::<Service>(client, namespace, &context.api_service()).await?;
    apply_child::<Service>(client, namespace, &context.worker_service()).await?;
    for component in [Component::Api, Component::Worker] {
        let budget = context.disruption_budget(component);
        apply_child::<PodDisruptionBudget>(client, namespace, &budget).await?;
    }
    Ok(deployments)
}

async fn apply(pool: &WorkPool, ctx: &Context) -> Result<Action, Error> {
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = pool.name_any();
    let previous = pool.status.clone().unwrap_or_default();

    let spec = match pool.spec.pool_spec() {
        Ok(spec) => spec,
        Err(err) => {
            let error = Error::InvalidSpec(err.to_string());
            report_stuck(pool, ctx, &previous, &error).await?;
            return Ok(Action::await_change());
        }
    };
    let names =
        PoolNames::new(&namespace, &name).map_err(|err| Error::InvalidSpec(err.to_string()))?;
    let outcome = reach_queue(ctx, &namespace, pool, &names, &spec).await;

    let current = current_deployments(ctx, &namespace, &name).await?;
    let current_workers = current
        .worker
        .as_ref()
        .and_then(|d| d.spec.as_ref()?.replicas);
    let desired_workers = desired_workers(pool, &outcome.figures, current_workers);
    let deployed = current.worker.as_ref().and_then(children::deployed_spec);
    let rollout = rollout_spec(&outcome, &spec, deployed);
    let held = held_back(&outcome, &spec, rollout.as_ref());
    let context = PoolContext {
        pool,
        name: name.clone(),
        namespace: namespace.clone(),
        owner: pool
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?,
        spec: &spec,
        image: &ctx.image,
    };
    let deployments =
        apply_children(ctx, &context, rollout.as_ref(), current, desired_workers).await?;

    let ready = Readiness {
        api: deployments.api.as_ref().map_or(0, ready_count),
        workers: deployments.worker.as_ref().map_or(0, ready_count),
        desired_workers,
    };
    let status = pool_status(pool, &previous, &outcome, &ready, held);
    patch_status(ctx, &namespace, &name, &status).await?;
    ctx.metrics
        .queue(&namespace, &name, outcome.figures.as_ref().ok().copied());
    announce(pool, ctx, &previous, &status, &outcome, current_workers).await;
    finish(pool, ctx, outcome, held).await
}

/// Ready pods of a pool and the workers it wants.
struct Readiness {
    api: i32,
    workers: i32,
    desired_workers: i32,
}

/// The pool's status after a reconcile.
fn pool_status(
    pool: &WorkPool,
    previous: &WorkPoolStatus,
    outcome: &QueueOutcome,
    ready: &Readiness,
    held: Option<&str>,
) -> WorkPoolStatus {
    let name = pool.name_any();
    let namespace = pool.namespace().unwrap_or_default();
    let figures = outcome.figures.as_ref().ok();
    WorkPoolStatus {
        observed_generation: pool.metadata.generation,
        conditions: conditions(pool, previous, outcome, ready, held),
        api: Some(ReplicaStatus::new(
            ready.api,
            pool.spec.api.replicas,
            children::selector_string(&name, Component::Api),
        )),
        workers: Some(ReplicaStatus::new(
            ready.workers,
            ready.desired_workers,
            children::selector_string(&name, Component::Worker),
        )),
        queue: figures
            .map(|f| QueueStatus {
                pending: f.pending,
                in_flight: f.in_flight,
                dead_letters: f.dead_letters,
            })
            .or(previous.queue.clone()),
        endpoint: Some(format!(
            "http://{}.{namespace}.svc",
            children::deployment_name(&name, Component::Api)
        )),
        provisioned_generation: if outcome.accepted {
            pool.metadata.generation
        } else {
            previous.provisioned_generation
        },
    }
}

fn conditions(
    pool: &WorkPool,
    previous: &WorkPoolStatus,
    outcome: &QueueOutcome,
    ready: &Readiness,
    held: Option<&str>,
) -> Vec<Condition> {
    let generation = pool.metadata.generation;
    let make = |kind, ok, reason: &str, message| {
        condition(kind, ok, reason, message, generation, &previous.conditions)
    };
    let (api_wanted, workers_wanted) = (pool.spec.api.replicas, ready.desired_workers);
    let api_ok = ready.api >= api_wanted.min(1);
    let workers_ok = ready.workers >= workers_wanted.min(1);
    let queue_ok = outcome.figures.is_ok();
    let ready_reason = match (queue_ok, api_ok, workers_ok) {
        (true, true, true) => "Ready",
        (false, _, _) => "QueueNotReady",
        (_, false, _) => "ApiUnavailable",
        _ => "WorkersUnavailable",
    };
    let availability = |ok| {
        if ok {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        }
    };
    let queue = match &outcome.figures {
        Ok(_) => make(
            status::QUEUE_READY,
            true,
            "Provisioned",
            "stream, bucket and consumers match the spec".into(),
        ),
        Err(err) => make(
            status::QUEUE_READY,
            false,
            err.category(),
            with_note(err, held),
        ),
    };
    vec![
        make(
            status::READY,
            queue_ok && api_ok && workers_ok,
            ready_reason,
            format!(
                "api {}/{api_wanted}, workers {}/{workers_wanted}",
                ready.api, ready.workers
            ),
        ),
        queue,
        make(
            status::API_AVAILABLE,
            api_ok,
            availability(api_ok),
            format!("{} of {api_wanted} api pods ready", ready.api),
        ),
        make(
            status::WORKERS_AVAILABLE,
            workers_ok,
            availability(workers_ok),
            format!("{} of {workers_wanted} worker pods ready", ready.workers),
        ),
    ]
}

fn with_note(err: &Error, note: Option<&str>) -> String {
    match note {
        Some(note) => format!("{err}; {note}"),
        None => err.to_string(),
    }
}

/// The Normal events of a reconcile and its log line.
async fn announce(
    pool: &WorkPool,
    ctx: &Context,
    previous: &WorkPoolStatus,
    status: &WorkPoolStatus,
    outcome: &QueueOutcome,
    current_workers: Option<i32>,
) {
    let generation = pool.metadata.generation;
    let desired_workers = status.workers.as_ref().map_or(0, |w| w.desired);
    let figures = outcome.figures.as_ref().ok();
    if outcome.accepted && previous.provisioned_generation != generation {
        let note = format!(
            "generation {} applied: api {}, workers {desired_workers}",
            generation.unwrap_or(0),
            pool.spec.api.replicas
        );
        publish(ctx, pool, EventType::Normal, "Applied", "Reconcile", note).await;
    }
    if pool.spec.worker.autoscale.is_some()
        && current_workers.is_some_and(|current| current != desired_workers)
    {
        let note = format!(
            "workers {} -> {desired_workers} for a backlog of {}",
            current_workers.unwrap_or(0),
            figures.map_or(0, |f| f.backlog())
        );
        publish(ctx, pool, EventType::Normal, "Scaled", "Autoscale", note).await;
    }
    let changed = status::changes(previous, status);
    let ready = status.conditions.first().map(|c| c.reason.as_str());
    tracing::info!(
        pool = %key(pool), generation,
        api_ready = status.api.as_ref().map(|a| a.ready),
        workers_ready = status.workers.as_ref().map(|w| w.ready), desired_workers,
        pending = figures.map(|f| f.pending), in_flight = figures.map(|f| f.in_flight),
        dead_letters = figures.map(|f| f.dead_letters), result = ready,
        changed = %if changed.is_empty() { "nothing".to_owned() } else { changed.join("; ") },
        "reconciled"
    );
}

/// The end of a reconcile: a Warning for a queue problem, and when to look again.
async fn finish(
    pool: &WorkPool,
    ctx: &Context,
    outcome: QueueOutcome,
    held: Option<&str>,
) -> Result<Action, Error> {
    match outcome.figures {
        Err(err) => {
            let note = with_note(&err, held);
            publish(
                ctx,
                pool,
                EventType::Warning,
                err.category(),
                "Reconcile",
                note,
            )
            .await;
            if err.is_permanent() {
                // NATS refuses this spec: retrying will not help until the spec changes.
                Ok(Action::await_change())
            } else {
                Err(err)
            }
        }
        Ok(_) => {
            ctx.failures.lock().await.remove(&key(pool));
            Ok(Action::requeue(if pool.spec.worker.autoscale.is_some() {
                RESYNC_AUTOSCALED
            } else {
                RESYNC
            }))
        }
    }
}

/// Reports an error that retrying cannot fix as conditions and a Warning event.
async fn report_stuck(
    pool: &WorkPool,
    ctx: &Context,
    previous: &WorkPoolStatus,
    error: &Error,
) -> Result<(), Error> {
    let generation = pool.metadata.generation;
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.conditions = vec![
        condition(
            status::READY,
            false,
            error.category(),
            error.to_string(),
            generation,
            &previous.conditions,
        ),
        condition(
            status::QUEUE_READY,
            false,
            error.category(),
            error.to_string(),
            generation,
            &previous.conditions,
        ),
    ];
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    patch_status(ctx, &namespace, &pool.name_any(), &status).await?;
    publish(
        ctx,
        pool,
        EventType::Warning,
        error.category(),
        "Reconcile",
        error.to_string(),
    )
    .await;
    Ok(())
}

pub(crate) async fn patch_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &WorkPoolStatus,
) -> Result<(), Error> {
    let api: Api<WorkPool> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "workpool.dev/v1alpha1",
        "kind": "WorkPool",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(figures: Result<QueueFigures, Error>) -> QueueOutcome {
        QueueOutcome {
            accepted: figures.is_ok(),
            figures,
        }
    }

    #[test]
    fn an_unreachable_nats_is_retried_at_a_fixed_interval_however_long_it_lasts() {
        let down = Error::NatsUnreachable("connection refused".into());
        for failures in [1, 5, 50] {
            assert_eq!(retry_after(&down, failures), NATS_RETRY);
        }
        let refused = Error::NatsConfigRejected("no".into());
        assert_eq!(retry_after(&refused, 1), BACKOFF_FIRST);
        assert_eq!(retry_after(&refused, 3), BACKOFF_FIRST * 4);
        assert_eq!(retry_after(&refused, 50), BACKOFF_MAX);
    }

    #[test]
    fn only_settings_nats_accepted_reach_the_pods() {
        let old = PoolSpec::from_json(r#"{"worker": {"concurrency": 2}}"#).expect("old");
        let new = PoolSpec::from_json(r#"{"worker": {"concurrency": 8}}"#).expect("new");
        let accepted = outcome(Ok(QueueFigures::default()));
        assert_eq!(
            rollout_spec(&accepted, &new, Some(old.clone())),
            Some(new.clone())
        );
        assert_eq!(held_back(&accepted, &new, Some(&new)), None);

        let refused = outcome(Err(Error::NatsConfigRejected("no".into())));
        assert_eq!(rollout_spec(&refused, &new, Some(old.clone())), None);
        assert_eq!(
            rollout_spec(&refused, &new, None),
            None,
            "no pods for a refused spec"
        );
        assert!(held_back(&refused, &new, None).is_some());

        let down = outcome(Err(Error::NatsUnreachable("down".into())));
        let kept = rollout_spec(&down, &new, Some(old.clone()));
        assert_eq!(kept, Some(old), "pods keep what NATS last accepted");
        assert!(held_back(&down, &new, kept.as_ref()).is_some());
        let fresh = rollout_spec(&down, &new, None);
        assert_eq!(fresh, Some(new.clone()), "a pool without pods gets them");
        assert_eq!(held_back(&down, &new, fresh.as_ref()), None);
    }
}
