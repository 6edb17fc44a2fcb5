//! The short seeded run of the fault-injecting checker on a 3-node NATS cluster, on
//! processes (`make chaos` with CHAOS_NATS_CLUSTER=true runs it on the pods).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use workpool_e2e::chaos::run::{Config, run, save, seed_from_env};

/// The same checker on a 3-node NATS cluster with `nats.replicas: 3`, the work stream's
/// leader killed (and restarted) at the start of every round of faults: an acknowledged
/// publish was stored by a quorum, so nothing a `202` answered may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_run_on_a_replicated_stream_survives_leader_kills() {
    let seed = seed_from_env(7);
    // Twice the single-node run's jobs: a leader kill takes 10-20 s (an election, then the
    // restarted node catching up), and the run should still see several other faults.
    let config = Config {
        jobs: 1600,
        ..Config::short(seed)
    }
    .on_nats_cluster()
    // On processes: the pods' run (chaos.rs) has the pod faults, and `make chaos` with
    // CHAOS_NATS_CLUSTER=true runs both together.
    .on_processes();
    let (report, history) = run(&config).await.expect("chaos run");
    save(&config, &report, &history);
    println!(
        "seed {seed} (cluster): {report:#?}\nfaults: {:#?}",
        history.faults
    );
    assert!(report.accepted > 0 && report.executions > 0, "{report:?}");
    assert!(
        history
            .faults
            .iter()
            .any(|fault| fault.contains("(leader of")),
        "no stream leader was killed: {:?}",
        history.faults
    );
    assert_eq!(report.violations(), 0, "seed {seed}: {report:#?}");
}
