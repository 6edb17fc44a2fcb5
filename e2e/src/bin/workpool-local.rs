//! Local tooling behind `make up` and `make bench`: provision a pool's NATS objects, run
//! the small load balancer, and benchmark the queue path.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use workpool_runtime::config::PoolArgs;

#[derive(Debug, Parser)]
#[command(
    name = "workpool-local",
    about = "Workpool local tooling (make up, make bench)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update a pool's stream, dead-letter stream, bucket and consumers.
    Provision {
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Spread TCP connections round-robin over backends (the sketch's HAProxy).
    Lb {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long = "backend", required = true)]
        backends: Vec<SocketAddr>,
    },
    /// Run a whole local cluster (control plane, a real node, NATS, the chart, the demo
    /// pool, the way in on :8080) until SIGTERM; `make up` starts this.
    Cluster(workpool_e2e::local_cluster::LocalClusterArgs),
    /// Remove what a killed local cluster or test left of its node (`make down` runs it).
    Clean,
    /// End-to-end jobs per second against raw JetStream publish rate, in one run.
    Bench(workpool_e2e::bench::BenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    workpool_runtime::telemetry::init_logging();
    let result = match Cli::parse().command {
        Command::Provision { pool } => provision(pool).await,
        Command::Lb { listen, backends } => lb(listen, backends).await,
        Command::Bench(args) => workpool_e2e::bench::run(args).await,
        Command::Clean => {
            for removed in workpool_e2e::kubelet::remove_stale() {
                println!("removed: {removed}");
            }
            Ok(())
        }
        Command::Cluster(args) => {
            workpool_e2e::local_cluster::run(args, workpool_runtime::telemetry::shutdown_signal())
                .await
                .map_err(|err| err.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("workpool-local: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn provision(pool: PoolArgs) -> Result<(), String> {
    let config = pool.load().map_err(|err| err.to_string())?;
    let client = async_nats::connect(&config.spec.nats.url)
        .await
        .map_err(|err| format!("connecting to {}: {err}", config.spec.nats.url))?;
    let js = async_nats::jetstream::new(client);
    workpool_runtime::provision::provision(&js, &config.names, &config.spec)
        .await
        .map_err(|err| err.to_string())?;
    println!(
        "provisioned {} (bucket {}) on {}",
        config.names.stream(),
        config.names.bucket(),
        config.spec.nats.url
    );
    Ok(())
}

async fn lb(listen: SocketAddr, backends: Vec<SocketAddr>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| format!("binding {listen}: {err}"))?;
    tracing::info!(%listen, ?backends, "load balancer serving");
    let balancer = workpool_e2e::lb::Balancer::new(backends);
    tokio::select! {
        result = balancer.serve(listener) => result.map_err(|err| err.to_string()),
        () = workpool_runtime::telemetry::shutdown_signal() => Ok(()),
    }
}
