//! The Kubernetes objects one WorkPool owns, built as plain values (no API calls), so
//! they are unit-tested and applied with one server-side-apply field manager.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, Service, ServiceAccount, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use workpool_core::PoolSpec;
use workpool_core::crd::{PullPolicy, WorkPool};

/// Port of the api's HTTP server in its pod.
pub const API_PORT: i32 = 8080;
/// Port of the worker's health and metrics server in its pod.
pub const WORKER_PORT: i32 = 8081;
/// The env var that hands a pod its pool's settings (JSON).
const SPEC_ENV: &str = "WORKPOOL_SPEC";
const AUTH_DIR: &str = "/etc/workpool/auth";
const NATS_DIR: &str = "/etc/workpool/nats";

/// Image used when neither the WorkPool nor the operator's flags name one.
#[derive(Debug, Clone)]
pub struct DefaultImage {
    pub repository: String,
    pub tag: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Api,
    Worker,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Worker => "worker",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Component::Api => "workpool-api",
            Component::Worker => "workpool-worker",
        }
    }

    fn port(self) -> i32 {
        match self {
            Component::Api => API_PORT,
            Component::Worker => WORKER_PORT,
        }
    }
}

/// Names of a pool's children.
pub fn deployment_name(pool: &str, component: Component) -> String {
    format!("{pool}-{}", component.as_str())
}

/// The headless Service whose EndpointSlices are the worker membership.
pub fn worker_service_name(pool: &str) -> String {
    format!("{pool}-workers")
}

pub fn service_account_name(pool: &str) -> String {
    format!("{pool}-workpool")
}

/// The pool settings a Deployment's pods run with (its `WORKPOOL_SPEC`), if it has any
/// that parse.
pub fn deployed_spec(deployment: &Deployment) -> Option<PoolSpec> {
    let template = deployment.spec.as_ref()?.template.spec.as_ref()?;
    let env = template.containers.first()?.env.as_ref()?;
    let text = env.iter().find(|e| e.name == SPEC_ENV)?.value.as_ref()?;
    PoolSpec::from_json(text).ok()
}

/// Labels every child and pod carries.
pub fn labels(pool: &str, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "workpool".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), pool.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "workpool-operator".to_owned(),
        ),
    ]);
    if let Some(component) = component {
        labels.insert(
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        );
    }
    labels
}

/// Annotations for annotation-based Prometheus scraping (the `kubernetes-pods` job of
/// Prometheus' example configuration, and the local cluster's Prometheus).
fn scrape_annotations(port: i32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), port.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ])
}

fn selector_labels(pool: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), pool.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// The label selector string of a component's pods (for status and the scale subresource).
pub fn selector_string(pool: &str, component: Component) -> String {
    selector_labels(pool, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Everything a child needs to know about its pool.
#[derive(Debug, Clone)]
pub struct PoolContext<'a> {
    pub pool: &'a WorkPool,
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub spec: &'a PoolSpec,
    pub image: &'a DefaultImage,
}

impl PoolContext<'_> {
    fn meta(&self, name: String, component: Option<Component>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels(&self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }

    pub fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(service_account_name(&self.name), None),
            ..Default::default()
        }
    }

    /// Workers watch their headless Service's EndpointSlices (membership) and read pods
    /// (the cluster view); nothing else.
    pub fn role(&self) -> Role {
        Role {
            metadata: self.meta(service_account_name(&self.name), None),
            rules: Some(vec![
                PolicyRule {
                    api_groups: Some(vec!["discovery.k8s.io".into()]),
                    resources: Some(vec!["endpointslices".into()]),
                    verbs: vec!["get".into(), "list".into(), "watch".into()],
                    ..Default::default()
                },
                PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["pods".into()]),
                    verbs: vec!["get".into(), "list".into(), "watch".into()],
                    ..Default::default()
                },
            ]),
        }
    }

    pub fn role_binding(&self) -> RoleBinding {
        let name = service_account_name(&self.name);
        RoleBinding {
            metadata: self.meta(name.clone(), None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name,
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            }]),
        }
    }

    fn image(&self) -> (String, String) {
        let spec_image = self.pool.spec.image.clone().unwrap_or_default();
        let repository = spec_image
            .repository
            .unwrap_or_else(|| self.image.repository.clone());
        let tag = spec_image.tag.unwrap_or_else(|| self.image.tag.clone());
        let policy = match spec_image.pull_policy.unwrap_or(PullPolicy::IfNotPresent) {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        };
        (format!("{repository}:{tag}"), policy.to_owned())
    }

    fn env(&self, component: Component) -> Vec<EnvVar> {
        let field = |path: &str| {
            Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let value = |name: &str, value: String| EnvVar {
            name: name.into(),
            value: Some(value),
            ..Default::default()
        };
        let from = |name: &str, path: &str| EnvVar {
            name: name.into(),
            value_from: field(path),
            ..Default::default()
        };
        let mut env = vec![
            from("POD_NAME", "metadata.name"),
            from("POD_NAMESPACE", "metadata.namespace"),
            from("POD_IP", "status.podIP"),
            from("WORKPOOL_NAMESPACE", "metadata.namespace"),
            value("WORKPOOL_POOL", self.name.clone()),
            value(
                SPEC_ENV,
                serde_json::to_string(self.spec).unwrap_or_default(),
            ),
            value("WORKPOOL_LISTEN", format!("0.0.0.0:{}", component.port())),
            // Cluster membership: the ready endpoints of the headless worker Service
            // (and, for the cluster view, of the api Service).
            value("WORKPOOL_WORKERS_SERVICE", worker_service_name(&self.name)),
        ];
        if component == Component::Api {
            env.push(value(
                "WORKPOOL_API_SERVICE",
                deployment_name(&self.name, Component::Api),
            ));
        }
        if component == Component::Worker {
            env.push(value("WORKPOOL_DRAIN_TIMEOUT", "25s".into()));
        }
        if component == Component::Api && self.pool.spec.api.auth.is_some() {
            env.push(value(
                "WORKPOOL_JWT_SECRET_FILE",
                format!("{AUTH_DIR}/jwt-secret"),
            ));
        }
        if self.pool.spec.nats.credentials_secret.is_some() {
            env.push(value("NATS_CREDS_FILE", format!("{NATS_DIR}/nats.creds")));
        }
        env
    }

    fn volumes(&self, component: Component) -> (Vec<Volume>, Vec<VolumeMount>) {
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        let mut secret = |name: &str, secret: &str, key: &str, path: &str, dir: &str| {
            volumes.push(Volume {
                name: name.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.into()),
                    items: Some(vec![KeyToPath {
                        key: key.into(),
                        path: path.into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: name.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..Default::default()
            });
        };
        if let (Component::Api, Some(auth)) = (component, &self.pool.spec.api.auth) {
            secret(
                "auth",
                &auth.jwt_secret_ref.name,
                &auth.jwt_secret_ref.key,
                "jwt-secret",
                AUTH_DIR,
            );
        }
        if let Some(creds) = &self.pool.spec.nats.credentials_secret {
            secret("nats-creds", creds, "nats.creds", "nats.creds", NATS_DIR);
        }
        (volumes, mounts)
    }

    /// The api or worker Deployment with `replicas` pods.
    pub fn deployment(&self, component: Component, replicas: i32) -> Deployment {
        let (image, pull_policy) = self.image();
        let probe = |path: &str| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(component.port()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        };
        let resources = match component {
            Component::Api => self.pool.spec.api.resources.clone(),
            Component::Worker => self.pool.spec.worker.resources.clone(),
        };
        let (volumes, mounts) = self.volumes(component);
        let container = Container {
            name: component.as_str().into(),
            image: Some(image),
            image_pull_policy: Some(pull_policy),
            command: Some(vec![component.binary().into()]),
            env: Some(self.env(component)),
            ports: Some(vec![ContainerPort {
                name: Some(if component == Component::Api {
                    "http".into()
                } else {
                    "metrics".into()
                }),
                container_port: component.port(),
                ..Default::default()
            }]),
            readiness_probe: Some(probe("/readyz")),
            liveness_probe: Some(Probe {
                initial_delay_seconds: Some(5),
                ..probe("/healthz")
            }),
            resources,
            volume_mounts: (!mounts.is_empty()).then_some(mounts),
            ..Default::default()
        };
        Deployment {
            metadata: self.meta(deployment_name(&self.name, component), Some(component)),
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(selector_labels(&self.name, component)),
                    ..Default::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString::Int(0)),
                        max_surge: Some(IntOrString::Int(1)),
                    }),
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(&self.name, Some(component))),
                        annotations: Some(scrape_annotations(component.port())),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(service_account_name(&self.name)),
                        containers: vec![container],
                        volumes: (!volumes.is_empty()).then_some(volumes),
                        // Workers drain for up to 25s after SIGTERM.
                        termination_grace_period_seconds: Some(if component == Component::Worker {
                            35
                        } else {
                            30
                        }),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The api's ClusterIP Service (port 80).
    pub fn api_service(&self) -> Service {
        Service {
            metadata: self.meta(
                deployment_name(&self.name, Component::Api),
                Some(Component::Api),
            ),
            spec: Some(ServiceSpec {
                selector: Some(selector_labels(&self.name, Component::Api)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The workers' headless Service: its EndpointSlices list the ready workers.
    pub fn worker_service(&self) -> Service {
        Service {
            metadata: self.meta(worker_service_name(&self.name), Some(Component::Worker)),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(selector_labels(&self.name, Component::Worker)),
                ports: Some(vec![ServicePort {
                    name: Some("metrics".into()),
                    port: WORKER_PORT,
                    target_port: Some(IntOrString::String("metrics".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// At most one pod of the component down at a time through voluntary disruptions;
    /// `maxUnavailable: 1` never blocks draining a node of a one-replica pool.
    pub fn disruption_budget(&self, component: Component) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.meta(deployment_name(&self.name, component), Some(component)),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&self.name, component)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_gives_back_the_settings_it_was_built_with() {
        let pool: WorkPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "workpool.dev/v1alpha1",
            "kind": "WorkPool",
            "metadata": {"name": "demo", "namespace": "ns", "uid": "u"},
            "spec": {"nats": {"url": "nats://nats:4222"}, "worker": {"concurrency": 7}},
        }))
        .expect("pool");
        let spec = pool.spec.pool_spec().expect("spec");
        let context = PoolContext {
            pool: &pool,
            name: "demo".into(),
            namespace: "ns".into(),
            owner: OwnerReference::default(),
            spec: &spec,
            image: &DefaultImage {
                repository: "r".into(),
                tag: "t".into(),
            },
        };
        let deployment = context.deployment(Component::Worker, 2);
        assert_eq!(deployed_spec(&deployment), Some(spec));
        assert_eq!(deployed_spec(&Deployment::default()), None);
    }
}
