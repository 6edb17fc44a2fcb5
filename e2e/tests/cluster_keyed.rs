//! The workers as a cluster, on real pods: membership from the worker
//! Service's EndpointSlices, keyed partitions spread by rendezvous hashing, serial work
//! per key across pods, partitions moving when a worker dies or the pool scales, the
//! cluster view following membership, cancelling running work across pods, and work
//! going on while the apiserver is away.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::{Value, json};
use workpool_core::names::partition_of;
use workpool_e2e::browser::Browser;
use workpool_e2e::http::{get_json, post_json};
use workpool_e2e::operator::RunningOperator;
use workpool_e2e::pods::{ready_endpoints, running_pods, wait_until};
use workpool_local_cluster::pools::{condition, create_pool, install_crd, wait_pool};
use workpool_local_cluster::supervisor::LocalCluster;

const WAIT: Duration = Duration::from_secs(120);
const PARTITIONS: u32 = 64;

/// GET the cluster view from one api pod.
async fn cluster_view(http: &reqwest::Client, api: &str) -> Value {
    get_json(http, &format!("{api}/api/v1/cluster"))
        .await
        .expect("cluster view")
}

/// Scales the pool's workers and waits until `replicas` ready pods back as many ready
/// endpoints; their names.
async fn scale_workers(
    cluster: &LocalCluster,
    ns: &str,
    replicas: usize,
    what: &str,
) -> BTreeSet<String> {
    cluster
        .plane
        .kubectl(&[
            "-n",
            ns,
            "scale",
            "workpool/keyed",
            &format!("--replicas={replicas}"),
        ])
        .expect("scale");
    wait_until(what, WAIT, || async {
        ready_endpoints(&cluster.client, ns, "keyed-workers")
            .await
            .expect("slices")
            == replicas
            && worker_pods(&cluster.client, ns).await.len() == replicas
    })
    .await
    .expect(what);
    worker_pods(&cluster.client, ns).await
}

/// Submits `count` unkeyed jobs that run 15 s each; their ids.
async fn start_medium_jobs(http: &reqwest::Client, api: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let body = json!({"data": {"medium": n}});
        let answer = post_json(http, &format!("{api}/api/v1/work"), &body)
            .await
            .expect("post");
        ids.push(answer["callback"].as_str().unwrap().to_owned());
    }
    ids
}

/// Waits until the work's record shows `status`; the record.
async fn wait_for_status(http: &reqwest::Client, api: &str, id: &str, status: &str) -> Value {
    let url = format!("{api}/api/v1/work/{id}");
    wait_until("the job's status", WAIT, || async {
        get_json(http, &url)
            .await
            .is_ok_and(|r| r["status"] == status)
    })
    .await
    .expect(status);
    get_json(http, &url).await.expect("get")
}

/// Worker pod -> partitions, from a view.
fn owners(view: &Value) -> BTreeMap<String, Vec<u32>> {
    view["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter(|w| w["answered"] == true)
        .map(|w| {
            let partitions = w["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| u32::try_from(p.as_u64().unwrap()).unwrap())
                .collect();
            (w["pod"].as_str().unwrap().to_owned(), partitions)
        })
        .collect()
}

/// The view's workers are exactly `pods`, every partition has exactly one owner.
fn settled_on(view: &Value, pods: &BTreeSet<String>) -> bool {
    let owners = owners(view);
    let members: BTreeSet<String> = owners.keys().cloned().collect();
    let mut owned: Vec<u32> = owners.values().flatten().copied().collect();
    owned.sort_unstable();
    view["from_kubernetes"] == true
        && &members == pods
        && owned == (0..PARTITIONS).collect::<Vec<_>>()
}

async fn worker_pods(client: &kube::Client, ns: &str) -> BTreeSet<String> {
    running_pods(client, ns, "worker")
        .await
        .expect("pods")
        .into_iter()
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|pod| pod.metadata.name.unwrap())
        .collect()
}

/// Start and end (ns) printed by the job's program.
fn span_of(record: &Value) -> (u128, u128) {
    let text = record["result"].as_str().expect("text result");
    let times: Vec<u128> = text
        .split_whitespace()
        .map(|t| t.parse().expect("nanoseconds"))
        .collect();
    (times[0], times[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_work_is_serial_per_key_and_partitions_follow_the_members() {
    let cluster = LocalCluster::start().await.expect("local cluster");
    let client = cluster.client.clone();
    install_crd(&cluster.plane).await.expect("crd");
    let ns = cluster.plane.namespace("keyed").await.expect("namespace");
    let auth = cluster.nats.auth();
    let _operator =
        RunningOperator::start_with_nats_auth(&cluster.plane, &ns, "op", "op-0", auth, None)
            .await
            .expect("operator");
    // The job prints its start and end in nanoseconds, so overlaps can be checked.
    let (repository, tag) = workpool_local_cluster::image::TEST_IMAGE;
    let yaml = format!(
        r#"apiVersion: workpool.dev/v1alpha1
kind: WorkPool
metadata:
  name: keyed
spec:
  nats:
    url: {}
  resultTTL: 10m
  image: {{repository: {repository}, tag: {tag}, pullPolicy: Never}}
  api:
    replicas: 2
  worker:
    replicas: 3
    concurrency: 8
    partitions: {PARTITIONS}
    ackWait: 5s
    timeout: 60s
    handler:
      exec:
        command: [workpool-span]
"#,
        cluster.nats.url()
    );
    create_pool(&client, &ns, &yaml).await.expect("create");
    // Ready needs one api pod available; wait for both api pods and all workers.
    wait_pool(&client, &ns, "keyed", WAIT, |p| {
        let status = p.status.as_ref();
        condition(p, "Ready").is_some_and(|(s, _)| s == "True")
            && status
                .and_then(|s| s.workers.as_ref())
                .is_some_and(|w| w.ready == 3)
            && status
                .and_then(|s| s.api.as_ref())
                .is_some_and(|a| a.ready == 2)
    })
    .await
    .expect("pool Ready with 3 workers");
    let apis: Vec<String> = running_pods(&client, &ns, "api")
        .await
        .expect("api pods")
        .iter()
        .map(|p| {
            format!(
                "http://{}:8080",
                p.status.as_ref().unwrap().pod_ip.as_ref().unwrap()
            )
        })
        .collect();
    assert_eq!(apis.len(), 2);
    let http = workpool_local_cluster::http::client();

    // Membership: the three worker pods, every partition owned by exactly one of them.
    let pods = worker_pods(&client, &ns).await;
    assert_eq!(pods.len(), 3);
    wait_until("the 3 workers to share the partitions", WAIT, || async {
        settled_on(&cluster_view(&http, &apis[0]).await, &pods)
    })
    .await
    .expect("partitions settle");

    // 500 keyed jobs over 20 keys, submitted concurrently through both api pods: no two
    // jobs of one key overlap in time, and every job completes.
    let jobs: Vec<(String, usize)> = (0..500).map(|n| (format!("key-{}", n % 20), n)).collect();
    let submitted: Vec<(String, String)> = futures::stream::iter(jobs)
        .map(|(key, n)| {
            let http = http.clone();
            let api = apis[n % 2].clone();
            async move {
                let answer = post_json(
                    &http,
                    &format!("{api}/api/v1/work"),
                    &json!({"data": {"n": n}, "key": key}),
                )
                .await
                .expect("post");
                assert_eq!(answer["status"], "accepted", "{answer}");
                (key, answer["callback"].as_str().unwrap().to_owned())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let finished: Vec<(String, Value)> = futures::stream::iter(submitted)
        .map(|(key, id)| {
            let http = http.clone();
            let api = apis[0].clone();
            async move {
                let deadline = Instant::now() + WAIT;
                loop {
                    let record = get_json(&http, &format!("{api}/api/v1/work/{id}?wait=20s"))
                        .await
                        .expect("get");
                    if record["status"] == "worked" {
                        return (key, record);
                    }
                    assert_ne!(record["status"], "failed", "{record}");
                    assert!(Instant::now() < deadline, "not finished: {record}");
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(finished.len(), 500, "every keyed job completed");
    let mut by_key: BTreeMap<String, Vec<(u128, u128, String)>> = BTreeMap::new();
    for (key, record) in &finished {
        let (start, end) = span_of(record);
        by_key.entry(key.clone()).or_default().push((
            start,
            end,
            record["worker"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(by_key.len(), 20);
    // Each key's jobs all ran on the worker that owns the key's partition (which worker
    // that is depends on the pods' random names, so not every worker need get a key).
    let owner_of: BTreeMap<u32, String> = owners(&cluster_view(&http, &apis[0]).await)
        .into_iter()
        .flat_map(|(pod, partitions)| partitions.into_iter().map(move |p| (p, pod.clone())))
        .collect();
    let mut workers_used = BTreeSet::new();
    for (key, spans) in &mut by_key {
        let owner = &owner_of[&partition_of(key, PARTITIONS)];
        assert!(
            spans.iter().all(|span| &span.2 == owner),
            "{key}: ran off its partition's owner {owner}: {spans:?}"
        );
        assert_eq!(spans.len(), 25, "{key}");
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{key}: {:?} overlaps {:?}",
                pair[0],
                pair[1]
            );
        }
        workers_used.extend(spans.iter().map(|s| s.2.clone()));
    }
    assert!(
        workers_used.len() >= 2 && workers_used.is_subset(&pods),
        "keyed work spread over the workers: {workers_used:?}"
    );

    // Killing the worker that owns a key's partition moves the partition to a survivor
    // within seconds, and the key's queued jobs carry on.
    let key = "gate-7";
    let partition = partition_of(key, PARTITIONS);
    let view = cluster_view(&http, &apis[0]).await;
    let owner = owners(&view)
        .into_iter()
        .find(|(_, partitions)| partitions.contains(&partition))
        .map(|(pod, _)| pod)
        .expect("an owner");
    let mut gate_ids = Vec::new();
    for n in 0..30 {
        let answer = post_json(
            &http,
            &format!("{}/api/v1/work", apis[1]),
            &json!({"data": {"gate": n}, "key": key}),
        )
        .await
        .expect("post");
        gate_ids.push(answer["callback"].as_str().unwrap().to_owned());
    }
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(&owner, &DeleteParams::default().grace_period(0))
        .await
        .expect("kill the owner");
    let killed = Instant::now();
    wait_until("a survivor to take the partition", WAIT, || async {
        owners(&cluster_view(&http, &apis[0]).await)
            .iter()
            .any(|(pod, partitions)| *pod != owner && partitions.contains(&partition))
    })
    .await
    .expect("partition moved");
    let moved_after = killed.elapsed();
    eprintln!("partition {partition} moved off the killed {owner} after {moved_after:?}");
    assert!(
        moved_after < Duration::from_secs(15),
        "the partition took {moved_after:?} to move"
    );
    for id in &gate_ids {
        let record = get_json(&http, &format!("{}/api/v1/work/{id}?wait=60s", apis[0]))
            .await
            .expect("get");
        assert_eq!(record["status"], "worked", "{record}");
    }

    // Scale-in spares busy workers: with two 15 s jobs running, 3 -> 2 workers removes
    // an idle pod (the operator set each pod's deletion cost from its in-flight jobs
    // first), so both jobs end in their first attempt.
    // All three Ready first: Kubernetes removes a pod that is not Ready (such as the one
    // that replaced the killed owner, which pulls work before its probe passes) before
    // it looks at costs.
    wait_until("3 ready worker endpoints", WAIT, || async {
        ready_endpoints(&client, &ns, "keyed-workers")
            .await
            .expect("slices")
            == 3
    })
    .await
    .expect("3 ready workers");
    let busy_jobs = start_medium_jobs(&http, &apis[0], 2).await;
    let mut busy = BTreeSet::new();
    for id in &busy_jobs {
        let running = wait_for_status(&http, &apis[0], id, "working").await;
        busy.insert(running["worker"].as_str().unwrap().to_owned());
    }
    let two = scale_workers(&cluster, &ns, 2, "2 ready worker endpoints").await;
    assert!(
        busy.is_subset(&two),
        "busy {busy:?} should outlive the scale-in: {two:?}"
    );
    for pod in &busy {
        let pod = Api::<Pod>::namespaced(client.clone(), &ns)
            .get(pod)
            .await
            .expect("busy pod");
        let annotations = pod.metadata.annotations.unwrap_or_default();
        let cost = annotations
            .get(workpool_operator::deletion_cost::POD_DELETION_COST)
            .and_then(|cost| cost.parse::<i32>().ok());
        assert!(cost.is_some_and(|jobs| jobs >= 1), "{annotations:?}");
    }
    for id in &busy_jobs {
        let record = get_json(&http, &format!("{}/api/v1/work/{id}?wait=60s", apis[0]))
            .await
            .expect("get");
        assert_eq!(
            (record["status"].as_str(), record["attempts"].as_u64()),
            (Some("worked"), Some(1)),
            "{record}"
        );
    }

    // Scaling 2 -> 5 workers: the view follows within 5 s of the pods being ready, and
    // partitions spread evenly (nobody more than twice the mean).
    wait_until("the view to show 2 workers", WAIT, || async {
        settled_on(&cluster_view(&http, &apis[0]).await, &two)
    })
    .await
    .expect("view with 2");
    cluster
        .plane
        .kubectl(&["-n", &ns, "scale", "workpool/keyed", "--replicas=5"])
        .expect("scale");
    wait_until("5 ready worker endpoints", WAIT, || async {
        ready_endpoints(&client, &ns, "keyed-workers")
            .await
            .expect("slices")
            == 5
    })
    .await
    .expect("5 endpoints");
    let five_ready = Instant::now();
    let five = worker_pods(&client, &ns).await;
    assert_eq!(five.len(), 5);
    wait_until(
        "the view to show 5 workers",
        Duration::from_secs(5),
        || async { settled_on(&cluster_view(&http, &apis[1]).await, &five) },
    )
    .await
    .expect("the cluster view shows the new members within 5 s");
    eprintln!(
        "view followed 2 -> 5 workers {:?} after the endpoints",
        five_ready.elapsed()
    );
    let view = cluster_view(&http, &apis[1]).await;
    let mean = f64::from(PARTITIONS) / 5.0;
    for (pod, partitions) in owners(&view) {
        assert!(
            (partitions.len() as f64) <= 2.0 * mean,
            "{pod} owns {} of {PARTITIONS} partitions among 5",
            partitions.len()
        );
    }

    // The console in a real browser: after its scripts ran, it shows the five workers,
    // an owner for every partition, and the counts; the screenshot is kept in
    // artifacts/ for people to look at.
    let browser = Browser::find().expect("headless chromium");
    let url = format!("{}/console#view=cluster", apis[0]);
    let dom = browser.dom(&url, 5000).await.expect("console DOM");
    for pod in &five {
        assert!(
            dom.contains(&format!("data-pod=\"{pod}\"")),
            "{pod} missing:\n{dom}"
        );
    }
    assert_eq!(
        dom.matches("data-owner=").count(),
        PARTITIONS as usize,
        "every partition shows its owner:\n{dom}"
    );
    assert!(dom.contains("5 worker pod(s)"), "{dom}");
    let shot = workpool_local_cluster::paths::repo_root().join("artifacts/console-cluster.png");
    browser
        .screenshot(&url, 5000, &shot)
        .await
        .expect("console screenshot");

    // Cancelling running work through the other api pod: the worker running it aborts
    // the handler and the record ends cancelled.
    let answer: Value = http
        .post(format!("{}/api/v1/work", apis[0]))
        .json(&json!({"data": "long", "key": "cancel-me"}))
        .header("Idempotency-Key", "cancel-me")
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = answer["callback"].as_str().unwrap().to_owned();
    wait_until("the long job to run", WAIT, || async {
        let record = get_json(&http, &format!("{}/api/v1/work/{id}", apis[0]))
            .await
            .expect("get");
        record["status"] == "working"
    })
    .await
    .expect("working");
    let asked = Instant::now();
    let cancelled = http
        .delete(format!("{}/api/v1/work/{id}", apis[1]))
        .send()
        .await
        .expect("delete");
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.expect("json");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(
        five.contains(cancelled["worker"].as_str().unwrap()),
        "{cancelled}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "the 60 s job was aborted, not waited for"
    );
    // The worker writes `cancelled`, then acknowledges the message and leaves the
    // registry of running work: the view may show it for those few milliseconds.
    wait_until(
        "the cancelled job to run nowhere",
        Duration::from_secs(5),
        || async {
            !cluster_view(&http, &apis[0])
                .await
                .to_string()
                .contains(&id)
        },
    )
    .await
    .expect("the cancelled job runs nowhere");

    // The apiserver goes away: keyed work still runs (NATS carries it; every process
    // keeps the members it knew), and once it is back the membership watches re-list and
    // follow a scale-in.
    let outage = Instant::now();
    cluster
        .plane
        .stop_apiserver()
        .await
        .expect("apiserver stopped");
    let mut during = Vec::new();
    for n in 0..20 {
        let answer = post_json(
            &http,
            &format!("{}/api/v1/work", apis[n % 2]),
            &json!({"data": {"outage": n}, "key": format!("outage-{}", n % 4)}),
        )
        .await
        .expect("post while the apiserver is down");
        assert_eq!(answer["status"], "accepted", "{answer}");
        during.push(answer["callback"].as_str().unwrap().to_owned());
    }
    for id in &during {
        let record = get_json(&http, &format!("{}/api/v1/work/{id}?wait=30s", apis[0]))
            .await
            .expect("get");
        assert_eq!(record["status"], "worked", "{record}");
    }
    assert!(
        settled_on(&cluster_view(&http, &apis[0]).await, &five),
        "the members stay as they were while the apiserver is away"
    );
    eprintln!(
        "outage: 20 keyed jobs worked {:?} into it",
        outage.elapsed()
    );
    cluster
        .plane
        .start_apiserver()
        .await
        .expect("apiserver back");
    eprintln!("outage: apiserver back after {:?}", outage.elapsed());
    let three = scale_workers(&cluster, &ns, 3, "3 ready workers after the outage").await;
    eprintln!("outage: 3 workers {:?} after it began", outage.elapsed());
    wait_until(
        "the view to follow the scale-in after the outage",
        WAIT,
        || async { settled_on(&cluster_view(&http, &apis[1]).await, &three) },
    )
    .await
    .expect("membership watches re-listed after the apiserver came back");
    eprintln!(
        "outage: view followed {:?} after it began",
        outage.elapsed()
    );

    cluster.stop().expect("the node stops and leaves nothing");
}
