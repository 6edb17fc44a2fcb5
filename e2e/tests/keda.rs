//! The chart's KEDA recipe, checked statically against the code's names: the rendered
//! ScaledObject (charts/rendered/workpool-with-keda.yaml, kept current by `make drift`)
//! scales a WorkPool through its scale subresource from the backlog of the pool's own
//! stream and unkeyed consumer, read where the bundled NATS serves its monitoring port.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use kube::Resource;
use serde_json::Value;
use workpool_core::PoolNames;
use workpool_core::crd::WorkPool;
use workpool_core::priority::Priority;

fn rendered_documents() -> Vec<Value> {
    let path =
        workpool_local_cluster::paths::repo_root().join("charts/rendered/workpool-with-keda.yaml");
    let text = std::fs::read_to_string(path).expect("the rendered chart");
    text.split("\n---")
        .filter_map(|document| serde_saphyr::from_str::<Value>(document).ok())
        .filter(|document| document.is_object())
        .collect()
}

#[test]
fn the_keda_recipe_scales_a_workpool_from_its_own_consumer() {
    let documents = rendered_documents();
    let scaled = documents
        .iter()
        .find(|d| d["kind"] == "ScaledObject")
        .expect("a ScaledObject");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(target["apiVersion"], WorkPool::api_version(&()).as_ref());
    assert_eq!(target["kind"], WorkPool::kind(&()).as_ref());
    assert_eq!(target["name"], "demo");
    assert_eq!(scaled["spec"]["minReplicaCount"], 0, "scales to zero");
    let triggers = scaled["spec"]["triggers"].as_array().unwrap();
    let names = PoolNames::new("default", "demo").unwrap();
    for trigger in triggers {
        assert_eq!(trigger["type"], "nats-jetstream");
        assert_eq!(trigger["metadata"]["stream"], names.stream().as_str());
    }
    // One trigger per unkeyed consumer: backlog of any priority wakes the pool.
    let consumers: Vec<&str> = triggers
        .iter()
        .map(|t| t["metadata"]["consumer"].as_str().unwrap())
        .collect();
    let wanted: Vec<&str> = Priority::ALL
        .into_iter()
        .map(PoolNames::unkeyed_consumer)
        .collect();
    assert_eq!(consumers, wanted);
    let trigger = &triggers[0];
    // The endpoint's port is one the bundled NATS Service serves.
    let endpoint = trigger["metadata"]["natsServerMonitoringEndpoint"]
        .as_str()
        .unwrap();
    let port: u64 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let service = documents
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "nats")
        .expect("the bundled NATS Service");
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert!(ports.iter().any(|p| p["port"] == port), "{ports:?}");
}
