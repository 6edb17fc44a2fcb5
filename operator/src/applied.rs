//! What the operator last applied for each pool, so a reconcile that would apply the same
//! children (or make the same NATS objects) again writes nothing. A resync of 1,000
//! healthy pools would otherwise send some 9,000 server-side applies and 20,000
//! JetStream API calls that change nothing.
//!
//! A pool's entry goes when one of its children is deleted (the trigger streams forget
//! it), when the pool goes, and [`REAPPLY_EVERY`] after it was made, so a child someone
//! edited by hand is put back within that time at the latest.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::{Resource, ResourceExt};
use serde::Serialize;

/// How long a pool's children count as applied without being applied again.
pub const REAPPLY_EVERY: Duration = Duration::from_secs(600);

/// The label naming the pool a child belongs to.
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Per pool (`namespace/name`): the digest of the children last applied, and when.
#[derive(Debug, Default)]
pub struct Applied {
    by_pool: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Applied {
    /// Whether `digest` is what was applied for `pool`, recently enough.
    pub fn is_current(&self, pool: &str, digest: u64) -> bool {
        self.lock()
            .get(pool)
            .is_some_and(|(applied, at)| *applied == digest && at.elapsed() < REAPPLY_EVERY)
    }

    /// Notes that the children of `digest` were applied for `pool` just now.
    pub fn record(&self, pool: &str, digest: u64) {
        self.lock()
            .insert(pool.to_owned(), (digest, Instant::now()));
    }

    pub fn forget(&self, pool: &str) {
        self.lock().remove(pool);
    }

    /// Forgets the pool `child` belongs to (by its instance label), so its next
    /// reconcile applies everything again.
    pub fn forget_owner_of(&self, child: &impl Resource) {
        if let Some(pool) = child.labels().get(INSTANCE_LABEL) {
            let namespace = child.namespace().unwrap_or_default();
            self.forget(&format!("{namespace}/{pool}"));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        self.by_pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A digest of objects as they would be sent.
#[derive(Debug, Default)]
pub struct Digest(DefaultHasher);

impl Digest {
    pub fn with(mut self, object: &impl Serialize) -> Self {
        // Kubernetes objects always serialise; an empty digest input is harmless anyway.
        serde_json::to_vec(object)
            .unwrap_or_default()
            .hash(&mut self.0);
        self
    }

    pub fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_count_as_applied_until_forgotten() {
        let applied = Applied::default();
        let digest = Digest::default().with(&"a").finish();
        assert!(!applied.is_current("ns/demo", digest));
        applied.record("ns/demo", digest);
        assert!(applied.is_current("ns/demo", digest));
        assert!(!applied.is_current("ns/demo", Digest::default().with(&"b").finish()));
        assert!(!applied.is_current("ns/other", digest));
        let mut child = k8s_openapi::api::core::v1::Service::default();
        child.metadata.namespace = Some("ns".into());
        child.metadata.labels = Some([(INSTANCE_LABEL.to_owned(), "demo".to_owned())].into());
        applied.forget_owner_of(&child);
        assert!(!applied.is_current("ns/demo", digest));
    }
}
