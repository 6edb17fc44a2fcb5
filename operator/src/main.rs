use workpool_runtime::telemetry;

fn main() -> std::process::ExitCode {
    telemetry::serve("workpool-operator", workpool_operator::run)
}
