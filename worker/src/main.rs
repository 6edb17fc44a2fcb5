// mimalloc, as in the api: perf showed glibc malloc at a fifth of the *api's* CPU under load.
// The worker was switched with it and has not been profiled on its own (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use workpool_runtime::telemetry;

fn main() -> std::process::ExitCode {
    // The same binary guards exec handlers; that mode needs no runtime.
    if let Some(code) = workpool_worker::guard::run_if_asked() {
        return code;
    }
    telemetry::serve("workpool-worker", workpool_worker::run)
}
