//! Every component's `/metrics` (operator, api, worker) against the Prometheus naming
//! conventions, the chart's dashboard against what they expose, and the worker's JSON
//! logs with the work item's span.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::time::Duration;

use workpool_e2e::operator::{RunningOperator, pool_yaml};
use workpool_local_cluster::control_plane::ControlPlane;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::pools::{create_pool, install_crd, queue_ready, wait_pool};

const WAIT: Duration = Duration::from_secs(60);

/// Every component's `/metrics` follows the Prometheus conventions (names, types, help,
/// bounded labels), and the chart's Grafana dashboard asks only for metrics that exist.
#[tokio::test]
async fn metrics_are_well_formed_and_the_dashboard_uses_only_real_ones() {
    use std::collections::BTreeMap;
    use workpool_e2e::metrics::{Family, dashboard_queries, families, metric_names};

    let plane = ControlPlane::shared().expect("control plane");
    install_crd(plane).await.expect("crd");
    let client = plane.client().await.expect("client");
    let ns = plane.namespace("metrics").await.expect("namespace");
    let nats = NatsServer::start().await.expect("nats");
    let operator = RunningOperator::start(plane, &ns, "op", "op-0")
        .await
        .expect("operator");
    create_pool(&client, &ns, &pool_yaml("demo", &nats.url(), ""))
        .await
        .expect("create");
    wait_pool(&client, &ns, "demo", WAIT, queue_ready)
        .await
        .expect("reconciled");
    let spec = workpool_core::PoolSpec::from_json("{}").expect("spec");
    let mut pool = workpool_e2e::pool::TestPool::start(spec, 1, 0)
        .await
        .expect("pool");
    pool.add_worker_with_env(&[("RUST_LOG".into(), "info,workpool_worker=debug".into())])
        .await
        .expect("worker");
    let id = pool
        .submit(&serde_json::json!({"data": {"ms": 5}}))
        .await
        .expect("submit");
    pool.wait_status(&id, "worked", WAIT).await.expect("worked");

    // Logs are JSON off a terminal, and the work item's lines carry its span: id, pool
    // and attempt.
    let log = pool.workers[0].process.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(
        lines.iter().any(|line| line["span"]["name"] == "work"
            && line["span"]["id"] == id.as_str()
            && line["span"]["pool"] == "demo"
            && line["span"]["attempt"] == 1
            && line["message"] == "work finished"),
        "{log}"
    );
    let scrape = |url: String| async move {
        workpool_local_cluster::http::get(&url)
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    };
    let per_component = [
        ("operator", scrape(operator.metrics_url.clone()).await),
        (
            "api",
            scrape(format!("http://127.0.0.1:{}/metrics", pool.apis[0].port)).await,
        ),
        (
            "worker",
            scrape(format!("http://127.0.0.1:{}/metrics", pool.workers[0].port)).await,
        ),
    ];

    let mut all: BTreeMap<String, Family> = BTreeMap::new();
    for (component, text) in &per_component {
        let found = families(text);
        assert!(
            found.contains_key("process_resident_memory_bytes"),
            "{component} has process metrics"
        );
        for (name, family) in &found {
            assert!(
                name.starts_with("workpool_") || name.starts_with("process_"),
                "{component}: {name} lacks the workpool_ prefix"
            );
            assert!(!family.help.is_empty(), "{component}: {name} has no help");
            match family.kind.as_str() {
                "counter" => assert!(name.ends_with("_total"), "{component}: counter {name}"),
                "histogram" => assert!(name.ends_with("_seconds"), "{component}: {name} unit"),
                "gauge" => assert!(!name.ends_with("_total"), "{component}: gauge {name}"),
                other => panic!("{component}: {name} has type {other:?}"),
            }
            for label in &family.labels {
                assert!(
                    !["id", "callback", "error", "message", "worker", "pod"]
                        .contains(&label.as_str()),
                    "{component}: {name} has the unbounded label {label}"
                );
            }
        }
        all.extend(found);
    }
    let expected = [
        ("workpool_work_accepted_total", "counter"),
        ("workpool_work_started_total", "counter"),
        ("workpool_work_worked_total", "counter"),
        ("workpool_work_failed_total", "counter"),
        ("workpool_work_retried_total", "counter"),
        ("workpool_work_cancelled_total", "counter"),
        ("workpool_handler_duration_seconds", "histogram"),
        ("workpool_work_latency_seconds", "histogram"),
        ("workpool_work_in_flight", "gauge"),
        ("workpool_queue_pending", "gauge"),
        ("workpool_queue_in_flight", "gauge"),
        ("workpool_queue_dead_letters", "gauge"),
        ("workpool_operator_reconciles_total", "counter"),
        ("workpool_operator_reconcile_errors_total", "counter"),
        ("workpool_operator_reconcile_duration_seconds", "histogram"),
    ];
    for (name, kind) in expected {
        assert_eq!(
            all.get(name).map(|f| f.kind.as_str()),
            Some(kind),
            "{name} is exposed as a {kind}"
        );
    }
    assert!(
        all["workpool_work_worked_total"]
            .labels
            .contains(&"pool".to_owned())
            && all["workpool_work_worked_total"]
                .labels
                .contains(&"task".to_owned()),
        "work counters are labelled by pool and task"
    );

    // The dashboard's queries and the alert rules' expressions name only real metrics.
    let chart = workpool_local_cluster::paths::repo_root().join("charts/workpool");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart.join("dashboards/workpool.json")).expect("dashboard"),
    )
    .expect("the dashboard is valid JSON");
    let rules_file = chart.join("alerts/workpool.rules.yaml");
    let rules: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&rules_file).expect("rules"))
            .expect("the rules are valid YAML");
    for (what, document, at_least) in [("dashboard", &dashboard, 10), ("alert rules", &rules, 7)] {
        let queries = dashboard_queries(document);
        assert!(queries.len() >= at_least, "{what}: {queries:?}");
        for query in &queries {
            for name in metric_names(query) {
                let (base, histogram_part) = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).map(|base| (base, true)))
                    .filter(|(base, _)| all.get(*base).is_some_and(|f| f.kind == "histogram"))
                    .unwrap_or((name.as_str(), false));
                let family = all.get(base).unwrap_or_else(|| {
                    panic!("in the {what}: no component exposes {name}: {query}")
                });
                assert!(
                    histogram_part || family.kind != "histogram",
                    "{query}: use {name}_bucket for the histogram {name}"
                );
            }
        }
    }
    // And Prometheus' own checker accepts the rule file.
    let promtool = workpool_local_cluster::paths::tool("promtool", "promtool").expect("promtool");
    let checked = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
