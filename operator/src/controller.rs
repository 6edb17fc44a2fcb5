//! The WorkPool controller: reconcile a pool into its children, NATS objects and status.
//!
//! This module does the talking (Kubernetes, NATS, events); what to roll out
//! ([`crate::rollout`]), the status ([`crate::status`]) and when to look again
//! ([`crate::requeue`]) are decided by plain functions.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use workpool_core::crd::{ScheduleStatus, WorkPool, WorkPoolStatus};
use workpool_core::schedule::Schedule;
use workpool_core::{PoolNames, PoolSpec};
use workpool_runtime::nats_auth::AccountKey;

use crate::applied::{Applied, Digest};
use crate::children::{self, Component, DefaultImage, PoolContext};
use crate::error::Error;
use crate::metrics::OperatorMetrics;
use crate::queue::{self, NatsClients};
use crate::rates::{Sample, Samples};
use crate::requeue::{self, Failures};
use crate::rollout::{self, QueueOutcome};
use crate::schedules::{self, TickNotQueued};
use crate::status::{self, Observed, Pods};
use crate::triggers;
use crate::wake::Waker;

/// The one field manager of every object the operator applies.
pub const MANAGER: &str = "workpool-operator";
/// Keeps a WorkPool until its NATS objects are gone (or retained).
pub const FINALIZER: &str = "workpool.dev/nats-objects";

/// Reconciles in flight at once. Unbounded, 1,000 new pools were 1,000 reconciles
/// creating streams and consumers at once: NATS timed out on most (1,370 failed
/// reconciles in the benchmark) and the operator held 226 MiB.
pub const MAX_CONCURRENT_RECONCILES: u16 = 32;

/// Handles shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    pub nats: NatsClients,
    pub image: DefaultImage,
    /// Failed reconciles in a row per pool, for the backoff of `error_policy`.
    failures: Failures,
    /// The children last applied per pool, so unchanged ones are not applied again.
    pub applied: Arc<Applied>,
    /// The spec each pool's NATS objects were last made for, likewise.
    pub provisioned: Applied,
    /// The pools the controller knows (set once it runs), to pace resyncs by.
    pools: std::sync::OnceLock<Store<WorkPool>>,
    /// The account key that signs each pool's NATS user, when the operator mints them.
    pub pool_users: Option<Arc<AccountKey>>,
    /// Each pool's last look at its work stream, for the rates in its status.
    pub samples: Samples,
    /// Pools held at no workers, woken by their first submission.
    pub waker: Waker,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<OperatorMetrics>,
        image: DefaultImage,
        nats: NatsClients,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            nats,
            image,
            failures: Failures::default(),
            applied: Arc::default(),
            provisioned: Applied::default(),
            pools: std::sync::OnceLock::new(),
            pool_users: None,
            samples: Samples::default(),
            waker: Waker::default(),
        }
    }

    /// Mint each pool a NATS user signed by `account` (docs/security.md).
    pub fn with_pool_users(mut self, account: Option<Arc<AccountKey>>) -> Self {
        self.pool_users = account;
        self
    }

    /// How many pools the controller knows.
    fn pool_count(&self) -> usize {
        self.pools.get().map_or(0, Store::len)
    }
}

/// The recorder of this replica's events.
pub fn recorder(client: &Client, identity: &str) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: "workpool-operator".into(),
            instance: Some(identity.to_owned()),
        },
    )
}

/// An Api over one namespace, or all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Reconciles the WorkPools of `namespace` (of all namespaces when `None`) when they
/// change, when a Deployment they own changes readiness, and when a child Deployment or
/// Service goes away ([`triggers`]), until `until` completes.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    until: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (client, namespace) = (ctx.client.clone(), namespace.as_deref());
    let (pools, store) = triggers::pools(scoped::<WorkPool>(&client, namespace));
    let _ = ctx.pools.set(store.clone());
    let applied = ctx.applied.clone();
    Controller::for_stream(pools, store)
        .with_config(controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES))
        .owns_stream(triggers::deployments(
            scoped::<Deployment>(&client, namespace),
            applied.clone(),
        ))
        .owns_stream(triggers::deleted(
            scoped::<Service>(&client, namespace),
            applied,
        ))
        .reconcile_on(ctx.waker.woken())
        .graceful_shutdown_on(until)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
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
    let pool_key = key(&pool);
    let api: Api<WorkPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let pool = with_finalizer(&api, pool).await?;
    let result = finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            finalizer::Event::Apply(pool) => apply(&pool, &ctx).await,
            finalizer::Event::Cleanup(pool) => crate::deletion::cleanup(&pool, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    if result.is_ok() {
        ctx.failures.forget(&pool_key);
        ctx.metrics.reconciled();
    }
    result
}

/// Adds the finalizer to a pool that lacks it (and is not being deleted) and returns the
/// pool as the apiserver answered, so the same reconcile goes on to apply it: kube's
/// `finalizer` alone adds it and waits for the next reconcile. The write changes neither
/// generation nor annotations, so it triggers nothing ([`triggers`]). The merge patch
/// carries the resourceVersion read, so a concurrent change makes it fail (and retry)
/// rather than drop another finalizer.
async fn with_finalizer(api: &Api<WorkPool>, pool: Arc<WorkPool>) -> Result<Arc<WorkPool>, Error> {
    if pool.meta().deletion_timestamp.is_some() || pool.finalizers().iter().any(|f| f == FINALIZER)
    {
        return Ok(pool);
    }
    let mut finalizers = pool.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": pool.resource_version(),
        }
    });
    let patched = api
        .patch(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(Arc::new(patched))
}

/// Failed reconciles are retried after [`requeue::retry_after`] (a backoff over the
/// failures in a row, which a successful reconcile ends); the error is counted here and
/// reported as a Warning event by `apply` itself.
pub fn error_policy(pool: Arc<WorkPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.category());
    tracing::warn!(pool = %key(&pool), category = error.category(), %error, "reconcile failed");
    let failures = ctx.failures.record(&key(&pool));
    Action::requeue(requeue::retry_after(error, failures))
}

/// One reconcile of a pool that exists: NATS first, then the children with the
/// settings NATS accepted, then status, events and when to look again.
async fn apply(pool: &WorkPool, ctx: &Context) -> Result<Action, Error> {
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = pool.name_any();
    let previous = pool.status.clone().unwrap_or_default();
    let spec = match pool.spec.pool_spec() {
        Ok(spec) => spec,
        Err(err) => return report_stuck(pool, ctx, &previous, &Error::InvalidSpec(err)).await,
    };
    let names = PoolNames::new(&namespace, &name).map_err(Error::InvalidName)?;
    let outcome = reach_queue(ctx, pool, &names, &spec).await;

    let current = current_deployments(ctx, &namespace, &name).await?;
    let current_workers = current.worker_replicas();
    let workers = rollout::desired_workers(&pool.spec.worker, &outcome.figures, current_workers);
    let rollout = rollout::rollout_spec(&outcome, &spec, current.deployed_spec());
    let held = rollout::held_back(&outcome, &spec, rollout.as_ref());
    if current_workers.is_some_and(|current| workers < current) {
        // Before the Deployment shrinks, so the idle workers are the ones removed.
        crate::deletion_cost::mark_workers(&ctx.client, &namespace, &name).await;
    }
    let mut context = PoolContext::new(pool, &spec, &ctx.image)?;
    if ctx.pool_users.is_some() {
        context = context.with_minted_nats_user();
    }
    let deployments = apply_children(ctx, &context, rollout.as_ref(), current, workers).await?;
    if workers == 0 && pool.spec.worker.autoscale.is_some() {
        wake_on_work(ctx, pool, &names, &spec).await;
    }

    let rates = outcome.figures.as_ref().ok().and_then(|figures| {
        let sample = Sample {
            at: tokio::time::Instant::now(),
            published: figures.published,
            stored: figures.stored,
        };
        ctx.samples.record(&key(pool), sample)
    });
    let seen = Observed {
        rates,
        namespace: &namespace,
        name: &name,
        generation: pool.metadata.generation,
        queue: &outcome,
        held,
        api: Pods {
            ready: ready_count(deployments.api.as_ref()),
            wanted: pool.spec.api.replicas,
        },
        workers: Pods {
            ready: ready_count(deployments.worker.as_ref()),
            wanted: workers,
        },
    };
    let status = status::pool_status(&seen, &previous);
    if status != previous {
        patch_status(ctx, &namespace, &name, &status).await?;
    }
    let figures = outcome.figures.as_ref().ok().copied();
    ctx.metrics.queue(&namespace, &name, figures);
    publish_reconcile_events(ctx, pool, &previous, &seen, current_workers).await;
    log_reconciled(pool, &previous, &status, &outcome);
    // Autoscaling reads the backlog often; schedules queue their ticks ahead often.
    let often = pool.spec.worker.autoscale.is_some() || !pool.spec.schedules.is_empty();
    let resync = requeue::resync_after(ctx.pool_count(), often);
    requeue::after_reconcile(outcome.figures, resync)
}

/// Provisions the pool's NATS objects and reads its queue figures.
async fn reach_queue(
    ctx: &Context,
    pool: &WorkPool,
    names: &PoolNames,
    spec: &PoolSpec,
) -> QueueOutcome {
    let js = match ctx.nats.jetstream(&spec.nats.url).await {
        Ok(js) => js,
        Err(err) => return QueueOutcome::failed(err),
    };
    // NATS objects already made for this spec are not made again on every resync: that
    // was some twenty JetStream API calls per pool and look.
    let pool_key = key(pool);
    let digest = Digest::default().with(spec).finish();
    let mut adopted = None;
    if !ctx.provisioned.is_current(&pool_key, digest) {
        if never_provisioned(pool) {
            // What an earlier pool of this name left is taken over with its contents;
            // the status and an event say what.
            match queue::existing(&js, names).await {
                Ok(found) => adopted = found,
                Err(err) => return QueueOutcome::failed(err),
            }
        }
        if let Err(err) = queue::ensure(&js, names, spec).await {
            return QueueOutcome::failed(err);
        }
        ctx.provisioned.record(&pool_key, digest);
    }
    let ticks = queue_ticks(&js, pool, names).await;
    let figures = queue::figures(&js, names, spec).await;
    if figures.is_err() {
        // A stream or consumer may be gone: make them again next time.
        ctx.provisioned.forget(&pool_key);
    }
    QueueOutcome {
        accepted: true,
        figures,
        adopted,
        ticks,
    }
}

/// Reconciles the pool, held at no workers by its autoscaler, as soon as work arrives.
async fn wake_on_work(ctx: &Context, pool: &WorkPool, names: &PoolNames, spec: &PoolSpec) {
    let armed = match ctx.nats.jetstream(&spec.nats.url).await {
        Ok(js) => ctx
            .waker
            .arm(&js.client(), names, ObjectRef::from_obj(pool))
            .await
            .map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    if let Err(err) = armed {
        tracing::warn!(%err, "not listening for the first work of a pool with no workers; the resync will see it");
    }
}

/// Queues the next ticks of the pool's schedules, if it has any.
async fn queue_ticks(
    js: &async_nats::jetstream::Context,
    pool: &WorkPool,
    names: &PoolNames,
) -> Option<Result<Vec<ScheduleStatus>, TickNotQueued>> {
    if pool.spec.schedules.is_empty() {
        return None;
    }
    // Checked with the rest of the spec (`pool_spec`) before this reconcile got here.
    let schedules = Schedule::all(&pool.spec.schedules).ok()?;
    let uid = pool.metadata.uid.as_deref().unwrap_or_default();
    Some(schedules::queue_ticks(js, names, uid, &schedules, chrono::Utc::now()).await)
}

/// Whether NATS never accepted any generation of this pool (its status says so).
fn never_provisioned(pool: &WorkPool) -> bool {
    pool.status
        .as_ref()
        .is_none_or(|status| status.provisioned_generation.is_none())
}

/// A pool's api and worker Deployments.
struct Deployments {
    api: Option<Deployment>,
    worker: Option<Deployment>,
}

impl Deployments {
    /// The replicas the worker Deployment asks for now.
    fn worker_replicas(&self) -> Option<i32> {
        self.worker.as_ref().and_then(|d| d.spec.as_ref()?.replicas)
    }

    /// The settings the worker pods run with now.
    fn deployed_spec(&self) -> Option<PoolSpec> {
        self.worker.as_ref().and_then(children::deployed_spec)
    }
}

fn ready_count(deployment: Option<&Deployment>) -> i32 {
    deployment
        .and_then(|d| d.status.as_ref()?.ready_replicas)
        .unwrap_or(0)
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
    let rolled_out = rollout.map(|spec| {
        let context = PoolContext {
            spec,
            ..context.clone()
        };
        let api = context.deployment(Component::Api, context.pool.spec.api.replicas);
        (api, context.deployment(Component::Worker, workers))
    });
    let account = context.service_account();
    let (role, binding) = (context.role(), context.role_binding());
    let services = [context.api_service(), context.worker_service()];
    let budgets = [Component::Api, Component::Worker].map(|c| context.disruption_budget(c));
    let digest = Digest::default()
        .with(&account)
        .with(&role)
        .with(&binding)
        .with(&rolled_out)
        .with(&services)
        .with(&budgets)
        .finish();
    let pool = key(context.pool);
    if ctx.applied.is_current(&pool, digest) {
        return Ok(current);
    }
    ensure_peer_secret(client, context).await?;
    ensure_webhook_secret(client, context).await?;
    ensure_nats_user(ctx, context).await?;
    apply_child(client, namespace, &account).await?;
    apply_child(client, namespace, &role).await?;
    apply_child(client, namespace, &binding).await?;
    let deployments = match rolled_out {
        Some((api, worker)) => Deployments {
            api: Some(apply_child(client, namespace, &api).await?),
            worker: Some(apply_child(client, namespace, &worker).await?),
        },
        None => current,
    };
    for service in &services {
        apply_child(client, namespace, service).await?;
    }
    for budget in &budgets {
        apply_child(client, namespace, budget).await?;
    }
    ctx.applied.record(&pool, digest);
    Ok(deployments)
}

/// Creates the pool's peer key where none exists (it is never replaced: every pod of
/// the pool must hold the same one).
async fn ensure_peer_secret(client: &Client, context: &PoolContext<'_>) -> Result<(), Error> {
    let mut bytes = [0u8; workpool_core::peer_auth::KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|err| Error::Random(err.to_string()))?;
    let key = workpool_core::peer_auth::PeerKey::from_bytes(bytes);
    create_once(client, context, &context.peer_secret(&key)).await
}

/// Creates the pool's webhook key where none exists (never replaced: receivers check
/// signatures with it). Every pool has one, so turning callbacks on later needs no restart
/// of anything but the workers the spec change rolls anyway.
async fn ensure_webhook_secret(client: &Client, context: &PoolContext<'_>) -> Result<(), Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| Error::Random(err.to_string()))?;
    create_once(client, context, &context.webhook_secret(hex::encode(bytes))).await
}

/// Mints the pool's NATS user where none exists, unless the pool brings its own
/// credentials. Like the peer key it is never replaced (pods would disagree); a deleted
/// Secret is made again, with a new user, the next time the pool's children are applied
/// (a spec change, or an operator restart).
async fn ensure_nats_user(ctx: &Context, context: &PoolContext<'_>) -> Result<(), Error> {
    let Some(account) = &ctx.pool_users else {
        return Ok(());
    };
    if context.pool.spec.nats.credentials_secret.is_some() {
        return Ok(());
    }
    let names = PoolNames::new(&context.namespace, &context.name).map_err(Error::InvalidName)?;
    let user = format!("{}/{}", context.namespace, context.name);
    let creds = account
        .user_creds(&user, Some(&names.permissions()))
        .map_err(|err| Error::NatsCredentials(err.into()))?;
    create_once(&ctx.client, context, &context.nats_user_secret(creds)).await
}

/// Creates a Secret of the pool's; one that exists already is kept as it is. The
/// operator may create Secrets but not read them.
async fn create_once(
    client: &Client,
    context: &PoolContext<'_>,
    secret: &Secret,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &context.namespace);
    match api.create(&PostParams::default(), secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err.into()),
    }
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

/// The events of a reconcile: `Applied` when NATS accepted a new generation, `Scaled`
/// when the autoscaler changed the worker count from `current_workers`, a Warning for a
/// queue problem.
async fn publish_reconcile_events(
    ctx: &Context,
    pool: &WorkPool,
    previous: &WorkPoolStatus,
    seen: &Observed<'_>,
    current_workers: Option<i32>,
) {
    let (generation, outcome, workers) = (seen.generation, seen.queue, seen.workers.wanted);
    if outcome.accepted && previous.provisioned_generation != generation {
        let note = format!(
            "generation {} applied: api {}, workers {workers}",
            generation.unwrap_or(0),
            pool.spec.api.replicas
        );
        publish(ctx, pool, EventType::Normal, "Applied", "Reconcile", note).await;
    }
    if let Some(Err(err)) = &outcome.ticks {
        let note = err.to_string();
        publish(
            ctx,
            pool,
            EventType::Warning,
            "ScheduleFailed",
            "Schedule",
            note,
        )
        .await;
    }
    if let Some(adopted) = &outcome.adopted {
        let note = format!(
            "took over the existing {} with {} messages, {} records and {} dead letters",
            adopted.objects.join(", "),
            adopted.messages,
            adopted.records,
            adopted.dead_letters
        );
        publish(ctx, pool, EventType::Normal, "Adopted", "Reconcile", note).await;
    }
    if let (Some(_), Some(current)) = (&pool.spec.worker.autoscale, current_workers)
        && current != workers
    {
        let backlog = outcome.figures.as_ref().map_or(0, |f| f.backlog());
        let note = format!("workers {current} -> {workers} for a backlog of {backlog}");
        publish(ctx, pool, EventType::Normal, "Scaled", "Autoscale", note).await;
    }
    if let Err(err) = &outcome.figures {
        let note = status::queue_message(err, seen.held);
        let reason = err.category();
        publish(ctx, pool, EventType::Warning, reason, "Reconcile", note).await;
    }
}

/// The one log line of a reconcile: the figures and what changed.
fn log_reconciled(
    pool: &WorkPool,
    previous: &WorkPoolStatus,
    status: &WorkPoolStatus,
    outcome: &QueueOutcome,
) {
    let figures = outcome.figures.as_ref().ok();
    let changed = status::changes(previous, status);
    let ready = status.conditions.first().map(|c| c.reason.as_str());
    tracing::info!(
        pool = %key(pool), generation = pool.metadata.generation,
        api_ready = status.api.as_ref().map(|a| a.ready),
        workers_ready = status.workers.as_ref().map(|w| w.ready),
        desired_workers = status.workers.as_ref().map(|w| w.desired),
        pending = figures.map(|f| f.pending), in_flight = figures.map(|f| f.in_flight),
        dead_letters = figures.map(|f| f.dead_letters), result = ready,
        changed = %if changed.is_empty() { "nothing".to_owned() } else { changed.join("; ") },
        "reconciled"
    );
}

/// Reports an error that retrying cannot fix as conditions and a Warning event, and
/// waits for the pool to change.
async fn report_stuck(
    pool: &WorkPool,
    ctx: &Context,
    previous: &WorkPoolStatus,
    error: &Error,
) -> Result<Action, Error> {
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let status = status::stuck_status(previous, pool.metadata.generation, error);
    patch_status(ctx, &namespace, &pool.name_any(), &status).await?;
    let (reason, note) = (error.category(), error.to_string());
    publish(ctx, pool, EventType::Warning, reason, "Reconcile", note).await;
    Ok(Action::await_change())
}
