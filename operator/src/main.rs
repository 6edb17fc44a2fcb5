use clap::Parser;
use workpool_runtime::telemetry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::init_logging();
    let args = workpool_operator::Args::parse();
    let result = workpool_operator::run(args, telemetry::shutdown_signal()).await;
    telemetry::exit_code("workpool-operator", result)
}
