// The allocator of every service binary (api and worker: docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: workpool_alloc::Allocator = workpool_alloc::Allocator;

use workpool_runtime::telemetry;

fn main() -> std::process::ExitCode {
    telemetry::serve("workpool-operator", workpool_operator::run)
}
