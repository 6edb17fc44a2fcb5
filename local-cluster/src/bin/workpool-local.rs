//! The local cluster behind `make up` and `make down`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use workpool_local_cluster::{node, supervisor};
use workpool_runtime::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "workpool-local",
    about = "Workpool's local cluster (make up, make down)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole local cluster (control plane, a real node, NATS, the chart, the demo
    /// pool, the way in on :8080) until SIGTERM; `make up` starts this.
    Cluster(supervisor::LocalClusterArgs),
    /// Remove what a killed local cluster or test left of its node (`make down` runs it).
    Clean,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    let result = match Cli::parse().command {
        Command::Clean => {
            for removed in node::remove_stale() {
                println!("removed: {removed}");
            }
            Ok(())
        }
        Command::Cluster(args) => supervisor::run(args, telemetry::shutdown_signal()).await,
    };
    telemetry::exit_code("workpool-local", result)
}
