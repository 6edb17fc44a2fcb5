//! `make bench`: end-to-end jobs per second against the raw JetStream publish rate, in
//! one run on one server.

use std::process::ExitCode;

use clap::Parser;
use workpool_bench::BenchArgs;
use workpool_runtime::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "workpool-bench",
    about = "Workpool's benchmark suite (make bench)"
)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    let result = workpool_bench::run(Cli::parse().args).await;
    telemetry::exit_code("workpool-bench", result)
}
