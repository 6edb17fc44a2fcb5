//! The WorkPool controller: reconcile a pool into its children, NATS objects and status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use workpool_core::PoolNames;
use workpool_core::crd::{DeletionPolicy, QueueStatus, ReplicaStatus, WorkPool, WorkPoolStatus};

use crate::children::{self, Component, DefaultImage, PoolContext};
use crate::error::Error;
use crate::metrics::OperatorMetrics;
use crate::queue::{self, NatsClients, QueueFigures};
use crate::status::{self, condition};

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

/// Handles shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    pub nats: NatsClients,
    pub image: DefaultImage,
    failures: Mutex<HashMap<String, u32>>,
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
        }
    }
}

fn key(pool: &WorkPool) -> String {
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
            finalizer::Event::Cleanup(pool) => cleanup(&pool, &ctx).await,
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
    let exponent = failures.unwrap_or(1).saturating_sub(1).min(10);
    Action::requeue((BACKOFF_FIRST * 2u32.pow(exponent)).min(BACKOFF_MAX))
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

async fn nats_credentials(
    ctx: &Context,
    namespace: &str,
    pool: &WorkPool,
) -> Result<Option<String>, Error> {
    let Some(secret_name) = &pool.spec.nats.credentials_secret else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets.get(secret_name).await?;
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

async fn publish(
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

async fn apply(pool: &WorkPool, ctx: &Context) -> Result<Action, Error> {
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = pool.name_any();
    let generation = pool.metadata.generation;
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

    // NATS first, but children are applied whatever NATS says: pods wait for it.
    let queue_result: Result<QueueFigures, Error> = async {
        let credentials = nats_credentials(ctx, &namespace, pool).await?;
        let js = ctx.nats.jetstream(&spec.nats.url, credentials).await?;
        queue::ensure(&js, &names, &spec).await?;
        queue::figures(&js, &names, &spec).await
    }
    .await;

    let owner = pool
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let context = PoolContext {
        pool,
        name: name.clone(),
        namespace: namespace.clone(),
        owner,
        spec: &spec,
        image: &ctx.image,
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let worker_name = children::deployment_name(&name, Component::Worker);
    let current_workers = deployments
        .get_opt(&worker_name)
        .await?
        .and_then(|d| d.spec.and_then(|s| s.replicas));
    let desired_workers = match (&pool.spec.worker.autoscale, &queue_result) {
        (Some(scale), Ok(figures)) => queue::autoscaled_replicas(
            figures.backlog(),
            scale.target_backlog_per_replica,
            scale.min,
            scale.max,
        ),
        // Without a backlog reading, keep what runs now: never guess.
        (Some(scale), Err(_)) => current_workers.unwrap_or(scale.min),
        (None, _) => pool.spec.worker.replicas,
    };

    let client = &ctx.client;
    apply_child::<ServiceAccount>(client, &namespace, &context.service_account()).await?;
    apply_child::<Role>(client, &namespace, &context.role()).await?;
    apply_child::<RoleBinding>(client, &namespace, &context.role_binding()).await?;
    let api_deployment = apply_child(
        client,
        &namespace,
        &context.deployment(Component::Api, pool.spec.api.replicas),
    )
    .await?;
    apply_child::<Service>(client, &namespace, &context.api_service()).await?;
    let worker_deployment = apply_child(
        client,
        &namespace,
        &context.deployment(Component::Worker, desired_workers),
    )
    .await?;
    apply_child::<Service>(client, &namespace, &context.worker_service()).await?;
    for component in [Component::Api, Component::Worker] {
        apply_child::<PodDisruptionBudget>(
            client,
            &namespace,
            &context.disruption_budget(component),
        )
        .await?;
    }

    let api_ready = ready_count(&api_deployment);
    let workers_ready = ready_count(&worker_deployment);
    let queue_condition = match &queue_result {
        Ok(_) => condition(
            status::QUEUE_READY,
            true,
            "Provisioned",
            "stream, bucket and consumers match the spec".into(),
            generation,
            &previous.conditions,
        ),
        Err(err) => condition(
            status::QUEUE_READY,
            false,
            err.category(),
            err.to_string(),
            generation,
            &previous.conditions,
        ),
    };
    let api_ok = api_ready >= pool.spec.api.replicas.min(1);
    let workers_ok = workers_ready >= desired_workers.min(1);
    let queue_ok = queue_result.is_ok();
    let ready_reason = match (queue_ok, api_ok, workers_ok) {
        (true, true, true) => "Ready",
        (false, _, _) => "QueueNotReady",
        (_, false, _) => "ApiUnavailable",
        _ => "WorkersUnavailable",
    };
    let conditions = vec![
        condition(
            status::READY,
            queue_ok && api_ok && workers_ok,
            ready_reason,
            format!(
                "api {api_ready}/{}, workers {workers_ready}/{desired_workers}",
                pool.spec.api.replicas
            ),
            generation,
            &previous.conditions,
        ),
        queue_condition,
        condition(
            status::API_AVAILABLE,
            api_ok,
            if api_ok {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            format!("{api_ready} of {} api pods ready", pool.spec.api.replicas),
            generation,
            &previous.conditions,
        ),
        condition(
            status::WORKERS_AVAILABLE,
            workers_ok,
            if workers_ok {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            format!("{workers_ready} of {desired_workers} worker pods ready"),
            generation,
            &previous.conditions,
        ),
    ];
    let figures = queue_result.as_ref().ok().copied();
    ctx.metrics.queue(&namespace, &name, figures);
    let status = WorkPoolStatus {
        observed_generation: generation,
        conditions,
        api: Some(ReplicaStatus::new(
            api_ready,
            pool.spec.api.replicas,
            children::selector_string(&name, Component::Api),
        )),
        workers: Some(ReplicaStatus::new(
            workers_ready,
            desired_workers,
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
    };
    patch_status(ctx, &namespace, &name, &status).await?;
    let changed = crate::status::changes(&previous, &status);

    if previous.observed_generation != generation {
        publish(
            ctx,
            pool,
            EventType::Normal,
            "Applied",
            "Reconcile",
            format!(
                "generation {} applied: api {}, workers {desired_workers}",
                generation.unwrap_or(0),
                pool.spec.api.replicas
            ),
        )
        .await;
    }
    if pool.spec.worker.autoscale.is_some()
        && current_workers.is_some_and(|current| current != desired_workers)
    {
        let backlog = figures.map_or(0, |f| f.backlog());
        publish(
            ctx,
            pool,
            EventType::Normal,
            "Scaled",
            "Autoscale",
            format!(
                "workers {} -> {desired_workers} for a backlog of {backlog}",
                current_workers.unwrap_or(0)
            ),
        )
        .await;
    }
    tracing::info!(
        pool = %key(pool), generation, api_ready, workers_ready, desired_workers,
        pending = figures.map(|f| f.pending), in_flight = figures.map(|f| f.in_flight),
        dead_letters = figures.map(|f| f.dead_letters), result = ready_reason,
        changed = %if changed.is_empty() { "nothing".to_owned() } else { changed.join("; ") },
        "reconciled"
    );
    match queue_result {
        Err(err) => {
            publish(
                ctx,
                pool,
                EventType::Warning,
                err.category(),
                "Reconcile",
                err.to_string(),
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

async fn patch_status(
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

/// Deletes the pool's NATS objects unless `deletionPolicy: Retain`; Kubernetes children
/// go with the garbage collector through their owner references.
async fn cleanup(pool: &WorkPool, ctx: &Context) -> Result<Action, Error> {
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = pool.name_any();
    ctx.metrics.forget(&namespace, &name);
    if pool.spec.deletion_policy == DeletionPolicy::Retain {
        publish(
            ctx,
            pool,
            EventType::Normal,
            "Retained",
            "Cleanup",
            "NATS stream and bucket kept (deletionPolicy: Retain)".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let names =
        PoolNames::new(&namespace, &name).map_err(|err| Error::InvalidSpec(err.to_string()))?;
    let credentials = nats_credentials(ctx, &namespace, pool).await?;
    let js = ctx.nats.jetstream(&pool.spec.nats.url, credentials).await?;
    queue::remove(&js, &names).await?;
    publish(
        ctx,
        pool,
        EventType::Normal,
        "Deleted",
        "Cleanup",
        format!("NATS stream {} and bucket deleted", names.stream()),
    )
    .await;
    tracing::info!(pool = %key(pool), "NATS objects deleted");
    Ok(Action::await_change())
}
