// mimalloc: glibc malloc spent a fifth of the api's CPU under load (perf). The runtime
// (workpool_runtime::telemetry::serve) returns its free memory after a burst.
#[global_allocator]
static ALLOCATOR: workpool_alloc::Allocator = workpool_alloc::Allocator;

use workpool_runtime::telemetry;

fn main() -> std::process::ExitCode {
    telemetry::serve("workpool-api", workpool_api::run)
}
