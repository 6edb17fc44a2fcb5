//! The `WorkPool` custom resource (group `workpool.dev`, version `v1alpha1`).
//!
//! Validation lives in the schema (ranges, patterns, CEL rules) so that the apiserver
//! refuses a bad spec with a message that says what to fix; [`WorkPoolSpec::pool_spec`]
//! turns an accepted spec into the [`PoolSpec`] the api, workers and NATS objects follow.

use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::spec::{self, BuiltinHandler, PoolSpec};

/// A Go-style duration such as `30s`, `5m` or `1h30m`.
const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A Kubernetes object name (RFC 1123 subdomain), as Secret names are.
const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Refuses a duration shorter than `min` (`field` names it in the message). The pattern
/// check guards `duration()`, which fails on text the pattern already refuses; the length
/// bound keeps the rule's cost estimate within the apiserver's budget.
fn at_least(field: &str, min: &str) -> Rule {
    Rule::new(format!(
        "!self.matches('{DURATION_PATTERN}') || duration(self) >= duration('{min}')"
    ))
    .message(kube::core::Message::Message(format!(
        "{field} must be at least {min}"
    )))
}

/// The apiserver's answer to a change of `worker.partitions`.
pub const PARTITIONS_FIXED: &str = "worker.partitions is fixed once the pool exists: to change it, create a new WorkPool with the new count and move clients to it, then delete the old one after it drains";

/// A work queue: an HTTP api, a pool of workers, and the NATS JetStream stream and
/// key-value bucket that hold its work and results.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "workpool.dev",
    version = "v1alpha1",
    kind = "WorkPool",
    namespaced,
    status = "WorkPoolStatus",
    shortname = "wp",
    category = "workpool",
    derive = "PartialEq",
    doc = "A work queue: an HTTP api, a pool of workers, and their NATS JetStream objects.",
    printcolumn(name = "API", type_ = "string", description = "Ready/desired api pods", json_path = ".status.api.summary"),
    printcolumn(name = "Workers", type_ = "string", description = "Ready/desired worker pods", json_path = ".status.workers.summary"),
    printcolumn(name = "Pending", type_ = "integer", description = "Work waiting in the queue", json_path = ".status.queue.pending"),
    printcolumn(name = "In-Flight", type_ = "integer", description = "Work pulled and not yet finished", json_path = ".status.queue.inFlight", priority = 1),
    printcolumn(name = "Dead", type_ = "integer", description = "Messages in the dead-letter stream", json_path = ".status.queue.deadLetters"),
    printcolumn(name = "In/s", type_ = "number", description = "Work stored per second", json_path = ".status.queue.inPerSecond", priority = 1),
    printcolumn(name = "Out/s", type_ = "number", description = "Work done per second", json_path = ".status.queue.outPerSecond", priority = 1),
    printcolumn(name = "Oldest", type_ = "date", description = "Age of the oldest work not yet delivered to a worker", json_path = ".status.queue.oldestPending", priority = 1),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    scale(
        spec_replicas_path = ".spec.worker.replicas",
        status_replicas_path = ".status.workers.ready",
        label_selector_path = ".status.workers.selector"
    ),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40")
        .message("metadata.name must be a DNS label of at most 40 characters (lowercase letters, digits and '-'), since pod and NATS names derive from it")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkPoolSpec {
    /// The container image of the api and worker pods. Defaults to the operator's own
    /// image settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// The NATS server with JetStream that holds this pool's queue and results.
    pub nats: NatsSpec,
    /// How long a finished work record stays readable (for example `10m`); records of
    /// work still queued or running never expire.
    #[serde(default = "default_result_ttl", rename = "resultTTL")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = at_least("resultTTL", "1s"))]
    pub result_ttl: String,
    /// Limits of the work queue.
    #[serde(default)]
    pub queue: QueueSpec,
    /// The HTTP api pods.
    #[serde(default)]
    pub api: ApiSpec,
    /// The worker pods.
    #[serde(default)]
    pub worker: WorkerSpec,
    /// What happens to the NATS stream and bucket when the WorkPool is deleted: `Delete`
    /// removes them (and all queued work and results), `Retain` keeps them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Work submitted on a schedule: each tick of a cron pattern, once, however many
    /// operator replicas run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub schedules: Vec<crate::schedule::ScheduleSpec>,
    /// Completion webhooks: the hosts a submission's `callback_url` may name, and how
    /// deliveries are retried. Deliveries are signed with the key in the Secret
    /// `<name>-workpool-webhook`.
    #[serde(default)]
    pub webhooks: crate::webhook::WebhookSpec,
    /// Limits of the work of each group (a submission's `group`): how many run at once
    /// across the pool, and how many start per interval.
    #[serde(default)]
    pub groups: crate::group::GroupLimits,
    /// Traces of the work: where the api and the workers send their spans (OTLP over
    /// HTTP). Without it nothing is recorded; a caller's `traceparent` still reaches the
    /// handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
}

/// Span export of a pool's pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// The OTLP/HTTP endpoint of a collector, for example
    /// `http://otel-collector.observability:4318`; spans go to `<endpoint>/v1/traces`.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub otlp_endpoint: String,
    /// The share of new traces recorded, from 0 to 1 (default 1). A caller's decision,
    /// in its `traceparent`, is followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: Option<f64>,
}

impl TracingSpec {
    /// The SDK settings the pods get: the endpoint and, if set, the sampler.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", self.otlp_endpoint.clone())];
        if let Some(ratio) = self.sample_ratio {
            env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
            env.push(("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()));
        }
        env
    }
}

fn default_result_ttl() -> String {
    "10m".into()
}

/// Image of the api and worker pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, for example `ghcr.io/workpool/workpool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Image tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Kubernetes image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
}

/// When the kubelet pulls the image.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The servers of a `nats.url` that may list a cluster's members, comma-separated (as the
/// NATS tools accept them): async-nats parses a `&str` as one address.
pub fn nats_servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .collect()
}

/// Where NATS is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// NATS URL as seen from the pods, for example `nats://nats.nats:4222`; for a NATS
    /// cluster, its members' URLs separated by commas, so every client can (re)connect
    /// while any one member is down.
    #[x_kube(validation = Rule::new("self.startsWith('nats://') || self.startsWith('tls://')").message("nats.url must start with nats:// or tls://"))]
    pub url: String,
    /// Name of a Secret in the pool's namespace whose `nats.creds` key holds NATS
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(max = 253))]
    pub credentials_secret: Option<String>,
    /// A ConfigMap key (in the pool's namespace) holding the PEM certificates of the CA
    /// that signed the NATS server's certificate: the pods then connect with TLS only and
    /// trust that CA, as well as the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_ref: Option<ConfigMapKeyRef>,
    /// JetStream replicas of the stream and bucket: 1, 3 or 5. Cannot be changed on a
    /// running pool without recreating its NATS objects.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self == 1 || self == 3 || self == 5").message("nats.replicas must be 1, 3 or 5"))]
    pub replicas: u8,
}

fn one() -> u8 {
    1
}

/// Limits of the work queue.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Most work held in the queue; beyond it the api answers 429.
    #[serde(default = "default_max_pending")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub max_pending: i64,
    /// Largest accepted request body in bytes; beyond it the api answers 413.
    #[serde(default = "default_max_payload")]
    #[schemars(range(min = 64, max = 8_388_608))]
    pub max_payload_bytes: u32,
    /// How long dead letters (work that failed for good) are kept.
    #[serde(default = "default_dead_letter_ttl", rename = "deadLetterTTL")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub dead_letter_ttl: String,
}

fn default_max_pending() -> i64 {
    100_000
}
fn default_max_payload() -> u32 {
    1_048_576
}
fn default_dead_letter_ttl() -> String {
    "168h".into()
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            max_pending: default_max_pending(),
            max_payload_bytes: default_max_payload(),
            dead_letter_ttl: default_dead_letter_ttl(),
        }
    }
}

/// The HTTP api pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// Number of api pods.
    #[serde(default = "two")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Bearer-token auth for `/api/v1/work`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// CPU and memory of each api pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn two() -> i32 {
    2
}

impl Default for ApiSpec {
    fn default() -> Self {
        Self {
            replicas: 2,
            auth: None,
            resources: None,
        }
    }
}

/// Bearer-token auth.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwtSecretRef) != has(self.jwksUrl)").message("api.auth needs exactly one of jwtSecretRef or jwksUrl"))]
pub struct AuthSpec {
    /// Secret (in the pool's namespace) and key holding what checks clients' JWTs: an
    /// HS256 secret, or a PEM public key (RSA for RS256, EC P-256 for ES256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// An identity provider's JSON Web Key Set URL (its `jwks_uri`): tokens signed with
    /// any of its RS256 or ES256 keys, named by `kid`, are accepted; the set is fetched
    /// again every 5 minutes and when a token names a key it lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub jwks_url: Option<String>,
    /// The token claim that names a client's tenant: work is scoped to it (a client sees
    /// and cancels only its own tenant's work). Default `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._:/a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub tenant_claim: Option<String>,
    /// The token claim that, `true`, lets a client use the cluster view and console.
    /// Default `workpool_admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._:/a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub admin_claim: Option<String>,
}

/// A key of a ConfigMap in the pool's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(max = 253))]
    pub name: String,
    /// Key in the ConfigMap.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: String,
}

/// A key of a Secret in the pool's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: String,
}

/// The worker pods and how they run work.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.autoscale) || self.autoscale.min <= self.autoscale.max").message("worker.autoscale.min must not exceed worker.autoscale.max"))]
pub struct WorkerSpec {
    /// Number of worker pods (the scale subresource points here). Ignored while
    /// `autoscale` is set.
    #[serde(default = "two")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Jobs in flight per worker pod.
    #[serde(default = "four")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: u32,
    /// What runs the work: exactly one of `builtin`, `exec` or `http`.
    #[serde(default)]
    pub handler: HandlerSpec,
    /// Limit of one attempt, for example `30s`.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = at_least("worker.timeout", "10ms"))]
    pub timeout: String,
    /// Attempts before work is recorded `failed` and dead-lettered.
    #[serde(default = "five")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Delays before the 2nd, 3rd, ... attempt; the last one repeats.
    #[serde(default = "default_backoff")]
    #[schemars(length(min = 1, max = 20), inner(regex(pattern = DURATION_PATTERN)))]
    pub backoff: Vec<String>,
    /// Partitions for keyed work (work with the same key runs one at a time). Immutable
    /// once the pool exists: a key's partition is `hash(key) mod partitions`, so another
    /// count would route a key elsewhere while its queued work stays where it was. To
    /// change it, create a new WorkPool with the new count, move clients to it, and
    /// delete the old one after it drains.
    #[serde(default = "sixteen")]
    #[schemars(range(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(PARTITIONS_FIXED))]
    pub partitions: u32,
    /// How long NATS waits for a heartbeat before it gives a running job to another
    /// worker (so also how soon work of a crashed worker is retried).
    #[serde(default = "default_ack_wait")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = at_least("worker.ackWait", "500ms"))]
    pub ack_wait: String,
    /// Scale workers on queue depth. Do not also drive `replicas` with `kubectl scale` or
    /// an HPA: while this is set, the operator owns the worker count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// CPU and memory of each worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn four() -> u32 {
    4
}
fn five() -> u32 {
    5
}
fn sixteen() -> u32 {
    16
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_ack_wait() -> String {
    "10s".into()
}
fn default_backoff() -> Vec<String> {
    vec!["1s".into(), "5s".into(), "30s".into()]
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            replicas: 2,
            concurrency: 4,
            handler: HandlerSpec::default(),
            timeout: default_timeout(),
            max_attempts: 5,
            backoff: default_backoff(),
            partitions: 16,
            ack_wait: default_ack_wait(),
            autoscale: None,
            resources: None,
        }
    }
}

/// Exactly one handler kind.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.builtin) ? 1 : 0) + (has(self.exec) ? 1 : 0) + (has(self.http) ? 1 : 0) == 1").message("worker.handler needs exactly one of builtin, exec or http"))]
pub struct HandlerSpec {
    /// A handler built into the worker: `sleep` (pause `data.ms`, the original demo),
    /// `echo` or `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinHandler>,
    /// Run a program per attempt: the work arrives as JSON on stdin, the result is its
    /// stdout, a non-zero exit is a (retryable) failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHandler>,
    /// POST the work to a URL (usually a sidecar): 2xx is the result, 4xx a permanent
    /// failure, 5xx and timeouts are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHandler>,
}

impl Default for HandlerSpec {
    fn default() -> Self {
        Self {
            builtin: Some(BuiltinHandler::Sleep),
            exec: None,
            http: None,
        }
    }
}

/// A program run per attempt.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExecHandler {
    /// Program and arguments.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
}

/// A URL the work is POSTed to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HttpHandler {
    /// URL the work is POSTed to.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("worker.handler.http.url must be an http:// or https:// URL"))]
    pub url: String,
}

/// Queue-depth autoscaling of workers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleSpec {
    /// Fewest worker pods.
    #[schemars(range(min = 0, max = 1000))]
    pub min: i32,
    /// Most worker pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max: i32,
    /// Queued work per worker pod the autoscaler aims for.
    #[serde(default = "hundred")]
    #[schemars(range(min = 1))]
    pub target_backlog_per_replica: i64,
}

fn hundred() -> i64 {
    100
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// What the operator observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `QueueReady`, `ApiAvailable`, `WorkersAvailable`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The api pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ReplicaStatus>,
    /// The worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<ReplicaStatus>,
    /// Queue figures read from JetStream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
    /// URL of the api Service inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The latest generation whose stream, bucket and consumers NATS accepted. Unset
    /// while NATS never accepted one: then a deletion has no NATS objects to wait for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_generation: Option<i64>,
    /// NATS objects of this pool's names that existed when it was first provisioned
    /// (left by an earlier WorkPool of the same name with `deletionPolicy: Retain`), taken
    /// over with what they held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<AdoptedStatus>,
    /// Each schedule's next tick and the id of the work it submits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleStatus>,
}

/// Where one schedule stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    pub name: String,
    /// The next tick (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The work id of the next tick, to GET it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_id: Option<String>,
    /// Ticks queued ahead (due within the next minute), counting the next.
    pub queued_ahead: u32,
}

/// Ready and desired pods of one component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Pods that pass their readiness probe.
    pub ready: i32,
    /// Pods wanted (for workers: the autoscaler's choice while `autoscale` is set).
    pub desired: i32,
    /// Label selector of the pods (for the scale subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `ready/desired`, as `kubectl get workpools` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl ReplicaStatus {
    pub fn new(ready: i32, desired: i32, selector: String) -> Self {
        Self {
            ready,
            desired,
            selector: Some(selector),
            summary: Some(format!("{ready}/{desired}")),
        }
    }
}

/// Queue figures.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Work waiting to be pulled.
    pub pending: u64,
    /// Work pulled and not yet finished.
    pub in_flight: u64,
    /// Messages in the dead-letter stream.
    pub dead_letters: u64,
    /// Delayed work waiting for its time.
    #[serde(default)]
    pub scheduled: u64,
    /// When the oldest work not yet delivered to a worker was queued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending: Option<String>,
    /// Messages stored in the work stream per second since the operator's previous look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_per_second: Option<f64>,
    /// Messages acknowledged (done) per second since the operator's previous look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_per_second: Option<f64>,
}

/// What a pool took over when it was first provisioned.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AdoptedStatus {
    /// The objects that existed: `stream`, `deadLetters`, `bucket`.
    pub objects: Vec<String>,
    /// Work messages in the adopted stream (queued, or in flight when it was left).
    pub messages: u64,
    /// Entries in the adopted results bucket.
    pub records: u64,
    /// Dead letters in the adopted dead-letter stream.
    pub dead_letters: u64,
}

/// A spec the schema let through but that cannot be turned into pool settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    pub field: &'static str,
    pub message: String,
}

fn duration(field: &'static str, text: &str) -> Result<Duration, InvalidSpec> {
    humantime::parse_duration(text).map_err(|err| InvalidSpec {
        field,
        message: err.to_string(),
    })
}

impl WorkPoolSpec {
    /// The settings the pool's api, workers and NATS objects follow.
    pub fn pool_spec(&self) -> Result<PoolSpec, InvalidSpec> {
        let handler = match (
            &self.worker.handler.builtin,
            &self.worker.handler.exec,
            &self.worker.handler.http,
        ) {
            (Some(builtin), None, None) => spec::HandlerSpec::Builtin(*builtin),
            (None, Some(exec), None) => spec::HandlerSpec::Exec {
                command: exec.command.clone(),
            },
            (None, None, Some(http)) => spec::HandlerSpec::Http {
                url: http.url.clone(),
            },
            _ => {
                return Err(InvalidSpec {
                    field: "worker.handler",
                    message: "exactly one of builtin, exec or http".into(),
                });
            }
        };
        crate::schedule::Schedule::all(&self.schedules).map_err(|err| InvalidSpec {
            field: "schedules",
            message: err.to_string(),
        })?;
        let pool = PoolSpec {
            result_ttl: duration("resultTTL", &self.result_ttl)?,
            queue: spec::QueueSpec {
                max_pending: self.queue.max_pending,
                max_payload_bytes: self.queue.max_payload_bytes as usize,
                dead_letter_ttl: duration("queue.deadLetterTTL", &self.queue.dead_letter_ttl)?,
            },
            nats: spec::NatsSpec {
                url: self.nats.url.clone(),
                replicas: usize::from(self.nats.replicas),
            },
            worker: spec::WorkerSpec {
                concurrency: self.worker.concurrency as usize,
                handler,
                timeout: duration("worker.timeout", &self.worker.timeout)?,
                max_attempts: self.worker.max_attempts,
                backoff: self
                    .worker
                    .backoff
                    .iter()
                    .map(|text| duration("worker.backoff", text))
                    .collect::<Result<_, _>>()?,
                partitions: self.worker.partitions,
                ack_wait: duration("worker.ackWait", &self.worker.ack_wait)?,
            },
            webhooks: self.webhooks.clone(),
            groups: self.groups.clone(),
        };
        pool.validate().map_err(|err| InvalidSpec {
            field: "spec",
            message: err.to_string(),
        })?;
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn a_comma_separated_url_names_every_server() {
        assert_eq!(nats_servers("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            nats_servers("nats://a:1, nats://b:2,nats://c:3,"),
            ["nats://a:1", "nats://b:2", "nats://c:3"]
        );
    }

    fn minimal() -> WorkPoolSpec {
        serde_json::from_value(serde_json::json!({"nats": {"url": "nats://nats:4222"}}))
            .expect("minimal spec")
    }

    #[test]
    fn defaults_give_the_original_demo_pool() {
        let pool = minimal().pool_spec().expect("valid");
        assert_eq!(
            pool.worker.handler,
            spec::HandlerSpec::Builtin(BuiltinHandler::Sleep)
        );
        assert_eq!(pool.result_ttl, Duration::from_secs(600));
        assert_eq!(pool.worker.backoff_after(3), Duration::from_secs(30));
        assert_eq!(pool.nats.url, "nats://nats:4222");
    }

    #[test]
    fn two_handler_kinds_are_refused() {
        let mut spec = minimal();
        spec.worker.handler.http = Some(HttpHandler {
            url: "http://localhost:9000".into(),
        });
        assert_eq!(spec.pool_spec().map_err(|e| e.field), Err("worker.handler"));
    }

    #[test]
    fn the_crd_carries_subresources_columns_and_cel_rules() {
        let crd = serde_json::to_string(&WorkPool::crd()).expect("crd json");
        for needle in [
            r#""scale":{"labelSelectorPath":".status.workers.selector","specReplicasPath":".spec.worker.replicas","statusReplicasPath":".status.workers.ready"}"#,
            r#""status":{}"#,
            "worker.handler needs exactly one of builtin, exec or http",
            "worker.autoscale.min must not exceed worker.autoscale.max",
            PARTITIONS_FIXED,
            r#""rule":"self == oldSelf""#,
            "worker.timeout must be at least 10ms",
            r#""name":"Pending""#,
        ] {
            assert!(crd.contains(needle), "{needle} missing from the CRD");
        }
    }
}
