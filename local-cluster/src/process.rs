//! A child process owned by a test: output to a log file, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result};

/// A shell guard around a program: it stops the program (SIGTERM, then SIGKILL after the
/// grace period) when the process `parent` is gone or the guard itself gets SIGTERM, then
/// removes `dir` if given, and exits with the program's status. Processes that must not
/// outlive the test or agent that started them, however it ends, run under it.
const GUARD: &str = r#"parent=$1; dir=$2; grace=$3; shift 3
"$@" & child=$!
stop() {
  kill "$child" 2>/dev/null
  i=0; while [ "$i" -lt $((grace * 2)) ] && kill -0 "$child" 2>/dev/null; do sleep 0.5; i=$((i + 1)); done
  kill -9 "$child" 2>/dev/null; wait "$child"; status=$?
  [ -n "$dir" ] && rm -rf "$dir"; exit $status
}
trap stop TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5 & wait $!; done
stop"#;

/// Arguments for `sh` that run the following program under the guard, tied to this
/// process.
pub fn guard_args(name: &str, cleanup: Option<&Path>, grace: Duration) -> Vec<String> {
    vec![
        "-c".into(),
        GUARD.into(),
        format!("guard-{name}"),
        std::process::id().to_string(),
        cleanup
            .map(|dir| dir.display().to_string())
            .unwrap_or_default(),
        grace.as_secs().max(1).to_string(),
    ]
}

#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `program` with `args` and `env`, its stdout and stderr going to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Result<Self> {
        let out = std::fs::File::create(&log)
            .map_err(Error::io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(Error::io("cloning a log handle"))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(Error::io(format!("starting {}", program.display())))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Asks the process to stop (SIGTERM), as Kubernetes does.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Freezes the process (SIGSTOP), as a stalled VM or a stuck runtime would; its own
    /// children keep running.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// Kills the process at once: no cleanup, no goodbye.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait().map(|status| self.exit = Some(status));
    }

    /// Waits for the process to exit, polling so async tests keep running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit {
                return Ok(status);
            }
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(Error::io("waiting for a child"))?
            {
                self.exit = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!("{} to exit", self.name)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far, for assertion messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
