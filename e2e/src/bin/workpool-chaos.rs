//! `make chaos`: a full seeded run of the fault-injecting checker; prints the report and
//! the faults, keeps them in `artifacts/`, and fails when any invariant broke.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use workpool_e2e::chaos::run::{Config, run};

#[derive(Parser)]
struct Args {
    /// The seed of the workload and of the fault schedule (replay a run with it).
    #[arg(long, env = "CHAOS_SEED", default_value_t = 1)]
    seed: u64,
    #[arg(long, env = "CHAOS_JOBS", default_value_t = 20_000)]
    jobs: usize,
    #[arg(long, default_value_t = 100)]
    per_second: u32,
    #[arg(long, default_value_t = 24)]
    keys: usize,
    /// Mean seconds between faults.
    #[arg(long, default_value_t = 3.0)]
    fault_every: f64,
    /// Run on a 3-node NATS cluster (`nats.replicas: 3`) and kill the work stream's leader
    /// among the faults.
    #[arg(long, env = "CHAOS_NATS_CLUSTER")]
    nats_cluster: bool,
    /// Run on api and worker processes alone, without the local cluster (no pod, apiserver
    /// or operator faults).
    #[arg(long, env = "CHAOS_PROCESSES")]
    processes: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = Config {
        seed: args.seed,
        jobs: args.jobs,
        keys: args.keys,
        per_second: args.per_second,
        fault_every: Duration::from_secs_f64(args.fault_every),
        after_expiry_probes: 20,
        ..Config::short(args.seed)
    };
    let config = if args.nats_cluster {
        config.on_nats_cluster()
    } else {
        config
    };
    let config = if args.processes {
        config.on_processes()
    } else {
        config
    };
    let (report, history) = match run(&config).await {
        Ok(outcome) => outcome,
        Err(err) => {
            eprintln!("chaos run could not complete: {err}");
            return ExitCode::FAILURE;
        }
    };
    let text = workpool_e2e::chaos::run::save(&config, &report, &history);
    println!("{text}");
    if report.violations() == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} invariant violations", report.violations());
        ExitCode::FAILURE
    }
}
