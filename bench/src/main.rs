//! `make bench`: end-to-end jobs per second against the raw JetStream publish rate, in
//! one run on one server.

use clap::Parser;
use workpool_bench::BenchArgs;
use workpool_runtime::telemetry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::init_logging();
    let result = workpool_bench::run(BenchArgs::parse()).await;
    telemetry::exit_code("workpool-bench", result)
}
