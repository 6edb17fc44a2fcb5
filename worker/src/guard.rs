//! The exec guard: a small process between the worker and an `exec` handler program that
//! stops the program when the worker can no longer stop it itself.
//!
//! The worker's fence (module `hold`) stops an attempt that lost its hold, but a worker
//! that is frozen (SIGSTOP, a stuck runtime) or killed (SIGKILL, OOM) runs no code, and its
//! handler program would run on while the server hands the work to another worker. The
//! guard is the worker binary itself, started as `workpool-worker --exec-guard <fence ms>
//! <worker pid> -- <program> <args>`. It runs the program and kills it (and exits) when:
//! - the worker is gone (the guard was reparented), or
//! - the worker has been stopped for longer than the fence.
//!
//! It passes the program's exit status on. It has no runtime and reads only `/proc`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use nix::unistd::{Pid, getppid};

/// The flag that makes the worker binary a guard.
pub const FLAG: &str = "--exec-guard";

/// The guard's exit code when the program cannot start (the shell's "not found").
pub const CANNOT_START: u8 = 127;

/// How often the guard looks at the worker and the program.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// How the worker starts guarded programs.
#[derive(Debug, Clone)]
pub struct ExecGuard {
    /// The worker binary.
    pub program: PathBuf,
    /// How long the worker may be stopped before the program is killed.
    pub fence: Duration,
}

impl ExecGuard {
    /// The command line that runs `program args` under the guard.
    pub fn command(&self, program: &str, args: &[String]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg(FLAG)
            .arg(self.fence.as_millis().to_string())
            // Passed, not read by the guard: the worker may die before the guard looks.
            .arg(std::process::id().to_string())
            .arg("--")
            .arg(program)
            .args(args);
        command
    }
}

/// Runs the guard if the process was started as one (`Some` exit code), else `None`.
pub fn run_if_asked() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(FLAG) {
        return None;
    }
    Some(match args.as_slice() {
        [_, _, fence, worker, dash, program, rest @ ..] if dash == "--" => {
            match (fence.parse(), worker.parse()) {
                (Ok(fence), Ok(worker)) => guard(
                    Duration::from_millis(fence),
                    Pid::from_raw(worker),
                    program,
                    rest,
                ),
                _ => usage(),
            }
        }
        _ => usage(),
    })
}

fn usage() -> ExitCode {
    let _ = writeln!(
        std::io::stderr(),
        "usage: workpool-worker {FLAG} <fence ms> <worker pid> -- <program> [args...]"
    );
    ExitCode::from(2)
}

fn guard(fence: Duration, worker: Pid, program: &str, args: &[String]) -> ExitCode {
    let mut child = match Command::new(program).args(args).spawn() {
        Ok(child) => child,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "cannot start {program}: {err}");
            return ExitCode::from(CANNOT_START);
        }
    };
    let mut stopped_since: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return exit_code(status),
            Ok(None) => {}
            Err(err) => {
                let _ = child.kill();
                let _ = writeln!(std::io::stderr(), "cannot watch {program}: {err}");
                return ExitCode::FAILURE;
            }
        }
        let worker_gone = getppid() != worker;
        stopped_since = if is_stopped(worker) {
            stopped_since.or(Some(Instant::now()))
        } else {
            None
        };
        let stopped_too_long = stopped_since.is_some_and(|since| since.elapsed() > fence);
        if worker_gone || stopped_too_long {
            let _ = child.kill();
            let _ = child.wait();
            // Stderr may be a pipe to the dead worker: a write must not fail the guard.
            let why = if worker_gone { "is gone" } else { "is stopped" };
            let _ = writeln!(
                std::io::stderr(),
                "the worker {why}; stopped {program} before its work is handed on"
            );
            return ExitCode::from(137);
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

/// Whether `pid` is stopped (state `T` or `t` in `/proc/<pid>/stat`).
fn is_stopped(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(255)),
        _ => ExitCode::FAILURE,
    }
}
