use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    workpool_runtime::telemetry::init_logging();
    let args = workpool_operator::Args::parse();
    match workpool_operator::run(args, workpool_runtime::telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "workpool-operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
