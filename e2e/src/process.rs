//! A child process owned by a test: output to a log file, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{HarnessError, Result};

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
            .map_err(HarnessError::io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(HarnessError::io("cloning a log handle"))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(HarnessError::io(format!("starting {}", program.display())))?;
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
                .map_err(HarnessError::io("waiting for a child"))?
            {
                self.exit = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!("{} to exit", self.name)));
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
