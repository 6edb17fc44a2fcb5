//! Invalid WorkPools against a real kube-apiserver: each is refused when created (or
//! changed), with an error that names the field to fix. No operator runs: the schema
//! alone refuses them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use workpool_core::crd::{PARTITIONS_FIXED, WorkPool};
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::pools::install_crd;

/// One invalid pool: the spec fields that make it so (merged into a valid pool), the
/// field path the apiserver must name, and, for our own rules, their message.
struct Case {
    what: &'static str,
    spec: Value,
    field: &'static str,
    message: Option<&'static str>,
}

fn case(what: &'static str, spec: Value, field: &'static str) -> Case {
    Case {
        what,
        spec,
        field,
        message: None,
    }
}

fn with_message(
    what: &'static str,
    spec: Value,
    field: &'static str,
    message: &'static str,
) -> Case {
    Case {
        what,
        spec,
        field,
        message: Some(message),
    }
}

fn cases() -> Vec<Case> {
    let handler = "exactly one of builtin, exec or http";
    let backoff: Vec<&str> = vec!["1s"; 21];
    vec![
        with_message(
            "two handler kinds",
            json!({"worker": {"handler": {"builtin": "echo", "http": {"url": "http://localhost:9000"}}}}),
            "spec.worker.handler",
            handler,
        ),
        with_message(
            "no handler",
            json!({"worker": {"handler": {}}}),
            "spec.worker.handler",
            handler,
        ),
        case(
            "unknown builtin",
            json!({"worker": {"handler": {"builtin": "fly"}}}),
            "spec.worker.handler.builtin",
        ),
        case(
            "empty exec command",
            json!({"worker": {"handler": {"exec": {"command": []}}}}),
            "spec.worker.handler.exec.command",
        ),
        with_message(
            "http handler not http",
            json!({"worker": {"handler": {"http": {"url": "ftp://x"}}}}),
            "spec.worker.handler.http.url",
            "http:// or https://",
        ),
        case(
            "negative worker replicas",
            json!({"worker": {"replicas": -1}}),
            "spec.worker.replicas",
        ),
        case(
            "too many worker replicas",
            json!({"worker": {"replicas": 1001}}),
            "spec.worker.replicas",
        ),
        case(
            "negative api replicas",
            json!({"api": {"replicas": -1}}),
            "spec.api.replicas",
        ),
        case(
            "too many api replicas",
            json!({"api": {"replicas": 101}}),
            "spec.api.replicas",
        ),
        case(
            "concurrency 0",
            json!({"worker": {"concurrency": 0}}),
            "spec.worker.concurrency",
        ),
        case(
            "partitions 0",
            json!({"worker": {"partitions": 0}}),
            "spec.worker.partitions",
        ),
        case(
            "partitions too large",
            json!({"worker": {"partitions": 1025}}),
            "spec.worker.partitions",
        ),
        case(
            "resultTTL not a duration",
            json!({"resultTTL": "abc"}),
            "spec.resultTTL",
        ),
        with_message(
            "resultTTL under 1s",
            json!({"resultTTL": "500ms"}),
            "spec.resultTTL",
            "resultTTL must be at least 1s",
        ),
        case(
            "timeout not a duration",
            json!({"worker": {"timeout": "soon"}}),
            "spec.worker.timeout",
        ),
        with_message(
            "timeout 0s",
            json!({"worker": {"timeout": "0s"}}),
            "spec.worker.timeout",
            "worker.timeout must be at least 10ms",
        ),
        with_message(
            "ackWait under 500ms",
            json!({"worker": {"ackWait": "100ms"}}),
            "spec.worker.ackWait",
            "worker.ackWait must be at least 500ms",
        ),
        case(
            "maxAttempts 0",
            json!({"worker": {"maxAttempts": 0}}),
            "spec.worker.maxAttempts",
        ),
        case(
            "maxAttempts over 100",
            json!({"worker": {"maxAttempts": 101}}),
            "spec.worker.maxAttempts",
        ),
        case(
            "empty backoff",
            json!({"worker": {"backoff": []}}),
            "spec.worker.backoff",
        ),
        case(
            "backoff not a duration",
            json!({"worker": {"backoff": ["1s", "later"]}}),
            "spec.worker.backoff[1]",
        ),
        case(
            "backoff too long",
            json!({"worker": {"backoff": backoff}}),
            "spec.worker.backoff",
        ),
        with_message(
            "autoscale min > max",
            json!({"worker": {"autoscale": {"min": 5, "max": 2}}}),
            "spec.worker",
            "worker.autoscale.min must not exceed worker.autoscale.max",
        ),
        case(
            "autoscale max 0",
            json!({"worker": {"autoscale": {"min": 0, "max": 0}}}),
            "spec.worker.autoscale.max",
        ),
        case(
            "autoscale target 0",
            json!({"worker": {"autoscale": {"min": 1, "max": 2, "targetBacklogPerReplica": 0}}}),
            "spec.worker.autoscale.targetBacklogPerReplica",
        ),
        case(
            "deletionPolicy not in the enum",
            json!({"deletionPolicy": "Sometimes"}),
            "spec.deletionPolicy",
        ),
        case(
            "image pullPolicy not in the enum",
            json!({"image": {"pullPolicy": "Sometimes"}}),
            "spec.image.pullPolicy",
        ),
        with_message(
            "nats url scheme",
            json!({"nats": {"url": "http://nats:4222"}}),
            "spec.nats.url",
            "nats.url must start with nats:// or tls://",
        ),
        case(
            "nats url missing",
            json!({"nats": {"url": null}}),
            "spec.nats.url",
        ),
        with_message(
            "nats replicas 2",
            json!({"nats": {"replicas": 2}}),
            "spec.nats.replicas",
            "nats.replicas must be 1, 3 or 5",
        ),
        case(
            "credentials Secret not an object name",
            json!({"nats": {"credentialsSecret": "Not_A_Name"}}),
            "spec.nats.credentialsSecret",
        ),
        case(
            "maxPayloadBytes too large",
            json!({"queue": {"maxPayloadBytes": 8_388_609}}),
            "spec.queue.maxPayloadBytes",
        ),
        case(
            "maxPayloadBytes too small",
            json!({"queue": {"maxPayloadBytes": 10}}),
            "spec.queue.maxPayloadBytes",
        ),
        case(
            "maxPending 0",
            json!({"queue": {"maxPending": 0}}),
            "spec.queue.maxPending",
        ),
        case(
            "deadLetterTTL not a duration",
            json!({"queue": {"deadLetterTTL": "forever"}}),
            "spec.queue.deadLetterTTL",
        ),
        case(
            "jwt secret without key",
            json!({"api": {"auth": {"jwtSecretRef": {"name": "jwt"}}}}),
            "spec.api.auth.jwtSecretRef.key",
        ),
        case(
            "auth with neither a key nor a JWKS",
            json!({"api": {"auth": {"tenantClaim": "org"}}}),
            "exactly one of jwtSecretRef or jwksUrl",
        ),
        case(
            "auth with both a key and a JWKS",
            json!({"api": {"auth": {
                "jwtSecretRef": {"name": "jwt", "key": "k"},
                "jwksUrl": "https://idp.example/jwks.json",
            }}}),
            "exactly one of jwtSecretRef or jwksUrl",
        ),
        case(
            "a JWKS URL that is not http(s)",
            json!({"api": {"auth": {"jwksUrl": "file:///etc/passwd"}}}),
            "spec.api.auth.jwksUrl",
        ),
    ]
}

/// RFC 7386 merge: `patch` into `target`, `null` removing a field.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn pool(name: &str, spec: &Value) -> DynamicObject {
    let mut object = json!({
        "apiVersion": "workpool.dev/v1alpha1",
        "kind": "WorkPool",
        "metadata": {"name": name},
        "spec": {"nats": {"url": "nats://127.0.0.1:4222"}},
    });
    merge(&mut object["spec"], spec);
    serde_json::from_value(object).expect("a WorkPool object")
}

async fn setup() -> (Api<DynamicObject>, String) {
    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let client = plane.client().await.expect("client");
    let namespace = plane.namespace("invalid").await.expect("namespace");
    let resource = ApiResource::erase::<WorkPool>(&());
    (
        Api::namespaced_with(client, &namespace, &resource),
        namespace,
    )
}

/// The apiserver's refusal of `result`, or a panic naming `what` if it was accepted.
fn refusal(what: &str, result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Ok(_) => panic!("{what}: accepted"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn invalid_pools_are_refused_with_an_error_that_names_the_field() {
    let (api, _ns) = setup().await;
    let cases = cases();
    assert!(cases.len() >= 20, "the table has {} rows", cases.len());
    let mut wrong = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let object = pool(&format!("bad-{n}"), &case.spec);
        let message = match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                wrong.push(format!("{}: accepted", case.what));
                continue;
            }
            Err(err) => err.to_string(),
        };
        let names_field = message.contains(&format!("{}:", case.field));
        let says_why = case.message.is_none_or(|m| message.contains(m));
        if !(names_field && says_why) {
            wrong.push(format!("{}: {message}", case.what));
        }
    }
    assert!(
        wrong.is_empty(),
        "refused without naming the field:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn names_that_are_not_dns_labels_of_40_characters_are_refused() {
    let (api, _ns) = setup().await;
    for name in ["a.b", &"a".repeat(41), "Bad_Name"] {
        let message = refusal(
            name,
            api.create(&PostParams::default(), &pool(name, &json!({})))
                .await,
        );
        assert!(message.contains("metadata.name"), "{name}: {message}");
    }
}

#[tokio::test]
async fn changing_partitions_is_refused_and_other_changes_are_not() {
    let (api, _ns) = setup().await;
    api.create(
        &PostParams::default(),
        &pool("fixed", &json!({"worker": {"partitions": 7}})),
    )
    .await
    .expect("a pool with 7 partitions");
    let change = |spec: Value| {
        let api = api.clone();
        async move {
            api.patch(
                "fixed",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": spec})),
            )
            .await
        }
    };
    for spec in [
        json!({"worker": {"partitions": 8}}),
        // Back to the default (16) is a change too.
        json!({"worker": {"partitions": null}}),
    ] {
        let message = refusal("a partitions change", change(spec).await);
        assert!(
            message.contains("spec.worker.partitions:") && message.contains(PARTITIONS_FIXED),
            "{message}"
        );
    }
    change(json!({"worker": {"partitions": 7, "concurrency": 8}}))
        .await
        .expect("the same count with another change is fine");
}

#[tokio::test]
async fn valid_pools_are_accepted() {
    let (api, ns) = setup().await;
    for (n, spec) in [
        json!({}),
        json!({"worker": {"partitions": 1}}),
        json!({"worker": {"partitions": 1024, "timeout": "10ms", "ackWait": "500ms", "backoff": ["0s"]}}),
        json!({"resultTTL": "1s", "nats": {"credentialsSecret": "nats.creds-1", "replicas": 5}}),
        json!({"api": {"auth": {"jwtSecretRef": {"name": "jwt", "key": "secret.key"}}}}),
    ]
    .iter()
    .enumerate()
    {
        api.create(&PostParams::default(), &pool(&format!("good-{n}"), spec))
            .await
            .unwrap_or_else(|err| panic!("{spec}: {err}"));
    }
    // The shipped examples too.
    for example in ["workpool.yaml", "scheduled.yaml"] {
        let path = workpool_local_cluster::paths::repo_root()
            .join("examples")
            .join(example);
        ControlPlane::shared()
            .unwrap()
            .kubectl(&[
                "-n",
                &ns,
                "apply",
                "--dry-run=server",
                "-f",
                &path.display().to_string(),
            ])
            .unwrap_or_else(|err| panic!("examples/{example} is refused: {err}"));
    }
}
