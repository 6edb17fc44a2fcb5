//! The operator against a real kube-apiserver (one control plane for this test binary;
//! each test in its own namespace, with its own nats-server and Lease).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use workpool_core::PoolNames;
use workpool_core::crd::WorkPool;
use workpool_e2e::operator::{RunningOperator, pool_yaml};
use workpool_e2e::pods::wait_until;
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::pools::{condition, create_pool, install_crd, queue_ready, wait_pool};

const WAIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (&'static ControlPlane, kube::Client, String, NatsServer) {
    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let client = plane.client().await.expect("client");
    let namespace = plane.namespace(prefix).await.expect("namespace");
    let nats = NatsServer::start().await.expect("nats");
    (plane, client, namespace, nats)
}

/// A namespace with its own NATS, an operator, and the WorkPool `demo` (with `extra`
/// spec lines) reconciled once.
async fn running_pool(
    prefix: &str,
    extra: &str,
) -> (
    &'static ControlPlane,
    kube::Client,
    String,
    NatsServer,
    RunningOperator,
) {
    let (plane, client, ns, nats) = setup(prefix).await;
    let operator = RunningOperator::start(plane, &ns, "op", "op-0")
        .await
        .expect("operator");
    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), extra))
        .await
        .expect("create");
    wait_pool(&client, &ns, "demo", WAIT, queue_ready)
        .await
        .expect("reconciled");
    (plane, client, ns, nats, operator)
}

/// Waits until the worker Deployment asks for `replicas` pods.
async fn wait_worker_replicas(client: &kube::Client, ns: &str, replicas: i32, why: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while deployment(client, ns, "demo-worker")
        .await
        .spec
        .unwrap()
        .replicas
        != Some(replicas)
    {
        assert!(std::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn deployment(client: &kube::Client, namespace: &str, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("deployment")
}

fn spec_env(deployment: &Deployment) -> serde_json::Value {
    let env = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    let spec = env
        .iter()
        .find(|e| e.name == "WORKPOOL_SPEC")
        .and_then(|e| e.value.clone())
        .expect("WORKPOOL_SPEC");
    serde_json::from_str(&spec).expect("spec JSON")
}

#[tokio::test]
async fn a_workpool_gets_its_children_and_nats_objects_and_follows_changes() {
    let (_plane, client, ns, nats) = setup("children").await;
    let _operator = RunningOperator::start(ControlPlane::shared().unwrap(), &ns, "op", "op-0")
        .await
        .expect("operator");
    create_pool(
        &client,
        &ns,
        &pool_yaml("demo", &nats.url(), "  resultTTL: 2m\n"),
    )
    .await
    .expect("create");
    let pool = wait_pool(&client, &ns, "demo", WAIT, |p| {
        queue_ready(p) && p.status.as_ref().unwrap().observed_generation == Some(1)
    })
    .await
    .expect("reconciled");
    let uid = pool.metadata.uid.clone().unwrap();
    let owned = |meta: &kube::api::ObjectMeta| {
        meta.owner_references.as_ref().is_some_and(|refs| {
            refs.iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
    };

    let api = deployment(&client, &ns, "demo-api").await;
    let worker = deployment(&client, &ns, "demo-worker").await;
    assert!(owned(&api.metadata) && owned(&worker.metadata));
    assert_eq!(api.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(worker.spec.as_ref().unwrap().replicas, Some(2));
    let container = &api
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["workpool-api".to_owned()][..])
    );
    let env_names: Vec<&str> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    for name in [
        "POD_NAME",
        "POD_NAMESPACE",
        "POD_IP",
        "WORKPOOL_POOL",
        "WORKPOOL_SPEC",
    ] {
        assert!(env_names.contains(&name), "{name} missing: {env_names:?}");
    }
    assert_eq!(spec_env(&api)["resultTTL"], "2m");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    assert!(owned(
        &services
            .get("demo-api")
            .await
            .expect("api service")
            .metadata
    ));
    let headless = services.get("demo-workers").await.expect("worker service");
    assert_eq!(
        headless.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    assert!(owned(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get("demo-workpool")
            .await
            .expect("sa")
            .metadata
    ));
    assert!(owned(
        &Api::<Role>::namespaced(client.clone(), &ns)
            .get("demo-workpool")
            .await
            .expect("role")
            .metadata
    ));
    assert!(owned(
        &Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .get("demo-workpool")
            .await
            .expect("binding")
            .metadata
    ));
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("pdbs");
    assert_eq!(pdbs.items.len(), 2);
    let js = async_nats::jetstream::new(nats.client().await.expect("nats client"));
    let stream_name = format!("WP_{ns}_demo");
    js.get_stream(&stream_name)
        .await
        .expect("stream provisioned");
    let status = pool.status.clone().unwrap();
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://demo-api.{ns}.svc").as_str())
    );
    assert_eq!(
        status.workers.as_ref().unwrap().selector.as_deref(),
        Some("app.kubernetes.io/component=worker,app.kubernetes.io/instance=demo")
    );

    // Change the spec: children and NATS config follow, observedGeneration advances.
    let patch = serde_json::json!({"spec": {"queue": {"maxPending": 500}, "worker": {"concurrency": 8, "replicas": 3}}});
    Api::<WorkPool>::namespaced(client.clone(), &ns)
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    wait_pool(&client, &ns, "demo", WAIT, |p| {
        p.status.as_ref().unwrap().observed_generation == Some(2)
    })
    .await
    .expect("generation 2");
    let worker = deployment(&client, &ns, "demo-worker").await;
    assert_eq!(worker.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(spec_env(&worker)["worker"]["concurrency"], 8);
    let config = js
        .get_stream(&stream_name)
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    assert_eq!(config.max_messages, 500);

    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("events");
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Applied")),
        "an Applied event"
    );
}

#[tokio::test]
async fn deletion_removes_nats_objects_unless_retained_and_children_are_collected() {
    let (_plane, client, ns, nats) = setup("delete").await;
    let _operator = RunningOperator::start(ControlPlane::shared().unwrap(), &ns, "op", "op-0")
        .await
        .expect("operator");
    create_pool(&client, &ns, &pool_yaml("gone", &nats.url(), ""))
        .await
        .expect("create");
    create_pool(
        &client,
        &ns,
        &pool_yaml("kept", &nats.url(), "  deletionPolicy: Retain\n"),
    )
    .await
    .expect("create");
    for name in ["gone", "kept"] {
        wait_pool(&client, &ns, name, WAIT, queue_ready)
            .await
            .expect("ready");
    }
    let js = async_nats::jetstream::new(nats.client().await.expect("client"));
    let api: Api<WorkPool> = Api::namespaced(client.clone(), &ns);
    for name in ["gone", "kept"] {
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["gone", "kept"] {
        let deadline = std::time::Instant::now() + WAIT;
        while api.get_opt(name).await.expect("get").is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} was not finalized"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let gone = PoolNames::new(&ns, "gone").unwrap();
    let kept = PoolNames::new(&ns, "kept").unwrap();
    assert!(
        js.get_stream(gone.stream()).await.is_err(),
        "Delete removes the stream"
    );
    assert!(js.get_stream(gone.dead_letter_stream()).await.is_err());
    assert!(
        js.get_key_value(gone.bucket()).await.is_err(),
        "Delete removes the bucket"
    );
    js.get_stream(kept.stream())
        .await
        .expect("Retain keeps the stream");
    js.get_key_value(kept.bucket())
        .await
        .expect("Retain keeps the bucket");
    // The garbage collector removes the children through their owner references.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + WAIT;
    while !deployments
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "children were not garbage-collected"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn an_operator_stopped_mid_reconcile_converges_after_restart_without_duplicates() {
    let (plane, client, ns, nats) = setup("restart").await;
    let first = RunningOperator::start(plane, &ns, "op", "op-0")
        .await
        .expect("operator");
    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), ""))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.abort();
    // The aborted replica's lease must expire (6s) before the next one leads.
    let _second = RunningOperator::start(plane, &ns, "op", "op-1")
        .await
        .expect("operator");
    wait_pool(&client, &ns, "demo", WAIT, |p| {
        queue_ready(p) && p.status.as_ref().unwrap().observed_generation == Some(1)
    })
    .await
    .expect("converged");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    let mut names: Vec<String> = deployments
        .items
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["demo-api", "demo-worker"]);
    let services = Api::<Service>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(services.items.len(), 2);
    let js = async_nats::jetstream::new(nats.client().await.expect("client"));
    let mut streams: Vec<String> = futures::TryStreamExt::try_collect(js.stream_names())
        .await
        .expect("streams");
    streams.sort();
    assert_eq!(
        streams,
        [
            format!("KV_WP_{ns}_demo"),
            format!("WP_{ns}_demo"),
            format!("WP_{ns}_demo_DLQ")
        ]
    );
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let (plane, client, ns, nats) = setup("leader").await;
    let a = RunningOperator::start(plane, &ns, "op", "op-a")
        .await
        .expect("a");
    let b = RunningOperator::start(plane, &ns, "op", "op-b")
        .await
        .expect("b");
    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), ""))
        .await
        .expect("create");
    wait_pool(&client, &ns, "demo", WAIT, queue_ready)
        .await
        .expect("reconciled");
    let (a_leads, b_leads) = (
        a.metric("workpool_operator_leader").await,
        b.metric("workpool_operator_leader").await,
    );
    assert_eq!(a_leads + b_leads, 1.0, "exactly one leader");
    let (leader, standby) = if a_leads == 1.0 { (a, b) } else { (b, a) };
    assert!(leader.metric("workpool_operator_reconciles_total").await >= 1.0);
    assert_eq!(
        standby.metric("workpool_operator_reconciles_total").await,
        0.0,
        "the standby does not reconcile"
    );

    leader.stop().await;
    let patch = serde_json::json!({"spec": {"worker": {"replicas": 4}}});
    Api::<WorkPool>::namespaced(client.clone(), &ns)
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    wait_pool(&client, &ns, "demo", WAIT, |p| {
        p.status.as_ref().unwrap().observed_generation == Some(2)
    })
    .await
    .expect("standby took over");
    assert_eq!(standby.metric("workpool_operator_leader").await, 1.0);
    assert!(standby.metric("workpool_operator_reconciles_total").await >= 1.0);
    assert_eq!(
        deployment(&client, &ns, "demo-worker")
            .await
            .spec
            .unwrap()
            .replicas,
        Some(4)
    );
}

/// A `nats.url` listing a cluster's members, one of them down, is provisioned through the
/// others, as the pods connect (before, the operator parsed the list as one address).
#[tokio::test]
async fn a_url_listing_several_servers_reaches_the_one_that_is_up() {
    let (plane, client, ns, nats) = setup("urllist").await;
    let _operator = RunningOperator::start(plane, &ns, "op", "op-0")
        .await
        .expect("operator");
    let down = workpool_local_cluster::free_port().expect("port");
    let url = format!("nats://127.0.0.1:{down}, {}", nats.url());
    create_pool(&client, &ns, &pool_yaml("demo", &url, ""))
        .await
        .expect("create");
    wait_pool(&client, &ns, "demo", WAIT, queue_ready)
        .await
        .expect("provisioned through the server that is up");
}

#[tokio::test]
async fn nats_down_is_a_condition_and_recovery_follows() {
    let (_plane, client, ns, mut nats, operator) = running_pool("natsdown", "").await;
    nats.stop().await.expect("stop nats");
    // A spec change makes the operator look again at once.
    let patch = serde_json::json!({"spec": {"worker": {"concurrency": 6}}});
    let api: Api<WorkPool> = Api::namespaced(client.clone(), &ns);
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let down = wait_pool(&client, &ns, "demo", WAIT, |p| {
        condition(p, "QueueReady").is_some_and(|(s, _)| s == "False")
    })
    .await
    .expect("QueueReady=False");
    assert_eq!(condition(&down, "QueueReady").unwrap().1, "NatsUnreachable");
    assert_eq!(condition(&down, "Ready").unwrap().0, "False");
    // A scale change still reaches the Deployment; the new settings wait for NATS.
    let patch = serde_json::json!({"spec": {"worker": {"replicas": 3}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("scale");
    wait_worker_replicas(&client, &ns, 3, "a scale change while NATS is down").await;
    for name in ["demo-api", "demo-worker"] {
        let spec = spec_env(&deployment(&client, &ns, name).await);
        assert_eq!(
            spec["worker"]["concurrency"], 4,
            "{name} got settings NATS has not accepted"
        );
    }
    // Fail a few more reconciles, as a long outage would: a backoff grown from them must
    // not delay the recovery.
    let errors = "workpool_operator_reconcile_errors_total{category=\"NatsUnreachable\"}";
    for poke_number in 0..5 {
        let before = operator.metric(errors).await;
        let poke = serde_json::json!({"metadata": {"annotations": {"test/poke": poke_number.to_string()}}});
        api.patch("demo", &PatchParams::default(), &Patch::Merge(&poke))
            .await
            .expect("poke");
        wait_until("the poked reconcile to fail", WAIT, || async {
            operator.metric(errors).await > before
        })
        .await
        .expect("the poked reconcile to fail");
    }
    nats.start_again().await.expect("start nats");
    // No poke now: the operator looks again by itself, within seconds.
    let back = wait_pool(&client, &ns, "demo", Duration::from_secs(20), queue_ready)
        .await
        .ok();
    let back = back.expect("recovered within 20 s of NATS coming back, with no poke");
    assert_eq!(back.status.unwrap().provisioned_generation, Some(3));
    let worker = deployment(&client, &ns, "demo-worker").await;
    assert_eq!(spec_env(&worker)["worker"]["concurrency"], 6);
}

/// The Warning events of reason `reason` in `ns`.
async fn warnings(
    client: &kube::Client,
    ns: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test]
async fn a_spec_nats_refuses_never_reaches_the_pods() {
    let (_plane, client, ns, nats, _operator) = running_pool("refused", "").await;
    let before: Vec<serde_json::Value> = futures::future::join_all(
        ["demo-api", "demo-worker"]
            .map(|name| async { spec_env(&deployment(&client, &ns, name).await) }),
    )
    .await;
    // A single server cannot hold 3 replicas; the concurrency change rides along.
    let api: Api<WorkPool> = Api::namespaced(client.clone(), &ns);
    let patch =
        serde_json::json!({"spec": {"nats": {"replicas": 3}, "worker": {"concurrency": 8}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let refused = wait_pool(&client, &ns, "demo", WAIT, |p| {
        condition(p, "QueueReady").is_some_and(|(s, _)| s == "False")
            && p.status.as_ref().unwrap().observed_generation == Some(2)
    })
    .await
    .expect("refused");
    // Give a wrong operator time to roll the pods.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, before) in ["demo-api", "demo-worker"].iter().zip(&before) {
        let after = spec_env(&deployment(&client, &ns, name).await);
        assert_eq!(
            &after, before,
            "{name}'s WORKPOOL_SPEC changed to a refused spec"
        );
    }
    let status = refused.status.clone().unwrap();
    let queue = status
        .conditions
        .iter()
        .find(|c| c.type_ == "QueueReady")
        .unwrap();
    assert_eq!(queue.reason, "NatsConfigRejected");
    assert!(
        queue.message.contains("Deployments stay as they are"),
        "{}",
        queue.message
    );
    assert_eq!(status.provisioned_generation, Some(1));
    let events = warnings(&client, &ns, "NatsConfigRejected").await;
    assert!(
        events.iter().any(|e| e
            .note
            .as_deref()
            .is_some_and(|n| n.contains("stay as they are"))),
        "a Warning says why: {events:?}"
    );

    // Fixing the spec rolls the pods onto it.
    let patch = serde_json::json!({"spec": {"nats": {"replicas": 1}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    wait_pool(&client, &ns, "demo", WAIT, |p| {
        queue_ready(p) && p.status.as_ref().unwrap().provisioned_generation == Some(3)
    })
    .await
    .expect("accepted");
    let worker = deployment(&client, &ns, "demo-worker").await;
    assert_eq!(spec_env(&worker)["worker"]["concurrency"], 8);

    // A new pool whose spec NATS refuses gets no pods at all.
    let fresh = format!(
        "apiVersion: workpool.dev/v1alpha1\nkind: WorkPool\nmetadata:\n  name: fresh\nspec:\n  nats:\n    url: {}\n    replicas: 3\n",
        nats.url()
    );
    create_pool(&client, &ns, &fresh).await.expect("create");
    wait_pool(&client, &ns, "fresh", WAIT, |p| {
        condition(p, "QueueReady").is_some_and(|(_, reason)| reason == "NatsConfigRejected")
    })
    .await
    .expect("refused");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(
        deployments
            .get_opt("fresh-api")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        deployments
            .get_opt("fresh-worker")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn worker_partitions_are_fixed_once_the_pool_exists() {
    let (plane, client, ns, nats) = setup("partitions").await;
    let _operator = RunningOperator::start(plane, &ns, "op", "op-0")
        .await
        .expect("operator");
    let js = async_nats::jetstream::new(nats.client().await.expect("nats client"));
    // Any valid count works for a new pool.
    for (name, partitions) in [("one", Some(1)), ("many", Some(1024)), ("default", None)] {
        let extra = partitions.map_or(String::new(), |n| {
            format!("  worker:\n    partitions: {n}\n")
        });
        create_pool(&client, &ns, &pool_yaml(name, &nats.url(), &extra))
            .await
            .expect("create");
        wait_pool(&client, &ns, name, WAIT, queue_ready)
            .await
            .expect("reconciled");
        let stream = js
            .get_stream(PoolNames::new(&ns, name).unwrap().stream())
            .await
            .expect("stream");
        let consumers: Vec<String> = futures::TryStreamExt::try_collect(stream.consumer_names())
            .await
            .expect("consumers");
        let keyed = consumers.iter().filter(|c| c.starts_with("keyed-")).count();
        assert_eq!(keyed, partitions.unwrap_or(16) as usize, "{name}");
    }
    let kubectl = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        plane.kubectl(&all)
    };
    let patched = kubectl(&[
        "patch",
        "workpool/one",
        "--type=merge",
        "-p",
        r#"{"spec":{"worker":{"partitions":2}}}"#,
    ])
    .expect_err("kubectl patch of partitions");
    assert!(
        patched
            .to_string()
            .contains(workpool_core::crd::PARTITIONS_FIXED),
        "{patched}"
    );
    let mut object: serde_json::Value =
        serde_json::from_str(&kubectl(&["get", "workpool/default", "-o", "json"]).expect("get"))
            .expect("json");
    object["spec"]["worker"]["partitions"] = 32.into();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), object.to_string()).expect("write");
    let replaced = kubectl(&["replace", "-f", &file.path().display().to_string()])
        .expect_err("kubectl replace with other partitions");
    assert!(
        replaced.to_string().contains("spec.worker.partitions"),
        "{replaced}"
    );
    assert!(
        replaced
            .to_string()
            .contains(workpool_core::crd::PARTITIONS_FIXED),
        "{replaced}"
    );
    // The rest of the spec stays changeable.
    kubectl(&["scale", "workpool/one", "--replicas=3"]).expect("kubectl scale");
    kubectl(&[
        "patch",
        "workpool/one",
        "--type=merge",
        "-p",
        r#"{"spec":{"worker":{"concurrency":8}}}"#,
    ])
    .expect("kubectl patch of concurrency");
}

#[tokio::test]
async fn kubectl_scale_changes_the_worker_deployment() {
    let (plane, client, ns, _nats, _operator) = running_pool("scale", "").await;
    plane
        .kubectl(&["-n", &ns, "scale", "workpool/demo", "--replicas=3"])
        .expect("kubectl scale");
    wait_worker_replicas(
        &client,
        &ns,
        3,
        "worker Deployment did not follow kubectl scale",
    )
    .await;
    // Status at a glance: ready/desired pods like a Deployment's (no pods run in this
    // test, so none is ready), the queue, readiness.
    let deadline = std::time::Instant::now() + WAIT;
    let table = loop {
        let table = plane
            .kubectl(&["-n", &ns, "get", "workpools"])
            .expect("kubectl get");
        let row: Vec<&str> = table
            .lines()
            .find(|line| line.starts_with("demo "))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        if row.get(1..6) == Some(&["0/2", "0/3", "0", "0", "False"][..]) {
            break table;
        }
        assert!(std::time::Instant::now() < deadline, "{table}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for column in ["NAME", "API", "WORKERS", "PENDING", "DEAD", "READY", "AGE"] {
        assert!(table.contains(column), "{column} missing from\n{table}");
    }
    assert!(!table.contains("IN-FLIGHT"), "only in -o wide:\n{table}");
    let wide = plane
        .kubectl(&["-n", &ns, "get", "workpools", "-o", "wide"])
        .expect("kubectl get -o wide");
    for column in ["IN-FLIGHT", "IN/S", "OUT/S", "OLDEST"] {
        assert!(wide.contains(column), "{column} missing from\n{wide}");
    }
    let described = plane
        .kubectl(&["-n", &ns, "describe", "workpool", "demo"])
        .expect("kubectl describe");
    for shown in [
        "Conditions:",
        "QueueReady",
        "WorkersAvailable",
        "Queue:",
        "Pending:",
        "Dead Letters:",
        "Events:",
        "Applied",
    ] {
        assert!(
            described.contains(shown),
            "{shown} missing from\n{described}"
        );
    }
}

#[tokio::test]
async fn workers_autoscale_on_queue_depth() {
    let extra = "  worker:\n    autoscale:\n      min: 1\n      max: 5\n      targetBacklogPerReplica: 10\n";
    let (_plane, client, ns, nats, _operator) = running_pool("autoscale", extra).await;
    assert_eq!(
        deployment(&client, &ns, "demo-worker")
            .await
            .spec
            .unwrap()
            .replicas,
        Some(1),
        "no backlog: min"
    );
    let names = PoolNames::new(&ns, "demo").unwrap();
    let js = async_nats::jetstream::new(nats.client().await.expect("client"));
    for n in 0..35 {
        let id = workpool_core::WorkId::from_idempotency_key(&n.to_string());
        js.publish(names.work_subject("default", &id), "{}".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    wait_worker_replicas(
        &client,
        &ns,
        4,
        "35 queued at 10 per worker should give 4 workers",
    )
    .await;
    let pool = wait_pool(&client, &ns, "demo", WAIT, |p| {
        p.status
            .as_ref()
            .unwrap()
            .queue
            .as_ref()
            .is_some_and(|q| q.pending == 35)
    })
    .await
    .expect("pending in status");
    assert_eq!(pool.status.unwrap().workers.unwrap().desired, 4);
}

#[tokio::test]
async fn a_nats_setting_the_server_refuses_is_reported_not_retried() {
    let (_plane, client, ns, _nats, operator) = running_pool("immutable", "").await;
    // A single server cannot hold 3 replicas.
    let patch = serde_json::json!({"spec": {"nats": {"replicas": 3}}});
    Api::<WorkPool>::namespaced(client.clone(), &ns)
        .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let pool = wait_pool(&client, &ns, "demo", WAIT, |p| {
        condition(p, "QueueReady").is_some_and(|(s, _)| s == "False")
    })
    .await
    .expect("rejected");
    assert_eq!(
        condition(&pool, "QueueReady").unwrap().1,
        "NatsConfigRejected"
    );
    // A refused spec must leave the operator quiet: no retry loop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reconciles = operator.metric("workpool_operator_reconciles_total").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = operator.metric("workpool_operator_reconciles_total").await;
    assert!(
        after <= reconciles + 1.0,
        "no retry loop: {reconciles} then {after}"
    );
    assert_eq!(
        operator
            .metric("workpool_operator_reconcile_errors_total")
            .await,
        0.0,
        "a refusal is not an error to retry"
    );
}

#[tokio::test]
async fn the_helm_chart_renders_manifests_the_apiserver_accepts() {
    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let ns = plane.namespace("chart").await.expect("namespace");
    let helm = workpool_local_cluster::paths::tool("helm", "helm").expect("helm");
    let chart = workpool_local_cluster::paths::repo_root().join("charts/workpool");
    // The Prometheus Operator's own PodMonitor CRD, so the chart's PodMonitors are checked
    // against the real schema.
    for (file, crd) in [
        (
            "monitoring.coreos.com_podmonitors.yaml",
            "crd/podmonitors.monitoring.coreos.com",
        ),
        (
            "monitoring.coreos.com_prometheusrules.yaml",
            "crd/prometheusrules.monitoring.coreos.com",
        ),
    ] {
        let path =
            workpool_local_cluster::paths::tool("prometheus-operator-crds", file).expect("CRD");
        plane
            .kubectl(&["apply", "--server-side", "-f", &path.display().to_string()])
            .expect("Prometheus Operator CRD");
        plane
            .kubectl(&["wait", "--for=condition=Established", "--timeout=60s", crd])
            .expect("Prometheus Operator CRD established");
    }
    let with_monitoring = [
        "--set",
        "nats.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1/PodMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
    ];
    for extra in [
        &[][..],
        &["--set", "nats.enabled=true"][..],
        &with_monitoring[..],
    ] {
        let rendered = std::process::Command::new(&helm)
            .args([
                "template",
                "workpool",
                &chart.display().to_string(),
                "--namespace",
                &ns,
            ])
            .args(extra)
            .output()
            .expect("helm template");
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), &rendered.stdout).expect("write");
        let (applied, warnings) = plane
            .kubectl_with_warnings(&[
                "apply",
                "--dry-run=server",
                "-f",
                &file.path().display().to_string(),
            ])
            .expect("the apiserver accepts the chart");
        // The namespace enforces the restricted Pod Security Standard: the test Pod
        // would be refused, and a Deployment or StatefulSet whose pods would be is
        // answered with a warning.
        assert!(
            !warnings.contains("PodSecurity"),
            "the chart's pods are not restricted: {warnings}"
        );
        for kind in [
            "clusterrole.rbac.authorization.k8s.io/workpool",
            "deployment.apps/workpool-operator",
        ] {
            assert!(applied.contains(kind), "{kind} missing from\n{applied}");
        }
        // "auto" creates PodMonitors and the PrometheusRule exactly when the cluster
        // serves them.
        for kind in [
            "podmonitor.monitoring.coreos.com/workpool-pools",
            "prometheusrule.monitoring.coreos.com/workpool",
        ] {
            assert_eq!(
                applied.contains(kind),
                extra.contains(&"--api-versions"),
                "{kind}: {applied}"
            );
        }
    }
}

#[tokio::test]
async fn the_status_shows_the_oldest_pending_work_scheduled_work_and_rates() {
    // Autoscaled, so it is looked at every 10 s.
    let extra = "  worker:\n    autoscale:\n      min: 1\n      max: 1\n";
    let (plane, client, ns, nats, _operator) = running_pool("glance", extra).await;
    let names = PoolNames::new(&ns, "demo").unwrap();
    let js = async_nats::jetstream::new(nats.client().await.expect("client"));
    let publish = |subject: String| {
        let js = js.clone();
        async move {
            js.publish(subject, "{}".into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    };
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for n in 0..2 {
        let id = workpool_core::WorkId::from_idempotency_key(&format!("queued-{n}"));
        publish(names.work_subject("default", &id)).await;
    }
    let later = workpool_core::WorkId::from_idempotency_key("later");
    publish(names.delayed_subject("default", &later)).await;
    let queue = |pool: &WorkPool| pool.status.as_ref().and_then(|s| s.queue.clone());
    let pool = wait_pool(&client, &ns, "demo", WAIT, |p| {
        queue(p).is_some_and(|q| q.pending == 2 && q.scheduled == 1)
    })
    .await
    .expect("figures");
    let oldest: chrono::DateTime<chrono::Utc> = queue(&pool)
        .and_then(|q| q.oldest_pending)
        .expect("the oldest pending work")
        .parse()
        .expect("a time");
    assert!(oldest >= before && oldest <= chrono::Utc::now(), "{oldest}");
    for n in 2..12 {
        let id = workpool_core::WorkId::from_idempotency_key(&format!("queued-{n}"));
        publish(names.work_subject("default", &id)).await;
    }
    wait_pool(&client, &ns, "demo", WAIT, |p| {
        queue(p).is_some_and(|q| q.in_per_second.is_some_and(|rate| rate > 0.0))
    })
    .await
    .expect("a rate in");
    let wide = plane
        .kubectl(&["-n", &ns, "get", "workpools", "-o", "wide"])
        .expect("kubectl get -o wide");
    let row = wide
        .lines()
        .find(|line| line.starts_with("demo "))
        .unwrap_or_default();
    assert!(!row.contains("<none>"), "every column has a value:\n{wide}");
}

#[tokio::test]
async fn a_pool_scaled_to_zero_wakes_on_its_first_submission() {
    let extra = "  worker:\n    autoscale:\n      min: 0\n      max: 2\n";
    let (_plane, client, ns, nats, _operator) = running_pool("wake", extra).await;
    wait_worker_replicas(&client, &ns, 0, "no work, no workers").await;
    // What the api does for a submission: the message, then the `accepted` event.
    let names = PoolNames::new(&ns, "demo").unwrap();
    let nats_client = nats.client().await.expect("client");
    let js = async_nats::jetstream::new(nats_client.clone());
    let id = workpool_core::WorkId::from_idempotency_key("first");
    js.publish(names.work_subject("default", &id), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let submitted = std::time::Instant::now();
    nats_client
        .publish(
            names.event_subject("work", "accepted", "default"),
            "{}".into(),
        )
        .await
        .expect("event");
    wait_worker_replicas(&client, &ns, 1, "the first submission wakes a worker").await;
    // An autoscaled pool is looked at every 10 s anyway; the event came first.
    assert!(
        submitted.elapsed() < Duration::from_secs(5),
        "woken {:?} after the submission, as by a resync",
        submitted.elapsed()
    );
}

/// Deletes the pool `demo` and waits until it is finalized and its children collected.
async fn delete_and_wait_gone(client: &kube::Client, ns: &str) {
    let api: Api<WorkPool> = Api::namespaced(client.clone(), ns);
    api.delete("demo", &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = std::time::Instant::now() + WAIT;
    while api.get_opt("demo").await.expect("get").is_some() {
        assert!(std::time::Instant::now() < deadline, "not finalized");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    while deployments
        .get_opt("demo-worker")
        .await
        .expect("get")
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "children not collected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_pool_recreated_over_retained_objects_adopts_them_and_says_what_it_took() {
    let extra = "  deletionPolicy: Retain\n";
    let (_plane, client, ns, nats, _operator) = running_pool("adopt", extra).await;
    let api: Api<WorkPool> = Api::namespaced(client.clone(), &ns);
    let first = api.get("demo").await.expect("get").status.unwrap();
    assert_eq!(first.adopted, None, "a new pool adopts nothing");
    let names = PoolNames::new(&ns, "demo").unwrap();
    let js = async_nats::jetstream::new(nats.client().await.expect("client"));
    let id = workpool_core::WorkId::from_idempotency_key("left behind");
    js.publish(names.work_subject("default", &id), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let bucket = js.get_key_value(names.bucket()).await.expect("bucket");
    bucket.put("kept", "{}".into()).await.expect("put");
    delete_and_wait_gone(&client, &ns).await;

    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), extra))
        .await
        .expect("create");
    let pool = wait_pool(&client, &ns, "demo", WAIT, |p| {
        p.status.as_ref().is_some_and(|s| s.adopted.is_some())
    })
    .await
    .expect("adopted");
    let adopted = pool.status.unwrap().adopted.unwrap();
    assert_eq!(adopted.objects, ["stream", "deadLetters", "bucket"]);
    assert_eq!(
        (adopted.messages, adopted.records, adopted.dead_letters),
        (1, 1, 0)
    );
    let mut stream = js.get_stream(names.stream()).await.expect("stream");
    let held = stream.info().await.expect("info").state.messages;
    assert_eq!(held, 1, "the queued work is still there");
    assert!(
        bucket.get("kept").await.expect("get").is_some(),
        "the record too"
    );
    // The event follows the status patch of the same reconcile.
    let adopted_note = || async {
        let events = Api::<Event>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .expect("events");
        events
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Adopted"))
            .and_then(|e| e.message)
    };
    wait_until("an Adopted event", WAIT, || async {
        adopted_note().await.is_some()
    })
    .await
    .expect("an Adopted event");
    let note = adopted_note().await.unwrap();
    assert!(note.contains("1 messages"), "{note}");
}

#[tokio::test]
async fn a_pool_recreated_over_retained_keyed_work_keeps_its_partition_count() {
    let extra = "  deletionPolicy: Retain\n  worker:\n    partitions: 2\n";
    let (_plane, client, ns, nats, _operator) = running_pool("recreate", extra).await;
    let names = PoolNames::new(&ns, "demo").unwrap();
    let js = async_nats::jetstream::new(nats.client().await.expect("client"));
    let id = workpool_core::WorkId::from_idempotency_key("queued");
    js.publish(names.keyed_subject(1, &id, "default"), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    delete_and_wait_gone(&client, &ns).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    // Same name, another count: the retained keyed work would land elsewhere.
    let extra = "  worker:\n    partitions: 4\n";
    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), extra))
        .await
        .expect("create");
    let pool = wait_pool(&client, &ns, "demo", WAIT, |p| {
        condition(p, "QueueReady").is_some_and(|(_, reason)| reason == "NatsConfigRejected")
    })
    .await
    .expect("refused");
    let queue = pool
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "QueueReady")
        .unwrap();
    assert!(
        queue.message.contains("keyed partitions"),
        "{}",
        queue.message
    );
    assert!(
        deployments
            .get_opt("demo-worker")
            .await
            .expect("get")
            .is_none(),
        "no pods for a refused spec"
    );
}

/// The operator's own writes (finalizer, status, children) trigger nothing: a new pool is
/// reconciled once. Before, each of them was a watch event that reconciled the pool
/// again (4 reconciles for a new pool on this control plane). A child that goes away is
/// put back.
#[tokio::test]
async fn a_new_pool_is_reconciled_once_and_a_deleted_child_comes_back() {
    let (_plane, client, ns, _nats, operator) = running_pool("once", "").await;
    // Events of the writes above would have arrived by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        operator.metric("workpool_operator_reconciles_total").await,
        1.0,
        "one reconcile for a new pool"
    );
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    services
        .delete("demo-api", &DeleteParams::default())
        .await
        .expect("delete the api Service");
    deployments
        .delete("demo-worker", &DeleteParams::default())
        .await
        .expect("delete the worker Deployment");
    wait_until("the deleted children applied again", WAIT, || async {
        services.get_opt("demo-api").await.ok().flatten().is_some()
            && deployments
                .get_opt("demo-worker")
                .await
                .ok()
                .flatten()
                .is_some()
    })
    .await
    .expect("children back");
}
