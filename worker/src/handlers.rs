//! The three handler kinds: `builtin` (sleep, echo, sha256), `exec` (a program reading the
//! work as JSON on stdin) and `http` (POST to a sidecar).

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use workpool_core::message::WorkMessage;
use workpool_core::spec::{BuiltinHandler, HandlerSpec};

/// How a failed attempt should be treated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth another attempt (after the backoff).
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way again: recorded `failed` at once.
    #[error("{0}")]
    Permanent(String),
}

/// What `exec` and `http` handlers receive.
#[derive(Debug, Serialize)]
pub struct HandlerInput<'a> {
    #[serde(flatten)]
    pub work: &'a WorkMessage,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// Default pause of the `sleep` builtin, as in the original demo ("pause a few seconds").
pub const DEFAULT_SLEEP: Duration = Duration::from_secs(3);

/// The most of a failing program's output or response body kept in the error.
const ERROR_TAIL_BYTES: usize = 512;

#[derive(Debug, Clone)]
pub enum Handler {
    Builtin(BuiltinHandler),
    Exec(Vec<String>),
    Http {
        url: String,
        client: reqwest::Client,
    },
}

impl Handler {
    pub fn new(spec: &HandlerSpec) -> Self {
        match spec {
            HandlerSpec::Builtin(builtin) => Handler::Builtin(*builtin),
            HandlerSpec::Exec { command } => Handler::Exec(command.clone()),
            HandlerSpec::Http { url } => Handler::Http {
                url: url.clone(),
                client: reqwest::Client::new(),
            },
        }
    }

    /// Runs one attempt. The caller bounds it with the pool's timeout; dropping the future
    /// kills an `exec` program and its whole process group.
    pub async fn run(
        &self,
        work: &WorkMessage,
        attempt: u32,
    ) -> Result<serde_json::Value, HandlerError> {
        let input = HandlerInput { work, attempt };
        match self {
            Handler::Builtin(builtin) => Ok(run_builtin(*builtin, &work.data).await),
            Handler::Exec(command) => run_exec(command, &input).await,
            Handler::Http { url, client } => run_http(client, url, &input).await,
        }
    }
}

async fn run_builtin(builtin: BuiltinHandler, data: &serde_json::Value) -> serde_json::Value {
    match builtin {
        BuiltinHandler::Sleep => {
            let pause = data
                .get("ms")
                .and_then(serde_json::Value::as_u64)
                .map_or(DEFAULT_SLEEP, Duration::from_millis);
            tokio::time::sleep(pause).await;
            serde_json::json!({ "slept_ms": pause.as_millis() as u64 })
        }
        BuiltinHandler::Echo => data.clone(),
        BuiltinHandler::Sha256 => {
            let bytes = match data {
                serde_json::Value::String(text) => text.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            serde_json::Value::String(hex::encode(Sha256::digest(&bytes)))
        }
    }
}

/// Keeps the end of `text`, where programs usually say what went wrong.
fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    let start = text.len().saturating_sub(ERROR_TAIL_BYTES);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// A handler's output as a result: JSON if it parses, else the trimmed text.
fn output_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(bytes).trim().to_owned())
    })
}

/// Kills the program's process group when the attempt ends early (timeout, shutdown), so
/// no grandchild outlives it.
struct GroupKiller(Option<nix::unistd::Pid>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn run_exec(
    command: &[String],
    input: &HandlerInput<'_>,
) -> Result<serde_json::Value, HandlerError> {
    let Some((program, args)) = command.split_first() else {
        return Err(HandlerError::Permanent(
            "exec handler has an empty command".into(),
        ));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("WORKPOOL_WORK_ID", input.work.id.as_str())
        .env("WORKPOOL_TASK", &input.work.task)
        .env("WORKPOOL_ATTEMPT", input.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| HandlerError::Permanent(format!("cannot start {program}: {err}")))?;
    let mut killer = GroupKiller(
        child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(nix::unistd::Pid::from_raw),
    );
    if let Some(mut stdin) = child.stdin.take() {
        let payload = serde_json::to_vec(input).unwrap_or_default();
        // A program that does not read its input is fine: ignore a broken pipe.
        let _ = stdin.write_all(&payload).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|err| HandlerError::Retryable(format!("waiting for {program}: {err}")))?;
    killer.0 = None;
    if output.status.success() {
        Ok(output_value(&output.stdout))
    } else {
        Err(HandlerError::Retryable(format!(
            "{program} exited with {}: {}",
            output.status,
            tail(&output.stderr)
        )))
    }
}

async fn run_http(
    client: &reqwest::Client,
    url: &str,
    input: &HandlerInput<'_>,
) -> Result<serde_json::Value, HandlerError> {
    let response = client
        .post(url)
        .json(input)
        .send()
        .await
        .map_err(|err| HandlerError::Retryable(format!("POST {url}: {err}")))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|err| HandlerError::Retryable(format!("reading the answer of {url}: {err}")))?;
    if status.is_success() {
        Ok(if body.is_empty() {
            serde_json::Value::Null
        } else {
            output_value(&body)
        })
    } else if status.is_client_error() {
        Err(HandlerError::Permanent(format!(
            "{url} answered {status}: {}",
            tail(&body)
        )))
    } else {
        Err(HandlerError::Retryable(format!(
            "{url} answered {status}: {}",
            tail(&body)
        )))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn work(data: serde_json::Value) -> WorkMessage {
        WorkMessage {
            id: workpool_core::WorkId::from_idempotency_key("t"),
            task: "default".into(),
            key: None,
            data,
            accepted_by: "api-0".into(),
            created_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn builtins_echo_hash_and_sleep() {
        let echo = Handler::new(&HandlerSpec::Builtin(BuiltinHandler::Echo));
        assert_eq!(
            echo.run(&work(json!({"a": [1]})), 1).await,
            Ok(json!({"a": [1]}))
        );
        let sha = Handler::new(&HandlerSpec::Builtin(BuiltinHandler::Sha256));
        assert_eq!(
            sha.run(&work(json!("foo")), 1).await,
            Ok(json!(
                "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
            ))
        );
        let sleep = Handler::new(&HandlerSpec::Builtin(BuiltinHandler::Sleep));
        assert_eq!(
            sleep.run(&work(json!({"ms": 5})), 1).await,
            Ok(json!({"slept_ms": 5}))
        );
    }

    #[tokio::test]
    async fn exec_reads_stdin_and_reports_failures() {
        let cat = Handler::new(&HandlerSpec::Exec {
            command: vec!["cat".into()],
        });
        let result = cat
            .run(&work(json!({"x": 1})), 2)
            .await
            .expect("cat succeeds");
        assert_eq!(result["data"], json!({"x": 1}));
        assert_eq!(result["attempt"], json!(2));
        let failing = Handler::new(&HandlerSpec::Exec {
            command: vec!["sh".into(), "-c".into(), "echo broken >&2; exit 3".into()],
        });
        match failing.run(&work(json!(null)), 1).await {
            Err(HandlerError::Retryable(message)) => {
                assert!(message.contains("broken"), "{message}")
            }
            other => panic!("expected a retryable failure, got {other:?}"),
        }
        let missing = Handler::new(&HandlerSpec::Exec {
            command: vec!["/nonexistent/program".into()],
        });
        assert!(matches!(
            missing.run(&work(json!(null)), 1).await,
            Err(HandlerError::Permanent(_))
        ));
    }

    #[tokio::test]
    async fn exec_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let slow = Handler::new(&HandlerSpec::Exec {
            command: vec!["sh".into(), "-c".into(), script],
        });
        let outcome =
            tokio::time::timeout(Duration::from_millis(500), slow.run(&work(json!(null)), 1)).await;
        assert!(outcome.is_err(), "the attempt should time out");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid written")
            .trim()
            .parse()
            .expect("pid");
        // Reap-free check: signal 0 fails once the grandchild is gone.
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z "))
        });
        assert!(gone, "sleep {pid} survived the timeout");
    }
}
