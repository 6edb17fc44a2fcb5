//! `make bench`: end-to-end jobs per second against the raw JetStream publish rate, in
//! one run on one server.

use std::process::ExitCode;

use clap::Parser;
use workpool_bench::BenchArgs;

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
    workpool_runtime::telemetry::init_logging();
    match workpool_bench::run(Cli::parse().args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("workpool-bench: {err}");
            ExitCode::FAILURE
        }
    }
}
