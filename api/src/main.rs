// glibc malloc spent a fifth of the api's CPU under load (perf); mimalloc does not fragment that way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    workpool_runtime::telemetry::init_logging();
    let args = workpool_api::Args::parse();
    match workpool_api::run(args, workpool_runtime::telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "workpool-api stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
