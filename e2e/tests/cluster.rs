//! The whole product on the local cluster, a control plane and a real node (kubelet,
//! containerd, runc): `helm install` puts the operator in a pod, it makes the pool's api
//! and worker pods from our image, they find NATS by its Service name, and the original
//! demo runs against them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::{Value, json};
use workpool_core::crd::WorkPool;
use workpool_e2e::http::post_json;
use workpool_e2e::pods::{pod_processes, ready_endpoints, running_pods, wait_until};
use workpool_local_cluster::pools::{condition, create_pool, wait_pool};
use workpool_local_cluster::prometheus::{Prometheus, sample_value};
use workpool_local_cluster::supervisor::LocalCluster;

const WAIT: Duration = Duration::from_secs(90);

/// No object of kind `K` is left in namespace `ns`.
async fn none_left<K>(client: &kube::Client, ns: &str) -> bool
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_for_real_and_the_original_demo_works_on_them() {
    let cluster = LocalCluster::start().await.expect("local cluster");
    let (plane, client, nats) = (&cluster.plane, cluster.client.clone(), &cluster.nats);
    // A real Prometheus, finding pods through the apiserver by their scrape annotations.
    let prometheus = Prometheus::start(plane, "127.0.0.1:0", Duration::from_secs(1))
        .await
        .expect("prometheus");

    let ns = plane.namespace("demo").await.expect("namespace");
    let release_ns = plane.namespace("workpool-system").await.expect("namespace");
    let release = cluster
        .install_chart(
            &release_ns,
            &[("operator.watchNamespace", &ns), ("test.namespace", &ns)],
        )
        .await
        .expect("helm install");
    assert_eq!(
        running_pods(&client, &release_ns, "operator")
            .await
            .expect("pods")
            .len(),
        1,
        "the operator runs as a pod"
    );
    // NATS by its Service name, as in examples/workpool.yaml.
    let yaml = format!(
        "apiVersion: workpool.dev/v1alpha1\nkind: WorkPool\nmetadata:\n  name: demo\nspec:\n  nats:\n    url: {}\n  resultTTL: 3s\n",
        cluster.nats_service_url()
    );
    create_pool(&client, &ns, &yaml).await.expect("create");
    let ready = |p: &WorkPool| condition(p, "Ready").is_some_and(|(s, _)| s == "True");
    // Ready needs one api pod available; wait for both, as for both workers.
    let pool = wait_pool(&client, &ns, "demo", WAIT, |p| {
        let status = p.status.as_ref();
        ready(p)
            && status
                .and_then(|s| s.workers.as_ref())
                .is_some_and(|w| w.ready == 2)
            && status
                .and_then(|s| s.api.as_ref())
                .is_some_and(|a| a.ready == 2)
    })
    .await
    .unwrap_or_else(|err| {
        let logs = plane.kubectl(&["-n", &release_ns, "logs", "deploy/workpool-operator"]);
        panic!("pool Ready with its pods running: {err}\noperator log: {logs:?}")
    });
    assert_eq!(pool.status.as_ref().unwrap().api.as_ref().unwrap().ready, 2);
    wait_until("2 worker endpoints", WAIT, || async {
        ready_endpoints(&client, &ns, "demo-workers")
            .await
            .expect("slices")
            == 2
    })
    .await
    .expect("2 worker endpoints");

    // The original demo, straight to the api pods (each at its own address).
    let apis = running_pods(&client, &ns, "api").await.expect("pods");
    let http = workpool_local_cluster::http::client();
    let mut accepted_by = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for (n, api) in apis.iter().enumerate() {
        let ip = api.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let answer = post_json(
            &http,
            &format!("http://{ip}:8080/api/v1/work"),
            &json!({"data": {"ms": 1500, "n": n}}),
        )
        .await
        .expect("post");
        assert_eq!(answer["status"], "accepted", "{answer}");
        accepted_by.insert(answer["accepted_by"].as_str().unwrap().to_owned());
        ids.push((ip, answer["callback"].as_str().unwrap().to_owned()));
    }
    let names: std::collections::HashSet<String> = apis
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(accepted_by, names, "accepted_by names the api pods");
    let (ip, id) = ids[0].clone();
    let status = |ip: String, id: String| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://{ip}:8080/api/v1/work/{id}"))
                .send()
                .await
                .expect("get");
            let code = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (
                code,
                body["status"].as_str().unwrap_or_default().to_owned(),
                body,
            )
        }
    };
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, state, body) = status(ip.clone(), id.clone()).await;
        let label = if code == 404 { "404".to_owned() } else { state };
        if seen.last() != Some(&label) {
            seen.push(label.clone());
        }
        if label == "worked" {
            assert!(
                body["worker"].as_str().unwrap().starts_with("demo-worker-"),
                "{body}"
            );
        }
        if label == "404" {
            break;
        }
        assert!(Instant::now() < deadline, "demo did not finish: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.ends_with(&["working".to_owned(), "worked".to_owned(), "404".to_owned()]),
        "{seen:?}"
    );

    // Through the balancer in front of the api Service's ClusterIP, as `make up` serves
    // it: kube-proxy spreads connections over both api pods.
    let balancer = workpool_local_cluster::balancer::Balancer::to_service(&client, &ns, "demo-api")
        .await
        .expect("the api Service");
    let lb_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let lb_url = format!("http://{}", lb_listener.local_addr().expect("addr"));
    tokio::spawn(balancer.serve(lb_listener));
    let mut via_lb = std::collections::HashSet::new();
    let mut sent = 0;
    // kube-proxy picks at random: 40 connections miss a pod once in 2^39 runs.
    while via_lb.len() < 2 && sent < 40 {
        let n = sent;
        sent += 1;
        // A fresh connection each time, so the balancer picks again.
        let answer = post_json(
            &workpool_local_cluster::http::client(),
            &format!("{lb_url}/api/v1/work"),
            &json!({"data": {"ms": 10, "via": "lb", "n": n}}),
        )
        .await
        .expect("post via lb");
        via_lb.insert(
            answer["accepted_by"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(via_lb, names, "the balancer spreads over the api pods");
    // An answer the api gives before reading the body comes through whole: a 20 MiB POST
    // gets the api's own 413, not a reset connection.
    let huge = vec![b'x'; 20 << 20];
    let too_large = workpool_local_cluster::http::client()
        .post(format!("{lb_url}/api/v1/work"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("an answer to a 20 MiB POST, not a reset");
    assert_eq!(too_large.status().as_u16(), 413);
    let error: Value = too_large.json().await.expect("a JSON error");
    assert_eq!(error["code"], "payload_too_large", "{error}");

    // Prometheus scraped each worker pod: the work counters per pod add up to the work
    // done so far, and the latency histogram has those items.
    let done = ids.len() + sent;
    wait_until(
        "Prometheus to count the work of both worker pods",
        WAIT,
        || async {
            let per_pod = prometheus
                .query(r#"sum by (kubernetes_pod) (workpool_work_worked_total{pool="demo"})"#)
                .await
                .expect("query");
            let pods = per_pod
                .iter()
                .filter(|r| {
                    r["metric"]["kubernetes_pod"]
                        .as_str()
                        .is_some_and(|pod| pod.starts_with("demo-worker-"))
                })
                .count();
            let total: f64 = per_pod.iter().filter_map(sample_value).sum();
            pods == 2 && total >= done as f64
        },
    )
    .await
    .expect("Prometheus to count the work of both worker pods");
    let latency = prometheus
        .query(r#"sum(workpool_work_latency_seconds_count{pool="demo"})"#)
        .await
        .expect("query");
    assert!(
        latency.first().and_then(sample_value).unwrap_or(0.0) >= done as f64,
        "{latency:?}"
    );
    let median = prometheus
        .query(r#"histogram_quantile(0.5, sum by (le) (workpool_work_latency_seconds_bucket{pool="demo"}))"#)
        .await
        .expect("query");
    let median = median.first().and_then(sample_value).expect("a median");
    assert!(median > 0.0 && median < 60.0, "median latency {median}");

    // `helm test`: a pod submits work and waits until it is worked.
    if let Err(err) = release.test(&client).await {
        let logs = plane.kubectl(&["-n", &ns, "logs", "workpool-test-submit"]);
        panic!("helm test: {err}\nthe test pod's log: {logs:?}");
    }

    // Scale to 4 workers: 4 ready pods, 4 endpoints.
    plane
        .kubectl(&["-n", &ns, "scale", "workpool/demo", "--replicas=4"])
        .expect("scale");
    wait_until("4 worker endpoints", WAIT, || async {
        ready_endpoints(&client, &ns, "demo-workers")
            .await
            .expect("slices")
            == 4
    })
    .await
    .expect("4 worker endpoints");

    // Deleting a worker pod while it works loses nothing.
    let (ip, _) = ids[1].clone();
    let answer = post_json(
        &http,
        &format!("http://{ip}:8080/api/v1/work"),
        &json!({"data": {"ms": 4000, "kind": "long"}}),
    )
    .await
    .expect("post");
    let long_id = answer["callback"].as_str().unwrap().to_owned();
    let mut worker = String::new();
    wait_until("the long job to start", WAIT, || {
        let status = status(ip.clone(), long_id.clone());
        async move { status.await.1 == "working" }
    })
    .await
    .expect("the long job to start");
    let (_, _, body) = status(ip.clone(), long_id.clone()).await;
    worker.push_str(body["worker"].as_str().unwrap());
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(&worker, &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_until("the long job to finish", WAIT, || {
        let status = status(ip.clone(), long_id.clone());
        async move { status.await.1 == "worked" }
    })
    .await
    .expect("the long job to finish");

    // Force-deleting a worker pod while it works stops its processes (kubelet gives
    // them its 2 s minimum grace), and the work is done elsewhere.
    let answer = post_json(
        &http,
        &format!("http://{ip}:8080/api/v1/work"),
        &json!({"data": {"ms": 20000, "kind": "long", "force": true}}),
    )
    .await
    .expect("post");
    let forced_id = answer["callback"].as_str().unwrap().to_owned();
    wait_until("the long job to start", WAIT, || {
        let status = status(ip.clone(), forced_id.clone());
        async move { status.await.1 == "working" }
    })
    .await
    .expect("the long job to start");
    let (_, _, body) = status(ip.clone(), forced_id.clone()).await;
    let worker = body["worker"].as_str().unwrap().to_owned();
    let processes = pod_processes(&ns, &worker);
    assert!(!processes.is_empty(), "found the processes of {worker}");
    plane
        .kubectl(&[
            "-n",
            &ns,
            "delete",
            "pod",
            &worker,
            "--force",
            "--grace-period=0",
        ])
        .expect("force delete");
    wait_until(
        "the force-deleted pod's processes to stop",
        Duration::from_secs(10),
        || async { pod_processes(&ns, &worker).is_empty() },
    )
    .await
    .expect("the force-deleted pod's processes to stop");
    wait_until("the long job to finish elsewhere", WAIT, || {
        let status = status(ip.clone(), forced_id.clone());
        async move { status.await.1 == "worked" }
    })
    .await
    .expect("the long job to finish elsewhere");

    // Deleting the WorkPool removes its pods, Services and NATS objects.
    Api::<WorkPool>::namespaced(client.clone(), &ns)
        .delete("demo", &DeleteParams::default())
        .await
        .expect("delete pool");
    wait_until("the pool's pods to go", WAIT, || {
        none_left::<Pod>(&client, &ns)
    })
    .await
    .expect("the pool's pods to go");
    wait_until("the pool's Services to go", WAIT, || {
        none_left::<k8s_openapi::api::core::v1::Service>(&client, &ns)
    })
    .await
    .expect("the pool's Services to go");
    let js = async_nats::jetstream::new(nats.client().await.expect("nats client"));
    assert!(
        js.get_stream(format!("WP_{ns}_demo")).await.is_err(),
        "the stream is gone"
    );

    // `helm uninstall` leaves nothing of the release behind but the CRD, which Helm
    // never deletes (deleting it would delete every WorkPool in the cluster).
    release.uninstall().await.expect("helm uninstall");
    wait_until("the operator pod to go", WAIT, || {
        none_left::<Pod>(&client, &release_ns)
    })
    .await
    .expect("the operator pod to go");
    let left = plane
        .kubectl(&[
            "get",
            "all,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,leases,configmaps,secrets",
            "--all-namespaces",
            "-l",
            "app.kubernetes.io/instance=workpool",
            "-o",
            "name",
        ])
        .expect("kubectl get");
    assert_eq!(left.trim(), "", "left behind by helm uninstall");
    let leases = plane
        .kubectl(&["-n", &release_ns, "get", "leases", "-o", "name"])
        .expect("leases");
    assert_eq!(leases.trim(), "", "the leader Lease goes with the release");
    plane
        .kubectl(&["get", "crd/workpools.workpool.dev"])
        .expect("the CRD stays");

    // Stopping the node removes every container, process, mount, interface and
    // iptables chain it made; it fails naming what is left.
    drop(prometheus);
    cluster.stop().expect("the node stops and leaves nothing");
}
