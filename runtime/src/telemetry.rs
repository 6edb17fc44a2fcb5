//! Logging setup shared by the binaries: JSON lines when stderr is not a terminal,
//! human-readable output on one; the level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

pub fn init_logging() {
    init_logging_or("info");
}

/// Like [`init_logging`], with `default` as the filter when `RUST_LOG` is unset (tests
/// running components in-process keep their output quiet this way).
pub fn init_logging_or(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests starting several components in one process) is harmless.
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}

/// The exit code of a binary whose run ended with `result`, logging the error that
/// stopped it.
pub fn exit_code<E: std::fmt::Display>(binary: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "{binary} stopped");
            ExitCode::FAILURE
        }
    }
}

/// The `main` of a service binary: logging, its flags, and `run` until SIGTERM or Ctrl-C
/// on a multi-threaded runtime; the exit code says how it ended.
pub fn serve<A, F, E>(binary: &str, run: impl FnOnce(A, ShutdownSignal) -> F) -> ExitCode
where
    A: clap::Parser,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    init_logging();
    let args = A::parse();
    // Started outside the async runtime (its HTTP client blocks on a thread of its
    // own); dropped after it, which sends the last spans.
    let _export = match crate::otel::start_export(binary) {
        Ok(export) => export,
        Err(err) => {
            tracing::warn!(error = %err, "traces are not exported");
            None
        }
    };
    let result = match workpool_alloc::runtime() {
        Ok(runtime) => runtime.block_on(run(args, Box::pin(shutdown_signal()))),
        Err(err) => {
            tracing::error!(error = %err, "{binary}: no async runtime");
            return ExitCode::FAILURE;
        }
    };
    exit_code(binary, result)
}

/// The future [`serve`] hands to `run`: it completes on SIGTERM or Ctrl-C.
pub type ShutdownSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
