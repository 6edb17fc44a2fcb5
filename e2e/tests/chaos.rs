//! The short seeded run of the fault-injecting checker on the local cluster's pods
//! (`make chaos` runs the long one). The run on a 3-node NATS cluster is in
//! `chaos_nats_cluster.rs`: a test binary of its own, so the two never share the two
//! cores (the node's start then took over helm's 3 minutes).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use workpool_e2e::chaos::faults::PODS;
use workpool_e2e::chaos::run::{Config, run, save, seed_from_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_run_under_faults_keeps_every_invariant() {
    let seed = seed_from_env(7);
    // Long enough for one round of every fault kind (about 3 s each).
    let config = Config {
        jobs: 1800,
        ..Config::short(seed)
    };
    let (report, history) = run(&config).await.expect("chaos run");
    save(&config, &report, &history);
    println!("seed {seed}: {report:#?}\nfaults: {:#?}", history.faults);
    assert!(report.accepted > 0 && report.executions > 0, "{report:?}");
    assert!(
        history.faults.len() >= PODS.len(),
        "not every kind of fault was injected: {:?}",
        history.faults
    );
    assert!(
        report.cancels_confirmed + report.cancels_requested > 0,
        "{report:?}"
    );
    assert!(report.after_expiry > 0, "{report:?}");
    assert_eq!(report.violations(), 0, "seed {seed}: {report:#?}");
}
