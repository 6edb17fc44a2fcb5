//! Every test namespace enforces the `restricted` Pod Security Standard, so the
//! apiserver itself refuses a pod that is not hardened. Here: that enforcement is on (a
//! plain pod is refused), and a WorkPool's api and worker pods are admitted under it
//! and their ReplicaSets report no refusal. The chart's pods are checked the same way by
//! `operator.rs` (the rendered chart, dry-run), and run on the real node in `cluster.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use workpool_e2e::operator::{RunningOperator, pool_yaml};
use workpool_e2e::pods::wait_until;
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::pools::{create_pool, install_crd};

const WAIT: Duration = Duration::from_secs(60);

fn plain_pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "plain", "image": "workpool:test"}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_pools_pods_are_admitted_where_only_restricted_pods_are() {
    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let client = plane.client().await.expect("client");
    let ns = plane.namespace("restricted").await.expect("namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // Enforcement is on: a pod with no securityContext is refused outright.
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match pods.create(&dry_run, &plain_pod()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(status.message.contains("PodSecurity"), "{}", status.message);
        }
        other => panic!("a plain pod was not refused: {other:?}"),
    }

    let nats = NatsServer::start().await.expect("nats");
    let _operator = RunningOperator::start(plane, &ns, "op", "op-0")
        .await
        .expect("operator");
    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), ""))
        .await
        .expect("create");
    // The controller-manager creates the pods (no node runs them here): admission is
    // all this checks, and it is the apiserver's.
    for component in ["api", "worker"] {
        let selector =
            format!("app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}");
        let listed = ListParams::default().labels(&selector);
        wait_until(&format!("a {component} pod admitted"), WAIT, || async {
            pods.list(&listed)
                .await
                .is_ok_and(|list| !list.items.is_empty())
        })
        .await
        .unwrap();
    }
    let events: Api<Event> = Api::namespaced(client, &ns);
    let refusals = events
        .list(&ListParams::default().fields("reason=FailedCreate"))
        .await
        .unwrap();
    let messages: Vec<_> = refusals.items.iter().map(|e| e.message.clone()).collect();
    assert!(messages.is_empty(), "pods were refused: {messages:?}");
}
