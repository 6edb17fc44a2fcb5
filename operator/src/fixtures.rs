//! Values the unit tests share: pools and the errors a reconcile meets.

use workpool_core::crd::WorkPool;
use workpool_runtime::provision::ProvisionError;

use crate::error::{Error, NatsError};

/// NATS did not answer.
pub fn unreachable() -> Error {
    Error::NatsUnreachable(NatsError::Reconnecting {
        server: "nats://nats:4222".into(),
    })
}

/// NATS answered and refused the spec.
pub fn refused() -> Error {
    Error::NatsConfigRejected(ProvisionError::PartitionNotEmpty {
        name: "p16".into(),
        pending: 1,
    })
}

/// The WorkPool `ns/demo` (uid `u-1`, generation 3) with this spec; `nats.url` is filled
/// in when the spec has no `nats`.
pub fn pool(spec: serde_json::Value) -> WorkPool {
    let mut spec = spec;
    if spec.get("nats").is_none() {
        spec["nats"] = serde_json::json!({"url": "nats://nats:4222"});
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "workpool.dev/v1alpha1",
        "kind": "WorkPool",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": 3},
        "spec": spec,
    }))
    .expect("a valid WorkPool")
}
