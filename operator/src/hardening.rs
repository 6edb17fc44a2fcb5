//! What makes a pool's pods pass the `restricted` Pod Security Standard, and bounded:
//! a non-root user, no privilege escalation, no capabilities, the runtime's default
//! seccomp profile, a read-only root filesystem with a small writable `/tmp` for exec
//! handlers, and requests and limits where the WorkPool sets none (docs/security.md).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, PodSecurityContext, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::children::Component;

/// The image's own user and group (`nonroot`, as in distroless images).
pub const RUN_AS: i64 = 65532;
const SCRATCH_VOLUME: &str = "tmp";
/// Enough for an exec handler's scratch files; a pod that writes more is evicted.
const SCRATCH_LIMIT: &str = "64Mi";

pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// The writable `/tmp` on a read-only root: memory-backed, size-limited.
pub fn scratch() -> (Volume, VolumeMount) {
    let volume = Volume {
        name: SCRATCH_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(SCRATCH_LIMIT.into())),
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name: SCRATCH_VOLUME.into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    };
    (volume, mount)
}

/// The WorkPool's resources for `component`, or defaults sized from the benchmarks (an
/// idle process holds about 12 MiB, one after the suite's load under 40 MiB).
pub fn resources(
    component: Component,
    chosen: Option<&ResourceRequirements>,
) -> ResourceRequirements {
    if let Some(chosen) = chosen {
        return chosen.clone();
    }
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])
    };
    let (requests, limits) = match component {
        Component::Api => (quantities("100m", "64Mi"), quantities("1", "256Mi")),
        Component::Worker => (quantities("100m", "64Mi"), quantities("1", "512Mi")),
    };
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..Default::default()
    }
}
