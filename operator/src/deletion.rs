//! The finalizer's cleanup: a deleted WorkPool's NATS objects go before the WorkPool
//! does, unless they are retained or abandoned, or were never created.

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use workpool_core::PoolNames;
use workpool_core::crd::{DeletionPolicy, WorkPool};

use crate::controller::{Context, key, patch_status, publish};
use crate::error::Error;
use crate::queue::{self, redact};
use crate::status;

/// Annotation that releases a WorkPool being deleted without deleting its NATS objects,
/// when set to [`ABANDON`].
pub const ABANDON_ANNOTATION: &str = "workpool.dev/nats-objects";
pub const ABANDON: &str = "abandon";

/// Deletes the pool's NATS objects unless `deletionPolicy: Retain`; Kubernetes children
/// go with the garbage collector through their owner references. While NATS cannot be
/// reached, a pool whose NATS objects exist waits (a `Deleting` condition and a Warning
/// say why) until NATS answers or an admin sets [`ABANDON_ANNOTATION`].
pub async fn cleanup(pool: &WorkPool, ctx: &Context) -> Result<Action, Error> {
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = pool.name_any();
    ctx.metrics.forget(&namespace, &name);
    ctx.applied.forget(&key(pool));
    ctx.provisioned.forget(&key(pool));
    ctx.samples.forget(&key(pool));
    if pool.spec.deletion_policy == DeletionPolicy::Retain {
        let note = "NATS stream and bucket kept (deletionPolicy: Retain)".into();
        publish(ctx, pool, EventType::Normal, "Retained", "Cleanup", note).await;
        return Ok(Action::await_change());
    }
    let names = PoolNames::new(&namespace, &name).map_err(Error::InvalidName)?;
    let objects = format!("stream {} and bucket {}", names.stream(), names.bucket());
    let url = redact(&pool.spec.nats.url);
    if abandoned(pool) {
        let note = format!(
            "NATS {objects} left behind on {url} ({ABANDON_ANNOTATION}: {ABANDON}); delete them there by hand"
        );
        publish(ctx, pool, EventType::Warning, "Abandoned", "Cleanup", note).await;
        return Ok(Action::await_change());
    }
    let removed = async {
        let js = ctx.nats.jetstream(&pool.spec.nats.url).await?;
        queue::remove(&js, &names).await
    }
    .await;
    match removed {
        Ok(()) => {
            let note = format!("NATS {objects} deleted");
            publish(ctx, pool, EventType::Normal, "Deleted", "Cleanup", note).await;
            tracing::info!(pool = %key(pool), "NATS objects deleted");
            Ok(Action::await_change())
        }
        Err(err) if !ever_provisioned(pool) => {
            let note = format!(
                "NATS never accepted this pool's objects, so its deletion does not wait for NATS ({err})"
            );
            publish(ctx, pool, EventType::Normal, "Released", "Cleanup", note).await;
            Ok(Action::await_change())
        }
        Err(err) => {
            let message = format!(
                "deletion waits to delete NATS {objects} on {url}: {err}; to release the WorkPool \
                 and leave them behind, annotate it {ABANDON_ANNOTATION}={ABANDON}"
            );
            report_waiting(pool, ctx, &err, message).await?;
            Err(err)
        }
    }
}

fn abandoned(pool: &WorkPool) -> bool {
    pool.annotations()
        .get(ABANDON_ANNOTATION)
        .is_some_and(|value| value == ABANDON)
}

/// Whether NATS ever accepted the pool's objects. Queue figures in the status count too:
/// operators before `provisionedGeneration` existed recorded only those.
fn ever_provisioned(pool: &WorkPool) -> bool {
    pool.status
        .as_ref()
        .is_some_and(|s| s.provisioned_generation.is_some() || s.queue.is_some())
}

/// The `Deleting` condition and a Warning event that say why the deletion waits.
async fn report_waiting(
    pool: &WorkPool,
    ctx: &Context,
    err: &Error,
    message: String,
) -> Result<(), Error> {
    let namespace = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let status = status::deleting_status(
        pool.status.clone().unwrap_or_default(),
        pool.metadata.generation,
        err,
        message.clone(),
    );
    patch_status(ctx, &namespace, &pool.name_any(), &status).await?;
    publish(
        ctx,
        pool,
        EventType::Warning,
        err.category(),
        "Cleanup",
        message,
    )
    .await;
    Ok(())
}
