//! Deleting WorkPools whose NATS cannot be reached, against a real kube-apiserver: a pool
//! that never had NATS objects goes at once; one that has them waits, says why, and goes
//! when an admin abandons its NATS objects.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use workpool_core::PoolNames;
use workpool_core::crd::WorkPool;
use workpool_e2e::operator::{RunningOperator, pool_yaml};
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::pools::{condition, create_pool, install_crd, queue_ready, wait_pool};
use workpool_operator::deletion::{ABANDON, ABANDON_ANNOTATION};

const WAIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (kube::Client, String, RunningOperator) {
    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let client = plane.client().await.expect("client");
    let namespace = plane.namespace(prefix).await.expect("namespace");
    let operator = RunningOperator::start(plane, &namespace, "op", "op-0")
        .await
        .expect("operator");
    (client, namespace, operator)
}

async fn delete(client: &kube::Client, ns: &str, name: &str) {
    Api::<WorkPool>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
}

/// Waits until the WorkPool is gone; panics after `within`.
async fn gone(client: &kube::Client, ns: &str, name: &str, within: Duration, why: &str) {
    let api: Api<WorkPool> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + within;
    while let Some(pool) = api.get_opt(name).await.expect("get") {
        assert!(Instant::now() < deadline, "{why}: {:?}", pool.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for an Event of `reason` on the pool `name` whose note contains `text`; returns
/// the note.
async fn event(
    client: &kube::Client,
    ns: &str,
    name: &str,
    (type_, reason): (&str, &str),
    text: &str,
) -> String {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let events = api.list(&ListParams::default()).await.expect("events");
        if let Some(found) = events.items.iter().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some(type_)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.note.as_deref().is_some_and(|note| note.contains(text))
        }) {
            return found.note.clone().unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no {type_} event {reason} for {name} saying {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `Deleting` condition's reason and message once it is set.
async fn deleting(client: &kube::Client, ns: &str, name: &str) -> (String, String) {
    let pool = wait_pool(client, ns, name, WAIT, |p| {
        condition(p, "Deleting").is_some()
    })
    .await
    .expect("a Deleting condition");
    let found = pool
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Deleting")
        .unwrap();
    assert_eq!(found.status, "True");
    (found.reason, found.message)
}

async fn abandon(client: &kube::Client, ns: &str, name: &str) {
    let patch = serde_json::json!({"metadata": {"annotations": {ABANDON_ANNOTATION: ABANDON}}});
    Api::<WorkPool>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
}

#[tokio::test]
async fn a_pool_whose_nats_never_answered_is_deleted_at_once() {
    let (client, ns, _operator) = setup("never").await;
    // Nothing listens there.
    let url = format!(
        "nats://127.0.0.1:{}",
        workpool_local_cluster::free_port().unwrap()
    );
    create_pool(&client, &ns, &pool_yaml("lost", &url, ""))
        .await
        .expect("create");
    wait_pool(&client, &ns, "lost", WAIT, |p| {
        condition(p, "QueueReady").is_some_and(|(_, reason)| reason == "NatsUnreachable")
    })
    .await
    .expect("NATS unreachable");
    delete(&client, &ns, "lost").await;
    gone(
        &client,
        &ns,
        "lost",
        Duration::from_secs(15),
        "a pool without NATS objects waited for NATS",
    )
    .await;
    event(
        &client,
        &ns,
        "lost",
        ("Normal", "Released"),
        "never accepted",
    )
    .await;
}

#[tokio::test]
async fn a_provisioned_pool_waits_for_its_nats_says_why_and_can_be_abandoned() {
    let (client, ns, _operator) = setup("abandon").await;
    let mut nats = NatsServer::start().await.expect("nats");
    // Credentials in the URL (a server without auth takes them) must not be shown.
    let url = nats.url().replace("nats://", "nats://wp:s3cret@");
    create_pool(&client, &ns, &pool_yaml("demo", &url, ""))
        .await
        .expect("create");
    wait_pool(&client, &ns, "demo", WAIT, queue_ready)
        .await
        .expect("provisioned");
    nats.stop().await.expect("stop nats");
    delete(&client, &ns, "demo").await;

    let (reason, message) = deleting(&client, &ns, "demo").await;
    assert_eq!(reason, "NatsUnreachable");
    let shown = format!("nats://***@{}:{}", nats.host, nats.port);
    assert!(message.contains(&shown), "{message}");
    assert!(
        message.contains(ABANDON_ANNOTATION),
        "says how to release it: {message}"
    );
    let note = event(
        &client,
        &ns,
        "demo",
        ("Warning", "NatsUnreachable"),
        "deletion waits",
    )
    .await;
    for text in [&message, &note] {
        assert!(!text.contains("s3cret"), "credentials shown: {text}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api: Api<WorkPool> = Api::namespaced(client.clone(), &ns);
    assert!(
        api.get_opt("demo").await.expect("get").is_some(),
        "released while its NATS objects exist"
    );

    abandon(&client, &ns, "demo").await;
    gone(
        &client,
        &ns,
        "demo",
        Duration::from_secs(15),
        "the annotation did not release it",
    )
    .await;
    let note = event(
        &client,
        &ns,
        "demo",
        ("Warning", "Abandoned"),
        "left behind",
    )
    .await;
    assert!(note.contains(&shown) && !note.contains("s3cret"), "{note}");
    nats.start_again().await.expect("start nats");
    let js = async_nats::jetstream::new(nats.client().await.expect("client"));
    js.get_stream(PoolNames::new(&ns, "demo").unwrap().stream())
        .await
        .expect("the abandoned stream is still there");
}

/// The operator never reads a pool's credentials Secret (it holds no right to read
/// Secrets): a pool naming one that does not exist is provisioned and deleted with the
/// operator's own NATS identity. Before, the deletion waited for the Secret and said
/// `NatsCredentials` (as when its namespace was being deleted).
#[tokio::test]
async fn a_pool_is_provisioned_and_deleted_without_reading_its_credentials_secret() {
    let (client, ns, _operator) = setup("creds").await;
    let nats = NatsServer::start().await.expect("nats");
    let extra = "    credentialsSecret: nats-creds\n";
    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), extra))
        .await
        .expect("create");
    wait_pool(&client, &ns, "demo", WAIT, queue_ready)
        .await
        .expect("provisioned with no Secret to read");
    delete(&client, &ns, "demo").await;
    gone(&client, &ns, "demo", WAIT, "the deletion did not finish").await;
    let js = async_nats::jetstream::new(nats.client().await.expect("client"));
    let stream = PoolNames::new(&ns, "demo").unwrap().stream();
    assert!(
        js.get_stream(&stream).await.is_err(),
        "the pool's stream {stream} was left behind"
    );
}
