// glibc malloc spent a fifth of the api's CPU under load (perf); mimalloc does not fragment that way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use workpool_runtime::telemetry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::init_logging();
    let args = workpool_api::Args::parse();
    let result = workpool_api::run(args, telemetry::shutdown_signal()).await;
    telemetry::exit_code("workpool-api", result)
}
