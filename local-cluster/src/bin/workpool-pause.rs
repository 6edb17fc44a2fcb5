//! The process of a pod sandbox on a node's containerd (the CRI's `sandbox_image`): it
//! holds the pod's namespaces, reaps the children that end up as its own (it is PID 1 of
//! the pod's PID namespace when that is shared) and exits at SIGTERM or SIGINT.

use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn main() -> ExitCode {
    // Blocked signals stay pending even for a PID 1 without handlers (which the kernel
    // would otherwise drop), so waiting for them needs no handler at all.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(signal);
    }
    if let Err(error) = signals.thread_block() {
        eprintln!("workpool-pause: blocking signals: {error}");
        return ExitCode::FAILURE;
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap_children(),
            Ok(_) => return ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("workpool-pause: waiting for signals: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Collects every child that has exited; one SIGCHLD may stand for several.
fn reap_children() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
