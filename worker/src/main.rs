// mimalloc, as in the api (docs/BENCHMARKS.md); the runtime returns its free memory
// after a burst.
#[global_allocator]
static ALLOCATOR: workpool_alloc::Allocator = workpool_alloc::Allocator;

use workpool_runtime::telemetry;

fn main() -> std::process::ExitCode {
    // The same binary guards exec handlers; that mode needs no runtime.
    if let Some(code) = workpool_worker::guard::run_if_asked() {
        return code;
    }
    telemetry::serve("workpool-worker", workpool_worker::run)
}
