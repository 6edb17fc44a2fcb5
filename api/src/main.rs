// glibc malloc spent a fifth of the api's CPU under load (perf); mimalloc does not fragment that way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use workpool_runtime::telemetry;

fn main() -> std::process::ExitCode {
    telemetry::serve("workpool-api", workpool_api::run)
}
