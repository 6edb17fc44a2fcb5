//! The Kubernetes objects one WorkPool owns, built as plain values (no API calls): the
//! tests below check them without an apiserver, and the controller applies them with one
//! server-side-apply field manager.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    KeyToPath, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, Secret, SecretKeySelector,
    SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use workpool_core::PoolSpec;
use workpool_core::crd::{PullPolicy, WorkPool};

use crate::error::Error;
use crate::hardening;

/// Port of the api's HTTP server in its pod.
pub const API_PORT: i32 = 8080;
/// Port of the api's health and metrics server in its pod: apart from the public one,
/// which its Service exposes (docs/security.md).
pub const API_ADMIN_PORT: i32 = 9090;
/// Port of the worker's health and metrics server in its pod.
pub const WORKER_PORT: i32 = 8081;
/// The env var that hands a pod its pool's settings (JSON).
const SPEC_ENV: &str = "WORKPOOL_SPEC";
const AUTH_DIR: &str = "/etc/workpool/auth";
const NATS_DIR: &str = "/etc/workpool/nats";
const NATS_CA_DIR: &str = "/etc/workpool/nats-ca";

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

    /// Where its `/healthz`, `/readyz` and `/metrics` are (the worker serves nothing else).
    fn admin_port(self) -> i32 {
        match self {
            Component::Api => API_ADMIN_PORT,
            Component::Worker => WORKER_PORT,
        }
    }

    /// The name of the container port (the Services' target port).
    fn port_name(self) -> &'static str {
        match self {
            Component::Api => "http",
            Component::Worker => "metrics",
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

/// The Secret holding the pool's peer key ([`workpool_core::peer_auth`]).
pub fn peer_secret_name(pool: &str) -> String {
    format!("{pool}-workpool-peer")
}

/// An environment variable from one key of a Secret the pod cannot start without.
fn secret_env(name: &str, secret: String, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The key of the peer key in its Secret.
pub const PEER_SECRET_KEY: &str = "peer-key";

/// The Secret holding the key the pool's completion webhooks are signed with; receivers
/// read it from there to check signatures.
pub fn webhook_secret_name(pool: &str) -> String {
    format!("{pool}-workpool-webhook")
}

/// The key of the webhook key (hex) in its Secret.
pub const WEBHOOK_SECRET_KEY: &str = "webhook-key";

/// The Secret holding the NATS user the operator minted for the pool.
pub fn nats_user_secret_name(pool: &str) -> String {
    format!("{pool}-workpool-nats")
}

/// The key of a NATS `.creds` file in its Secret (the pool's own or the minted one).
pub const NATS_CREDS_KEY: &str = "nats.creds";

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

/// `spec` as the JSON of `WORKPOOL_SPEC`.
#[allow(clippy::expect_used)]
fn spec_json(spec: &PoolSpec) -> String {
    // Plain structs with string keys, numbers, strings and humantime durations: nothing
    // in a PoolSpec can fail to serialise.
    serde_json::to_string(spec).expect("a PoolSpec always serialises")
}

/// The `app.kubernetes.io/managed-by` of every child the operator makes.
pub const MANAGED_BY: &str = "workpool-operator";

/// Labels every child and pod carries.
pub fn labels(pool: &str, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "workpool".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), pool.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
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
    /// The Secret with the `nats.creds` the pool's pods connect with: the pool's own
    /// `nats.credentialsSecret`, else the user the operator minted for it, else none.
    pub nats_secret: Option<String>,
}

impl<'a> PoolContext<'a> {
    /// The context of `pool`'s children, whose pods run `spec`. Fails only for a pool
    /// the apiserver never handed out (no namespace or uid).
    pub fn new(
        pool: &'a WorkPool,
        spec: &'a PoolSpec,
        image: &'a DefaultImage,
    ) -> Result<Self, Error> {
        Ok(Self {
            pool,
            name: pool.name_any(),
            namespace: pool.namespace().ok_or(Error::MissingField("namespace"))?,
            owner: pool
                .controller_owner_ref(&())
                .ok_or(Error::MissingField("metadata.uid"))?,
            spec,
            image,
            nats_secret: pool.spec.nats.credentials_secret.clone(),
        })
    }

    /// Pods connect with the NATS user the operator mints for the pool (in
    /// [`nats_user_secret_name`]), unless the pool names credentials of its own.
    pub fn with_minted_nats_user(mut self) -> Self {
        if self.nats_secret.is_none() {
            self.nats_secret = Some(nats_user_secret_name(&self.name));
        }
        self
    }

    /// The pool's NATS user, made once like the peer key: its permissions cover only the
    /// pool's own subjects, streams and bucket (docs/security.md).
    pub fn nats_user_secret(&self, creds: String) -> Secret {
        Secret {
            metadata: self.meta(nats_user_secret_name(&self.name), None),
            string_data: Some([(NATS_CREDS_KEY.to_owned(), creds)].into()),
            ..Default::default()
        }
    }

    fn meta(&self, name: String, component: Option<Component>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels(&self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }

    /// The pool's peer key, made once: created only where none exists, never
    /// replaced, so every pod of the pool signs and checks with the same key.
    pub fn peer_secret(&self, key: &workpool_core::peer_auth::PeerKey) -> Secret {
        Secret {
            metadata: self.meta(peer_secret_name(&self.name), None),
            string_data: Some([(PEER_SECRET_KEY.to_owned(), key.to_hex())].into()),
            ..Default::default()
        }
    }

    /// The pool's webhook key, made once like the peer key: replacing it would break
    /// every receiver's check.
    pub fn webhook_secret(&self, key_hex: String) -> Secret {
        Secret {
            metadata: self.meta(webhook_secret_name(&self.name), None),
            string_data: Some([(WEBHOOK_SECRET_KEY.to_owned(), key_hex)].into()),
            ..Default::default()
        }
    }

    pub fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(service_account_name(&self.name), None),
            ..Default::default()
        }
    }

    /// The api and workers watch their Services' EndpointSlices (membership and the
    /// cluster view) with a reflector, which lists and watches; nothing else.
    pub fn role(&self) -> Role {
        Role {
            metadata: self.meta(service_account_name(&self.name), None),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["discovery.k8s.io".into()]),
                resources: Some(vec!["endpointslices".into()]),
                verbs: vec!["list".into(), "watch".into()],
                ..Default::default()
            }]),
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
            value(SPEC_ENV, spec_json(self.spec)),
            value("WORKPOOL_LISTEN", format!("0.0.0.0:{}", component.port())),
            // Cluster membership: the ready endpoints of the headless worker Service
            // (and, for the cluster view, of the api Service).
            value("WORKPOOL_WORKERS_SERVICE", worker_service_name(&self.name)),
        ];
        env.push(secret_env(
            workpool_core::peer_auth::PEER_KEY_ENV,
            peer_secret_name(&self.name),
            PEER_SECRET_KEY,
        ));
        if component == Component::Api {
            let admin = format!("0.0.0.0:{API_ADMIN_PORT}");
            env.push(value("WORKPOOL_ADMIN_LISTEN", admin));
            env.push(value(
                "WORKPOOL_API_SERVICE",
                deployment_name(&self.name, Component::Api),
            ));
        }
        if component == Component::Worker {
            env.push(value("WORKPOOL_DRAIN_TIMEOUT", "25s".into()));
            env.push(secret_env(
                workpool_core::webhook::WEBHOOK_KEY_ENV,
                webhook_secret_name(&self.name),
                WEBHOOK_SECRET_KEY,
            ));
        }
        if let Some(tracing) = &self.pool.spec.tracing {
            env.extend(
                tracing
                    .env()
                    .into_iter()
                    .map(|(name, text)| value(name, text)),
            );
        }
        if let (Component::Api, Some(auth)) = (component, &self.pool.spec.api.auth) {
            match &auth.jwks_url {
                Some(url) => env.push(value("WORKPOOL_JWT_JWKS_URL", url.clone())),
                None => env.push(value(
                    "WORKPOOL_JWT_SECRET_FILE",
                    format!("{AUTH_DIR}/jwt-secret"),
                )),
            }
            let claims = [
                ("WORKPOOL_JWT_TENANT_CLAIM", &auth.tenant_claim),
                ("WORKPOOL_JWT_ADMIN_CLAIM", &auth.admin_claim),
            ];
            for (name, claim) in claims {
                if let Some(claim) = claim {
                    env.push(value(name, claim.clone()));
                }
            }
        }
        if self.pool.spec.nats.ca_config_map_ref.is_some() {
            env.push(value("NATS_CA_FILE", format!("{NATS_CA_DIR}/ca.crt")));
        }
        if self.nats_secret.is_some() {
            env.push(value(
                "NATS_CREDS_FILE",
                format!("{NATS_DIR}/{NATS_CREDS_KEY}"),
            ));
        }
        env
    }

    fn volumes(&self, component: Component) -> (Vec<Volume>, Vec<VolumeMount>) {
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        // One key of a Secret or ConfigMap as the file `path` in the read-only `dir`.
        let mut mount = |name: &str, dir: &str, volume: Volume| {
            volumes.push(Volume {
                name: name.into(),
                ..volume
            });
            mounts.push(VolumeMount {
                name: name.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..Default::default()
            });
        };
        let item = |key: &str, path: &str| {
            Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                ..Default::default()
            }])
        };
        let secret = |secret: &str, key: &str, path: &str| Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                items: item(key, path),
                ..Default::default()
            }),
            ..Default::default()
        };
        let jwt_secret = self.pool.spec.api.auth.as_ref();
        let jwt_secret = jwt_secret.and_then(|auth| auth.jwt_secret_ref.as_ref());
        if let (Component::Api, Some(reference)) = (component, jwt_secret) {
            let volume = secret(&reference.name, &reference.key, "jwt-secret");
            mount("auth", AUTH_DIR, volume);
        }
        if let Some(creds) = &self.nats_secret {
            let volume = secret(creds, NATS_CREDS_KEY, NATS_CREDS_KEY);
            mount("nats-creds", NATS_DIR, volume);
        }
        if let Some(ca) = &self.pool.spec.nats.ca_config_map_ref {
            let config_map = ConfigMapVolumeSource {
                name: ca.name.clone(),
                items: item(&ca.key, "ca.crt"),
                ..Default::default()
            };
            let volume = Volume {
                config_map: Some(config_map),
                ..Default::default()
            };
            mount("nats-ca", NATS_CA_DIR, volume);
        }
        let (scratch, scratch_mount) = hardening::scratch();
        volumes.push(scratch);
        mounts.push(scratch_mount);
        (volumes, mounts)
    }

    /// The api's public port and its health and metrics port; the worker's one port.
    fn container_ports(&self, component: Component) -> Vec<ContainerPort> {
        let port = |name: &str, number| ContainerPort {
            name: Some(name.into()),
            container_port: number,
            ..Default::default()
        };
        match component {
            Component::Api => vec![
                port(component.port_name(), API_PORT),
                port("metrics", API_ADMIN_PORT),
            ],
            Component::Worker => vec![port(component.port_name(), WORKER_PORT)],
        }
    }

    /// The api or worker container: its image, command, env, port, probes and mounts.
    fn container(&self, component: Component) -> Container {
        let (image, pull_policy) = self.image();
        let probe = |path: &str| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(component.admin_port()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        };
        let chosen = match component {
            Component::Api => self.pool.spec.api.resources.as_ref(),
            Component::Worker => self.pool.spec.worker.resources.as_ref(),
        };
        let (_, mounts) = self.volumes(component);
        Container {
            name: component.as_str().into(),
            image: Some(image),
            image_pull_policy: Some(pull_policy),
            command: Some(vec![component.binary().into()]),
            env: Some(self.env(component)),
            ports: Some(self.container_ports(component)),
            readiness_probe: Some(probe("/readyz")),
            liveness_probe: Some(Probe {
                initial_delay_seconds: Some(5),
                ..probe("/healthz")
            }),
            resources: Some(hardening::resources(component, chosen)),
            security_context: Some(hardening::container_security_context()),
            volume_mounts: Some(mounts),
            ..Default::default()
        }
    }

    /// The pods of the api or worker Deployment.
    fn pod_template(&self, component: Component) -> PodTemplateSpec {
        let (volumes, _) = self.volumes(component);
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(&self.name, Some(component))),
                annotations: Some(scrape_annotations(component.admin_port())),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                service_account_name: Some(service_account_name(&self.name)),
                containers: vec![self.container(component)],
                security_context: Some(hardening::pod_security_context()),
                volumes: Some(volumes),
                // Workers drain for up to 25s after SIGTERM.
                termination_grace_period_seconds: Some(match component {
                    Component::Api => 30,
                    Component::Worker => 35,
                }),
                ..Default::default()
            }),
        }
    }

    /// The api or worker Deployment with `replicas` pods, rolled one new pod at a time
    /// and none down before its successor is ready.
    pub fn deployment(&self, component: Component, replicas: i32) -> Deployment {
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
                template: self.pod_template(component),
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
                    target_port: Some(IntOrString::String(Component::Api.port_name().into())),
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
                    target_port: Some(IntOrString::String(Component::Worker.port_name().into())),
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
    use k8s_openapi::api::core::v1::PodSpec;
    use serde_json::json;

    use super::*;
    use crate::fixtures::pool;

    fn default_image() -> DefaultImage {
        DefaultImage {
            repository: "registry/workpool".into(),
            tag: "1.2.3".into(),
        }
    }

    /// Builds the children of `pool(spec)` and hands them to `check`.
    fn with_children(spec: serde_json::Value, check: impl FnOnce(&PoolContext<'_>)) {
        let pool = pool(spec);
        let settings = pool.spec.pool_spec().expect("spec");
        let image = default_image();
        let context = PoolContext::new(&pool, &settings, &image).expect("context");
        check(&context);
    }

    /// A pool with JWT auth on its api and NATS credentials.
    fn secured() -> serde_json::Value {
        json!({
            "nats": {"url": "nats://nats:4222", "credentialsSecret": "nats-creds"},
            "api": {"auth": {"jwtSecretRef": {"name": "jwt", "key": "hs256"}}},
        })
    }

    fn pod_spec(deployment: &Deployment) -> &PodSpec {
        deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn container(deployment: &Deployment) -> &Container {
        let containers = &pod_spec(deployment).containers;
        assert_eq!(containers.len(), 1, "one container per pod");
        &containers[0]
    }

    /// The container's env as name -> value (or `fieldRef:<path>`).
    fn env(deployment: &Deployment) -> BTreeMap<String, String> {
        let vars = container(deployment).env.clone().unwrap_or_default();
        let count = vars.len();
        let env: BTreeMap<String, String> = vars
            .into_iter()
            .map(|var| {
                let from = var.value_from.and_then(|from| {
                    let field = from
                        .field_ref
                        .map(|field| format!("fieldRef:{}", field.field_path));
                    let secret = from
                        .secret_key_ref
                        .map(|key| format!("secretKeyRef:{}/{}", key.name, key.key));
                    field.or(secret)
                });
                (var.name, var.value.or(from).unwrap_or_default())
            })
            .collect();
        assert_eq!(env.len(), count, "no env var twice");
        env
    }

    fn every_meta(context: &PoolContext<'_>) -> Vec<ObjectMeta> {
        vec![
            context.service_account().metadata,
            context.role().metadata,
            context.role_binding().metadata,
            context.deployment(Component::Api, 1).metadata,
            context.deployment(Component::Worker, 1).metadata,
            context.api_service().metadata,
            context.worker_service().metadata,
            context.disruption_budget(Component::Api).metadata,
            context.disruption_budget(Component::Worker).metadata,
        ]
    }

    #[test]
    fn children_are_named_after_the_pool_in_its_namespace() {
        with_children(json!({}), |context| {
            let names: Vec<String> = every_meta(context)
                .into_iter()
                .map(|meta| {
                    assert_eq!(meta.namespace.as_deref(), Some("ns"));
                    meta.name.expect("name")
                })
                .collect();
            assert_eq!(
                names,
                [
                    "demo-workpool",
                    "demo-workpool",
                    "demo-workpool",
                    "demo-api",
                    "demo-worker",
                    "demo-api",
                    "demo-workers",
                    "demo-api",
                    "demo-worker",
                ]
            );
        });
    }

    #[test]
    fn every_child_is_controlled_by_its_pool_and_carries_its_labels() {
        with_children(json!({}), |context| {
            for meta in every_meta(context) {
                let owners = meta.owner_references.expect("owner references");
                assert_eq!(owners.len(), 1);
                let owner = &owners[0];
                assert_eq!(
                    (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                    ("WorkPool", "demo", "u-1")
                );
                assert_eq!(owner.api_version, "workpool.dev/v1alpha1");
                assert_eq!(owner.controller, Some(true), "garbage-collected with it");
                let labels = meta.labels.expect("labels");
                for (key, value) in [
                    ("app.kubernetes.io/name", "workpool"),
                    ("app.kubernetes.io/instance", "demo"),
                    ("app.kubernetes.io/managed-by", "workpool-operator"),
                ] {
                    assert_eq!(labels.get(key).map(String::as_str), Some(value));
                }
            }
        });
    }

    #[test]
    fn a_pool_without_namespace_or_uid_has_no_children() {
        let mut nameless = pool(json!({}));
        nameless.metadata.uid = None;
        let spec = nameless.spec.pool_spec().expect("spec");
        let image = default_image();
        let err = PoolContext::new(&nameless, &spec, &image).expect_err("no uid");
        assert!(matches!(err, Error::MissingField("metadata.uid")));
        nameless.metadata.namespace = None;
        let err = PoolContext::new(&nameless, &spec, &image).expect_err("no namespace");
        assert!(matches!(err, Error::MissingField("namespace")));
    }

    #[test]
    fn services_and_budgets_select_exactly_their_deployments_pods() {
        with_children(json!({}), |context| {
            let services = [context.api_service(), context.worker_service()];
            for (component, service) in [Component::Api, Component::Worker]
                .into_iter()
                .zip(services)
            {
                let other = match component {
                    Component::Api => Component::Worker,
                    Component::Worker => Component::Api,
                };
                let deployment = context.deployment(component, 1);
                let spec = deployment.spec.as_ref().expect("spec");
                let selector = spec.selector.match_labels.clone().expect("selector");
                let pods = spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .expect("pod labels");
                let others = labels("demo", Some(other));
                assert!(selector.iter().all(|(k, v)| pods.get(k) == Some(v)));
                assert!(
                    !selector.iter().all(|(k, v)| others.get(k) == Some(v)),
                    "{} pods are not selected",
                    other.as_str()
                );
                assert_eq!(
                    service.spec.and_then(|s| s.selector).as_ref(),
                    Some(&selector)
                );
                let budget = context.disruption_budget(component);
                let budget_spec = budget.spec.expect("budget spec");
                assert_eq!(
                    budget_spec.selector.and_then(|s| s.match_labels).as_ref(),
                    Some(&selector)
                );
                assert_eq!(budget_spec.max_unavailable, Some(IntOrString::Int(1)));
                let text = selector_string("demo", component);
                let parsed: BTreeMap<String, String> = text
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                assert_eq!(parsed, selector, "the status selector is the same");
            }
        });
    }

    #[test]
    fn service_ports_reach_the_named_container_ports() {
        with_children(json!({}), |context| {
            for (component, service, port, cluster_ip) in [
                (Component::Api, context.api_service(), 80, None),
                (
                    Component::Worker,
                    context.worker_service(),
                    WORKER_PORT,
                    Some("None"),
                ),
            ] {
                let spec = service.spec.expect("service spec");
                assert_eq!(spec.cluster_ip.as_deref(), cluster_ip);
                let ports = spec.ports.expect("ports");
                assert_eq!(ports.len(), 1);
                assert_eq!(ports[0].port, port);
                let deployment = context.deployment(component, 1);
                let container_ports = container(&deployment).ports.clone().expect("ports");
                let IntOrString::String(target) = ports[0].target_port.clone().expect("target")
                else {
                    panic!("target port by name")
                };
                assert!(
                    container_ports
                        .iter()
                        .any(|p| p.name.as_deref() == Some(&target)
                            && p.container_port == component.port()),
                    "{target} is a container port of {component:?}"
                );
            }
            assert_eq!(
                (Component::Api.port(), Component::Worker.port()),
                (8080, 8081)
            );
        });
    }

    #[test]
    fn pods_send_their_spans_where_the_pool_says() {
        let tracing = json!({"otlpEndpoint": "http://collector:4318", "sampleRatio": 0.25});
        with_children(json!({"tracing": tracing}), |context| {
            for component in [Component::Api, Component::Worker] {
                let env = env(&context.deployment(component, 1));
                for (name, value) in [
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ] {
                    assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
                }
            }
        });
        with_children(json!({}), |context| {
            let env = env(&context.deployment(Component::Worker, 1));
            assert!(!env.keys().any(|name| name.starts_with("OTEL_")), "{env:?}");
        });
    }

    #[test]
    fn pods_get_their_settings_and_identity_from_the_env() {
        with_children(json!({"worker": {"concurrency": 7}}), |context| {
            for component in [Component::Api, Component::Worker] {
                let deployment = context.deployment(component, 1);
                let env = env(&deployment);
                let spec = PoolSpec::from_json(&env["WORKPOOL_SPEC"]).expect("spec JSON");
                assert_eq!(&spec, context.spec, "WORKPOOL_SPEC round-trips");
                assert_eq!(spec.worker.concurrency, 7);
                assert_eq!(deployed_spec(&deployment).as_ref(), Some(context.spec));
                for (name, value) in [
                    ("POD_NAME", "fieldRef:metadata.name"),
                    ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
                    ("POD_IP", "fieldRef:status.podIP"),
                    ("WORKPOOL_NAMESPACE", "fieldRef:metadata.namespace"),
                    ("WORKPOOL_POOL", "demo"),
                    ("WORKPOOL_WORKERS_SERVICE", "demo-workers"),
                    (
                        "WORKPOOL_PEER_KEY",
                        "secretKeyRef:demo-workpool-peer/peer-key",
                    ),
                ] {
                    assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
                }
                let listen = format!("0.0.0.0:{}", component.port());
                assert_eq!(env["WORKPOOL_LISTEN"], listen);
                let (only_api, only_worker) = (
                    env.get("WORKPOOL_API_SERVICE").map(String::as_str),
                    env.get("WORKPOOL_DRAIN_TIMEOUT").map(String::as_str),
                );
                match component {
                    Component::Api => assert_eq!((only_api, only_worker), (Some("demo-api"), None)),
                    Component::Worker => assert_eq!((only_api, only_worker), (None, Some("25s"))),
                }
                // The api's health and metrics are on a port its Service does not expose.
                let admin = env.get("WORKPOOL_ADMIN_LISTEN").map(String::as_str);
                let expected = (component == Component::Api).then_some("0.0.0.0:9090");
                assert_eq!(admin, expected);
                assert!(!env.contains_key("WORKPOOL_JWT_SECRET_FILE"));
                assert!(!env.contains_key("NATS_CREDS_FILE"));
                let volumes = pod_spec(&deployment).volumes.clone().unwrap_or_default();
                let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
                assert_eq!(names, ["tmp"], "only the scratch /tmp");
            }
        });
    }

    #[test]
    fn secrets_are_mounted_where_their_env_vars_point() {
        with_children(secured(), |context| {
            let api = context.deployment(Component::Api, 1);
            let worker = context.deployment(Component::Worker, 1);
            let api_env = env(&api);
            let worker_env = env(&worker);
            assert_eq!(
                api_env["WORKPOOL_JWT_SECRET_FILE"],
                "/etc/workpool/auth/jwt-secret"
            );
            assert!(
                !worker_env.contains_key("WORKPOOL_JWT_SECRET_FILE"),
                "only the api checks tokens"
            );
            for env in [&api_env, &worker_env] {
                assert_eq!(env["NATS_CREDS_FILE"], "/etc/workpool/nats/nats.creds");
            }
            // volume name -> (secret, key, path); mount name -> directory.
            let volumes = |deployment: &Deployment| -> BTreeMap<String, (String, String, String)> {
                pod_spec(deployment)
                    .volumes
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|volume| volume.empty_dir.is_none())
                    .map(|volume| {
                        let secret = volume.secret.expect("a secret volume");
                        let items = secret.items.expect("items");
                        assert_eq!(items.len(), 1);
                        let secret_name = secret.secret_name.expect("secret name");
                        (
                            volume.name,
                            (secret_name, items[0].key.clone(), items[0].path.clone()),
                        )
                    })
                    .collect()
            };
            let mounts = |deployment: &Deployment| -> BTreeMap<String, String> {
                container(deployment)
                    .volume_mounts
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|mount| mount.mount_path != "/tmp")
                    .map(|mount| {
                        assert_eq!(mount.read_only, Some(true));
                        (mount.name, mount.mount_path)
                    })
                    .collect()
            };
            let creds = (
                "nats-creds".to_owned(),
                "nats.creds".to_owned(),
                "nats.creds".to_owned(),
            );
            assert_eq!(
                volumes(&api),
                BTreeMap::from([
                    (
                        "auth".to_owned(),
                        (
                            "jwt".to_owned(),
                            "hs256".to_owned(),
                            "jwt-secret".to_owned()
                        )
                    ),
                    ("nats-creds".to_owned(), creds.clone()),
                ])
            );
            assert_eq!(
                mounts(&api),
                BTreeMap::from([
                    ("auth".to_owned(), AUTH_DIR.to_owned()),
                    ("nats-creds".to_owned(), NATS_DIR.to_owned()),
                ])
            );
            assert_eq!(
                volumes(&worker),
                BTreeMap::from([("nats-creds".to_owned(), creds)])
            );
            assert_eq!(
                mounts(&worker),
                BTreeMap::from([("nats-creds".to_owned(), NATS_DIR.to_owned())])
            );
        });
    }

    #[test]
    fn pods_get_the_minted_nats_user_unless_the_pool_brings_its_own() {
        let secret_of = |deployment: &Deployment| {
            pod_spec(deployment)
                .volumes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|volume| volume.name == "nats-creds")
                .and_then(|volume| volume.secret?.secret_name)
        };
        for (spec, minting, expected) in [
            (json!({}), false, None),
            (json!({}), true, Some("demo-workpool-nats")),
            (secured(), true, Some("nats-creds")),
            (secured(), false, Some("nats-creds")),
        ] {
            let pool = pool(spec);
            let settings = pool.spec.pool_spec().expect("spec");
            let image = default_image();
            let mut context = PoolContext::new(&pool, &settings, &image).expect("context");
            if minting {
                context = context.with_minted_nats_user();
            }
            for component in [Component::Api, Component::Worker] {
                let deployment = context.deployment(component, 1);
                assert_eq!(secret_of(&deployment).as_deref(), expected);
                let creds = env(&deployment).get("NATS_CREDS_FILE").cloned();
                let wanted = expected.map(|_| "/etc/workpool/nats/nats.creds".to_owned());
                assert_eq!(creds, wanted);
            }
        }
        with_children(json!({}), |context| {
            let secret = context.nats_user_secret("creds".into());
            assert_eq!(secret.metadata.name.as_deref(), Some("demo-workpool-nats"));
            assert_eq!(
                secret.metadata.owner_references,
                Some(vec![context.owner.clone()])
            );
        });
    }

    #[test]
    fn probes_ask_readyz_and_healthz_on_the_component_port() {
        with_children(json!({}), |context| {
            for component in [Component::Api, Component::Worker] {
                let deployment = context.deployment(component, 1);
                let container = container(&deployment);
                for (probe, path, delay) in [
                    (&container.readiness_probe, "/readyz", None),
                    (&container.liveness_probe, "/healthz", Some(5)),
                ] {
                    let probe = probe.as_ref().expect("probe");
                    let get = probe.http_get.as_ref().expect("HTTP probe");
                    assert_eq!(get.path.as_deref(), Some(path));
                    assert_eq!(get.port, IntOrString::Int(component.admin_port()));
                    assert_eq!(probe.initial_delay_seconds, delay);
                    assert_eq!(
                        (probe.period_seconds, probe.failure_threshold),
                        (Some(5), Some(3))
                    );
                }
            }
        });
    }

    #[test]
    fn the_image_is_the_operators_unless_the_pool_names_one() {
        let image_of = |spec: serde_json::Value| {
            let mut seen = (String::new(), String::new());
            with_children(spec, |context| {
                let deployment = context.deployment(Component::Worker, 1);
                let container = container(&deployment);
                seen = (
                    container.image.clone().expect("image"),
                    container.image_pull_policy.clone().expect("pull policy"),
                );
            });
            seen
        };
        let pair = |image: &str, policy: &str| (image.to_owned(), policy.to_owned());
        assert_eq!(
            image_of(json!({})),
            pair("registry/workpool:1.2.3", "IfNotPresent")
        );
        assert_eq!(
            image_of(json!({"image": {"tag": "dev", "pullPolicy": "Never"}})),
            pair("registry/workpool:dev", "Never")
        );
        assert_eq!(
            image_of(json!({"image": {"repository": "mine/wp", "pullPolicy": "Always"}})),
            pair("mine/wp:1.2.3", "Always")
        );
    }

    #[test]
    fn deployments_run_their_binary_with_the_replicas_asked_for() {
        let spec = json!({
            "worker": {"resources": {"limits": {"cpu": "2"}}},
            "api": {"resources": {"requests": {"memory": "64Mi"}}},
        });
        with_children(spec, |context| {
            for (component, replicas, binary, grace) in [
                (Component::Api, 2, "workpool-api", 30),
                (Component::Worker, 5, "workpool-worker", 35),
            ] {
                let deployment = context.deployment(component, replicas);
                let spec = deployment.spec.as_ref().expect("spec");
                assert_eq!(spec.replicas, Some(replicas));
                let rolling = spec
                    .strategy
                    .as_ref()
                    .and_then(|s| s.rolling_update.clone())
                    .expect("rolling update");
                assert_eq!(
                    (rolling.max_unavailable, rolling.max_surge),
                    (Some(IntOrString::Int(0)), Some(IntOrString::Int(1))),
                    "no pod goes before its successor is ready"
                );
                let pod = pod_spec(&deployment);
                assert_eq!(pod.service_account_name.as_deref(), Some("demo-workpool"));
                assert_eq!(pod.termination_grace_period_seconds, Some(grace));
                let container = container(&deployment);
                assert_eq!(container.name, component.as_str());
                assert_eq!(container.command, Some(vec![binary.to_owned()]));
                let resources = match component {
                    Component::Api => &context.pool.spec.api.resources,
                    Component::Worker => &context.pool.spec.worker.resources,
                };
                assert!(resources.is_some());
                assert_eq!(&container.resources, resources, "the spec's, not defaults");
                let annotations = spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.annotations.clone())
                    .expect("annotations");
                assert_eq!(annotations["prometheus.io/scrape"], "true");
                assert_eq!(
                    annotations["prometheus.io/port"],
                    component.admin_port().to_string()
                );
                assert_eq!(annotations["prometheus.io/path"], "/metrics");
            }
        });
    }

    #[test]
    fn the_pods_may_list_and_watch_endpointslices_and_nothing_else() {
        with_children(json!({}), |context| {
            let rules = context.role().rules.expect("rules");
            let granted: Vec<(String, String, Vec<String>)> = rules
                .into_iter()
                .map(|rule| {
                    let group = rule.api_groups.expect("groups").join(",");
                    let resources = rule.resources.expect("resources").join(",");
                    (group, resources, rule.verbs)
                })
                .collect();
            assert_eq!(
                granted,
                [(
                    "discovery.k8s.io".to_owned(),
                    "endpointslices".to_owned(),
                    vec!["list".to_owned(), "watch".to_owned()]
                )]
            );
            let binding = context.role_binding();
            assert_eq!(
                (
                    binding.role_ref.kind.as_str(),
                    binding.role_ref.name.as_str()
                ),
                ("Role", "demo-workpool")
            );
            let subjects = binding.subjects.expect("subjects");
            assert_eq!(subjects.len(), 1);
            assert_eq!(
                (
                    subjects[0].kind.as_str(),
                    subjects[0].name.as_str(),
                    subjects[0].namespace.as_deref()
                ),
                ("ServiceAccount", "demo-workpool", Some("ns"))
            );
            assert_eq!(
                context.service_account().metadata.name.as_deref(),
                Some("demo-workpool")
            );
        });
    }

    #[test]
    fn a_deployment_without_parseable_settings_has_none() {
        assert_eq!(deployed_spec(&Deployment::default()), None);
        with_children(json!({}), |context| {
            let mut deployment = context.deployment(Component::Worker, 1);
            let pod = deployment
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .expect("pod spec");
            for var in pod.containers[0].env.iter_mut().flatten() {
                if var.name == SPEC_ENV {
                    var.value = Some("{not json".into());
                }
            }
            assert_eq!(deployed_spec(&deployment), None);
        });
    }

    #[test]
    fn every_pod_is_restricted_with_a_writable_tmp_and_bounded_resources() {
        with_children(json!({}), |context| {
            for component in [Component::Api, Component::Worker] {
                let deployment = context.deployment(component, 1);
                let pod = pod_spec(&deployment)
                    .security_context
                    .clone()
                    .expect("pod context");
                assert_eq!(pod.run_as_non_root, Some(true));
                assert_eq!(pod.run_as_user, Some(hardening::RUN_AS));
                let seccomp = pod.seccomp_profile.expect("seccomp");
                assert_eq!(seccomp.type_, "RuntimeDefault");
                let container = container(&deployment);
                let security = container
                    .security_context
                    .clone()
                    .expect("container context");
                assert_eq!(security.allow_privilege_escalation, Some(false));
                assert_eq!(security.read_only_root_filesystem, Some(true));
                let dropped = security.capabilities.and_then(|c| c.drop);
                assert_eq!(dropped, Some(vec!["ALL".to_owned()]));
                let resources = container.resources.clone().expect("resources");
                for kind in [resources.requests, resources.limits] {
                    let kind = kind.expect("requests and limits");
                    assert!(kind.contains_key("cpu") && kind.contains_key("memory"));
                }
                let mut mounts = container.volume_mounts.iter().flatten();
                let tmp = mounts
                    .find(|mount| mount.mount_path == "/tmp")
                    .expect("/tmp");
                assert_ne!(tmp.read_only, Some(true));
            }
        });
    }

    #[test]
    fn a_nats_ca_is_mounted_into_both_components() {
        let nats = json!({"url": "tls://nats:4222", "caConfigMapRef": {"name": "nats-ca", "key": "ca.pem"}});
        with_children(json!({"nats": nats}), |context| {
            for component in [Component::Api, Component::Worker] {
                let deployment = context.deployment(component, 1);
                assert_eq!(
                    env(&deployment)["NATS_CA_FILE"],
                    "/etc/workpool/nats-ca/ca.crt"
                );
                let volumes = pod_spec(&deployment).volumes.clone().unwrap_or_default();
                let ca = volumes
                    .iter()
                    .find(|v| v.name == "nats-ca")
                    .expect("nats-ca");
                let config_map = ca.config_map.as_ref().expect("a ConfigMap volume");
                assert_eq!(config_map.name, "nats-ca");
                let items = config_map.items.as_ref().expect("items");
                assert_eq!(
                    (items[0].key.as_str(), items[0].path.as_str()),
                    ("ca.pem", "ca.crt")
                );
                let mounts = container(&deployment)
                    .volume_mounts
                    .clone()
                    .unwrap_or_default();
                let mount = mounts.iter().find(|m| m.name == "nats-ca").expect("mount");
                assert_eq!(mount.mount_path, "/etc/workpool/nats-ca");
            }
        });
    }

    #[test]
    fn a_jwks_url_reaches_the_api_and_mounts_no_key() {
        let auth = json!({"jwksUrl": "https://idp.example/.well-known/jwks.json"});
        with_children(json!({"api": {"auth": auth}}), |context| {
            let api = context.deployment(Component::Api, 1);
            let env = env(&api);
            assert_eq!(
                env["WORKPOOL_JWT_JWKS_URL"],
                "https://idp.example/.well-known/jwks.json"
            );
            assert!(!env.contains_key("WORKPOOL_JWT_SECRET_FILE"));
            let volumes = pod_spec(&api).volumes.clone().unwrap_or_default();
            assert!(volumes.iter().all(|v| v.name != "auth"), "{volumes:?}");
        });
    }

    #[test]
    fn the_api_gets_the_claims_that_name_tenants_and_admins() {
        let auth = json!({"jwtSecretRef": {"name": "jwt", "key": "hs256"}, "tenantClaim": "org"});
        with_children(json!({"api": {"auth": auth}}), |context| {
            let api = env(&context.deployment(Component::Api, 1));
            assert_eq!(api["WORKPOOL_JWT_TENANT_CLAIM"], "org");
            assert!(
                !api.contains_key("WORKPOOL_JWT_ADMIN_CLAIM"),
                "the api's default"
            );
            let worker = env(&context.deployment(Component::Worker, 1));
            assert!(!worker.contains_key("WORKPOOL_JWT_TENANT_CLAIM"));
        });
    }
}
