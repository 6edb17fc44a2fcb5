//! The three handler kinds: `builtin` (sleep, echo, sha256), `exec` (a program reading the
//! work as JSON on stdin) and `http` (POST to a sidecar).
//!
//! A result may be at most the pool's `queue.maxPayloadBytes` as stored JSON: a larger one
//! could not be written to the results bucket. Output is read with that limit, so a job
//! that prints without end costs the worker no more than the limit, and a result over it
//! fails for good at once instead of being retried.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use workpool_core::PoolSpec;
use workpool_core::message::{TraceContext, WorkMessage};
use workpool_core::spec::{BuiltinHandler, HandlerSpec};

use workpool_core::progress::Progress;

use crate::guard::ExecGuard;
use crate::http_client::{ClientError, http_client};
use crate::progress::{Reporter, read_stderr};
use crate::progress_endpoint::{ProgressEndpoint, Registration};
use workpool_core::progress::PROGRESS_URL_HEADER;

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
    /// The attempt's trace context: `exec` programs get it in `TRACEPARENT` and
    /// `TRACESTATE`, `http` handlers in the `traceparent` and `tracestate` headers.
    #[serde(skip)]
    pub trace: Option<&'a TraceContext>,
}

/// Default pause of the `sleep` builtin, as in the original demo ("pause a few seconds").
pub const DEFAULT_SLEEP: Duration = Duration::from_secs(3);

/// The most of a failing program's output or response body kept in the error.
const ERROR_TAIL_BYTES: usize = 512;

/// How much of the end of a program's stderr (or of an error answer's body) is kept while
/// it is read: enough for the error's tail even after trimming, and bounded however much
/// the program writes.
const DIAGNOSTIC_TAIL_BYTES: usize = 4096;

/// Runs the work of one pool.
#[derive(Debug, Clone)]
pub struct Handler {
    kind: Kind,
    /// `queue.maxPayloadBytes`: the largest result, as stored JSON.
    max_result_bytes: usize,
    /// Runs `exec` programs under the guard (the worker binary does; tests may not).
    guard: Option<ExecGuard>,
    /// Where `http` handlers report progress (none: their requests name no URL).
    progress: Option<ProgressEndpoint>,
}

#[derive(Debug, Clone)]
enum Kind {
    Builtin(BuiltinHandler),
    Exec(Vec<String>),
    Http {
        url: String,
        client: reqwest::Client,
    },
}

impl Handler {
    /// The pool's `worker.handler`, with results limited to its `queue.maxPayloadBytes`.
    pub fn new(spec: &PoolSpec) -> Result<Self, ClientError> {
        let kind = match &spec.worker.handler {
            HandlerSpec::Builtin(builtin) => Kind::Builtin(*builtin),
            HandlerSpec::Exec { command } => Kind::Exec(command.clone()),
            HandlerSpec::Http { url } => Kind::Http {
                url: url.clone(),
                client: http_client()?,
            },
        };
        Ok(Self {
            kind,
            max_result_bytes: spec.queue.max_payload_bytes,
            guard: None,
            progress: None,
        })
    }

    /// Whether the handler is `http`, whose requests may name a progress URL.
    pub fn is_http(&self) -> bool {
        matches!(self.kind, Kind::Http { .. })
    }

    /// Names `endpoint` in each `http` request as where to report progress.
    pub fn with_progress_endpoint(mut self, endpoint: ProgressEndpoint) -> Self {
        self.progress = Some(endpoint);
        self
    }

    /// Runs `exec` programs under `guard`, which stops them if the worker is stopped or
    /// killed (module `guard`).
    pub fn with_exec_guard(mut self, guard: ExecGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Runs one attempt. The caller bounds it with the pool's timeout; dropping the future
    /// kills an `exec` program and its whole process group.
    /// The handler reports progress to `progress` as it goes (docs/worker.md, "Progress").
    pub async fn run(
        &self,
        work: &WorkMessage,
        attempt: u32,
        progress: &Reporter,
    ) -> Result<serde_json::Value, HandlerError> {
        self.run_traced(work, attempt, None, progress).await
    }

    /// [`Self::run`] within the trace `trace`, which the handler gets.
    pub async fn run_traced(
        &self,
        work: &WorkMessage,
        attempt: u32,
        trace: Option<&TraceContext>,
        progress: &Reporter,
    ) -> Result<serde_json::Value, HandlerError> {
        let input = HandlerInput {
            work,
            attempt,
            trace,
        };
        let limit = self.max_result_bytes;
        let result = match &self.kind {
            Kind::Builtin(builtin) => run_builtin(*builtin, &work.data, progress).await,
            Kind::Exec(command) => {
                let guard = self.guard.as_ref();
                run_exec(command, guard, &input, limit, progress).await?
            }
            Kind::Http { url, client } => {
                // Registered for this attempt only: reports after it ends are refused.
                let registration = self.progress.as_ref().map(|e| e.register(progress.clone()));
                let progress_url = registration.as_ref().map(Registration::url);
                run_http(client, url, &input, limit, progress_url).await?
            }
        };
        // The stored form is what must fit: text with control characters or invalid
        // UTF-8 grows when it becomes a JSON string.
        if fits(&result, limit) {
            Ok(result)
        } else {
            Err(too_large(limit))
        }
    }
}

fn too_large(limit: usize) -> HandlerError {
    HandlerError::Permanent(format!(
        "result too large: more than {limit} bytes (queue.maxPayloadBytes)"
    ))
}

/// Whether `value` as JSON is at most `limit` bytes, found without building the text.
fn fits(value: &serde_json::Value, limit: usize) -> bool {
    struct Budget(usize);
    impl io::Write for Budget {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(bytes.len())
                .ok_or_else(|| io::Error::other("over the limit"))?;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(Budget(limit), value).is_ok()
}

async fn run_builtin(
    builtin: BuiltinHandler,
    data: &serde_json::Value,
    progress: &Reporter,
) -> serde_json::Value {
    match builtin {
        BuiltinHandler::Sleep => {
            let pause = data
                .get("ms")
                .and_then(serde_json::Value::as_u64)
                .map_or(DEFAULT_SLEEP, Duration::from_millis);
            sleep_reporting(pause, progress).await;
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

/// Sleeps for `pause`, reporting how much of it has passed ten times on the way.
async fn sleep_reporting(pause: Duration, progress: &Reporter) {
    const STEPS: u32 = 10;
    for step in 1..=STEPS {
        tokio::time::sleep(pause / STEPS).await;
        let percent = f64::from(step * 100 / STEPS);
        progress.report(Progress::now(Some(percent), Some("sleeping")));
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

/// The last `keep` bytes of everything appended, in at most `2 * keep` of memory.
struct Tail {
    bytes: Vec<u8>,
    keep: usize,
}

impl Tail {
    fn new(keep: usize) -> Self {
        Self {
            bytes: Vec::new(),
            keep,
        }
    }

    fn push(&mut self, more: &[u8]) {
        let more = &more[more.len().saturating_sub(self.keep)..];
        self.bytes.extend_from_slice(more);
        // Dropping the front only once it is twice the size keeps appends cheap.
        if self.bytes.len() > 2 * self.keep {
            self.bytes.drain(..self.bytes.len() - self.keep);
        }
    }

    fn into_bytes(mut self) -> Vec<u8> {
        let excess = self.bytes.len().saturating_sub(self.keep);
        self.bytes.drain(..excess);
        self.bytes
    }
}

/// Reads `pipe` to its end, or `None` as soon as it holds more than `limit` bytes.
async fn read_limited(
    pipe: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        let most = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        pipe.take(most).read_to_end(&mut bytes).await?;
    }
    Ok((bytes.len() <= limit).then_some(bytes))
}

/// Kills the program's process group when the attempt ends early (timeout, shutdown,
/// cancel, a result over the limit), so no grandchild outlives it, and returns only once
/// they are all dead: the attempt's outcome (a `cancelled` record, say) is written after
/// this, and must not be seen while the program still runs.
struct GroupKiller(Option<nix::unistd::Pid>);

/// How long a killed group may take to die before the attempt goes on anyway.
const GROUP_DEATH_WAIT: Duration = Duration::from_secs(1);

impl GroupKiller {
    /// The killer of `child`'s process group (the child leads it).
    fn of(child: &tokio::process::Child) -> Self {
        Self(
            child
                .id()
                .and_then(|pid| i32::try_from(pid).ok())
                .map(nix::unistd::Pid::from_raw),
        )
    }

    /// The program ended by itself: nothing to kill.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            // A SIGKILL takes effect when the process next runs, not when kill returns.
            // Blocking (briefly: a killed process dies within a scheduler tick), since
            // a drop cannot await.
            let deadline = std::time::Instant::now() + GROUP_DEATH_WAIT;
            while group_alive(group) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Whether a process of `group` still runs (a zombie has stopped running: its memory,
/// files and sockets are released). Reads `/proc/<pid>/stat`: the state and the
/// process group follow the parenthesised command name.
fn group_alive(group: nix::unistd::Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .any(|stat| {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // After the name: state, parent, process group.
            matches!(fields.as_slice(), [state, _, pgrp, ..]
                if *state != "Z" && *state != "X" && pgrp.parse() == Ok(group.as_raw()))
        })
}

async fn run_exec(
    command: &[String],
    guard: Option<&ExecGuard>,
    input: &HandlerInput<'_>,
    limit: usize,
    progress: &Reporter,
) -> Result<serde_json::Value, HandlerError> {
    let Some((program, args)) = command.split_first() else {
        return Err(HandlerError::Permanent(
            "exec handler has an empty command".into(),
        ));
    };
    let payload = serde_json::to_vec(input).map_err(|err| {
        HandlerError::Permanent(format!(
            "cannot write the work as JSON for {program}: {err}"
        ))
    })?;
    let mut child = spawn(program, args, guard, input)?;
    // From here every early return ends the program's whole group.
    let mut killer = GroupKiller::of(&child);
    let (stdout, stderr) = communicate(&mut child, program, payload, limit, progress).await?;
    let status = child
        .wait()
        .await
        .map_err(|err| HandlerError::Retryable(format!("waiting for {program}: {err}")))?;
    killer.disarm();
    exited(program, status, guard.is_some(), &stdout, &stderr)
}

/// Where an exec handler finds programs named without a path, when the worker has no
/// `PATH` of its own.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Starts `program` (under the guard, if there is one) in its own process group, with
/// its three pipes open. Its environment is the work's id, task and attempt, its trace
/// context, and `PATH`, nothing of the worker's own: not the pool's spec, the NATS URL
/// or credentials file, nor the addresses Kubernetes gives the pod.
fn spawn(
    program: &str,
    args: &[String],
    guard: Option<&ExecGuard>,
    input: &HandlerInput<'_>,
) -> Result<tokio::process::Child, HandlerError> {
    let mut command = match guard {
        Some(guard) => guard.command(program, args),
        None => {
            let mut command = tokio::process::Command::new(program);
            command.args(args);
            command
        }
    };
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    command.env_clear();
    if let Some(trace) = input.trace {
        command.env("TRACEPARENT", &trace.traceparent);
        if let Some(state) = &trace.tracestate {
            command.env("TRACESTATE", state);
        }
    }
    command
        .env("PATH", path)
        .env("WORKPOOL_WORK_ID", input.work.id.as_str())
        .env("WORKPOOL_TASK", &input.work.task)
        .env("WORKPOOL_ATTEMPT", input.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| HandlerError::Permanent(format!("cannot start {program}: {err}")))
}

/// Writes `payload` to the program's stdin (closing it after) while reading its stdout
/// (at most `limit` bytes) and its stderr (progress lines reported, the end of the rest
/// kept), all at once: a program that writes before it has read everything would
/// otherwise fill its stdout pipe while we still fill its stdin.
async fn communicate(
    child: &mut tokio::process::Child,
    program: &str,
    payload: Vec<u8>,
    limit: usize,
    progress: &Reporter,
) -> Result<(Vec<u8>, Vec<u8>), HandlerError> {
    let stdin = child.stdin.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A program may exit without reading all of its input (a broken pipe): its
            // exit status decides, not the failed write.
            let _ = stdin.write_all(&payload).await;
            // Dropping `stdin` here closes it, so the program sees the end of its input.
        }
        Ok::<_, HandlerError>(())
    };
    let output = async {
        read_limited(child.stdout.take(), limit)
            .await
            .map_err(|err| {
                HandlerError::Retryable(format!("reading the output of {program}: {err}"))
            })?
            // Over the limit: the caller's return drops its killer, which ends the program.
            .ok_or_else(|| too_large(limit))
    };
    let errors = async {
        let mut tail = Tail::new(DIAGNOSTIC_TAIL_BYTES);
        if let Some(stderr) = child.stderr.take() {
            let keep = |bytes: &[u8]| tail.push(bytes);
            read_stderr(stderr, progress, DIAGNOSTIC_TAIL_BYTES, keep)
                .await
                .map_err(|err| {
                    HandlerError::Retryable(format!("reading the stderr of {program}: {err}"))
                })?;
        }
        Ok::<_, HandlerError>(tail.into_bytes())
    };
    let ((), stdout, stderr) = tokio::try_join!(feed, output, errors)?;
    Ok((stdout, stderr))
}

/// What a program's exit means: 0 gives its output as the result; the guard's "cannot
/// start" is as permanent as a failed spawn; any other failure is worth another attempt.
fn exited(
    program: &str,
    status: std::process::ExitStatus,
    guarded: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<serde_json::Value, HandlerError> {
    if status.success() {
        Ok(output_value(stdout))
    } else if guarded && status.code() == Some(i32::from(crate::guard::CANNOT_START)) {
        Err(HandlerError::Permanent(tail(stderr)))
    } else {
        Err(HandlerError::Retryable(format!(
            "{program} exited with {status}: {}",
            tail(stderr)
        )))
    }
}

/// Reads a response body to its end, or `None` as soon as it has more than `limit` bytes.
async fn read_body(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > limit - body.len() {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The end of an error answer's body, reading at most `limit` bytes of it.
async fn read_body_tail(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut tail = Tail::new(DIAGNOSTIC_TAIL_BYTES);
    let mut read = 0usize;
    while read <= limit
        && let Some(chunk) = response.chunk().await?
    {
        read = read.saturating_add(chunk.len());
        tail.push(&chunk);
    }
    Ok(tail.into_bytes())
}

/// `err` and its causes, so the record says why a request failed (a refused
/// certificate, a refused connection), not only that it did.
pub(crate) fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let chain = std::iter::successors(Some(err), |err| err.source());
    chain
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

async fn run_http(
    client: &reqwest::Client,
    url: &str,
    input: &HandlerInput<'_>,
    limit: usize,
    progress_url: Option<&str>,
) -> Result<serde_json::Value, HandlerError> {
    let mut request = client.post(url).json(input);
    if let Some(trace) = input.trace {
        request = request.header("traceparent", &trace.traceparent);
        if let Some(state) = &trace.tracestate {
            request = request.header("tracestate", state);
        }
    }
    if let Some(progress_url) = progress_url {
        request = request.header(PROGRESS_URL_HEADER, progress_url);
    }
    let mut response = request
        .send()
        .await
        .map_err(|err| HandlerError::Retryable(format!("POST {url}: {}", with_causes(&err))))?;
    let status = response.status();
    let reading = |err: reqwest::Error| {
        HandlerError::Retryable(format!("reading the answer of {url}: {err}"))
    };
    if status.is_success() {
        // A declared length over the limit needs no reading at all.
        if response
            .content_length()
            .is_some_and(|length| length > u64::try_from(limit).unwrap_or(u64::MAX))
        {
            return Err(too_large(limit));
        }
        let body = read_body(&mut response, limit)
            .await
            .map_err(reading)?
            .ok_or_else(|| too_large(limit))?;
        return Ok(if body.is_empty() {
            serde_json::Value::Null
        } else {
            output_value(&body)
        });
    }
    let body = read_body_tail(&mut response, limit)
        .await
        .map_err(reading)?;
    let message = format!("{url} answered {status}: {}", tail(&body));
    if status.is_client_error() {
        Err(HandlerError::Permanent(message))
    } else {
        Err(HandlerError::Retryable(message))
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
            tenant: None,
            ttl: None,
            run_at: None,
            priority: Default::default(),
            callback_url: None,
            group: None,
            parked: 0,
            trace: None,
        }
    }

    #[tokio::test]
    async fn builtins_echo_hash_and_sleep() {
        let echo = pooled(HandlerSpec::Builtin(BuiltinHandler::Echo));
        assert_eq!(
            echo.run(&work(json!({"a": [1]})), 1, &Reporter::unheard())
                .await,
            Ok(json!({"a": [1]}))
        );
        let sha = pooled(HandlerSpec::Builtin(BuiltinHandler::Sha256));
        assert_eq!(
            sha.run(&work(json!("foo")), 1, &Reporter::unheard()).await,
            Ok(json!(
                "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
            ))
        );
        let sleep = pooled(HandlerSpec::Builtin(BuiltinHandler::Sleep));
        assert_eq!(
            sleep
                .run(&work(json!({"ms": 5})), 1, &Reporter::unheard())
                .await,
            Ok(json!({"slept_ms": 5}))
        );
    }

    #[tokio::test]
    async fn exec_sees_only_the_work_and_path_in_its_environment() {
        let env = pooled(HandlerSpec::Exec {
            command: vec!["env".into()],
        });
        let result = env
            .run(&work(json!(null)), 3, &Reporter::unheard())
            .await
            .expect("env runs");
        let text = result.as_str().expect("env prints text");
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "PATH",
                "WORKPOOL_ATTEMPT",
                "WORKPOOL_TASK",
                "WORKPOOL_WORK_ID"
            ],
            "{text}"
        );
        assert!(text.contains("WORKPOOL_ATTEMPT=3"), "{text}");
    }

    #[tokio::test]
    async fn exec_reads_stdin_and_reports_failures() {
        let cat = pooled(HandlerSpec::Exec {
            command: vec!["cat".into()],
        });
        let result = cat
            .run(&work(json!({"x": 1})), 2, &Reporter::unheard())
            .await
            .expect("cat succeeds");
        assert_eq!(result["data"], json!({"x": 1}));
        assert_eq!(result["attempt"], json!(2));
        let failing = pooled(HandlerSpec::Exec {
            command: vec!["sh".into(), "-c".into(), "echo broken >&2; exit 3".into()],
        });
        match failing
            .run(&work(json!(null)), 1, &Reporter::unheard())
            .await
        {
            Err(HandlerError::Retryable(message)) => {
                assert!(message.contains("broken"), "{message}")
            }
            other => panic!("expected a retryable failure, got {other:?}"),
        }
        let missing = pooled(HandlerSpec::Exec {
            command: vec!["/nonexistent/program".into()],
        });
        assert!(matches!(
            missing
                .run(&work(json!(null)), 1, &Reporter::unheard())
                .await,
            Err(HandlerError::Permanent(_))
        ));
    }

    /// A handler of `spec` whose results may be at most `max_result_bytes`.
    fn handler(spec: HandlerSpec, max_result_bytes: usize) -> Handler {
        let mut pool = PoolSpec::default();
        pool.worker.handler = spec;
        pool.queue.max_payload_bytes = max_result_bytes;
        Handler::new(&pool).expect("a handler")
    }

    /// A handler with the default pool's result limit.
    fn pooled(spec: HandlerSpec) -> Handler {
        handler(spec, PoolSpec::default().queue.max_payload_bytes)
    }

    fn sh(script: &str) -> HandlerSpec {
        HandlerSpec::Exec {
            command: vec!["sh".into(), "-c".into(), script.into()],
        }
    }

    /// An outcome for a failure message, without dumping a huge result.
    fn brief(outcome: &Result<serde_json::Value, HandlerError>) -> String {
        let text = format!("{outcome:?}");
        match text.char_indices().nth(300) {
            Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
            None => text,
        }
    }

    fn expect_too_large(outcome: &Result<serde_json::Value, HandlerError>, limit: usize) {
        match outcome {
            Err(HandlerError::Permanent(message)) => {
                assert!(
                    message.contains("result too large")
                        && message.contains(&format!("more than {limit} bytes")),
                    "{message}"
                );
            }
            other => panic!(
                "expected a permanent 'result too large', got {}",
                brief(other)
            ),
        }
    }

    /// Generous: these programs take milliseconds; only a deadlock comes near it.
    const DEADLOCK_GUARD: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn exec_with_large_input_and_output_does_not_deadlock() {
        const MIB: usize = 1024 * 1024;
        let big = "x".repeat(MIB);
        // `cat` echoes as it reads; the second program writes all of its output before it
        // reads any input. Each fills both 64 KiB pipes unless stdin is written while
        // stdout is drained.
        let programs = [
            HandlerSpec::Exec {
                command: vec!["cat".into()],
            },
            sh("head -c 1048576 /dev/zero | tr '\\0' y; cat > /dev/null"),
        ];
        for program in programs {
            let exec = handler(program.clone(), 4 * MIB);
            let outcome = tokio::time::timeout(
                DEADLOCK_GUARD,
                exec.run(&work(json!(big)), 1, &Reporter::unheard()),
            )
            .await
            .unwrap_or_else(|_| panic!("{program:?} deadlocked"));
            match outcome {
                Ok(serde_json::Value::Object(input)) => assert_eq!(input["data"], json!(big)),
                Ok(serde_json::Value::String(text)) => assert_eq!(text, "y".repeat(MIB)),
                other => panic!("{program:?}: {}", brief(&other)),
            }
        }
    }

    #[tokio::test]
    async fn exec_without_reading_stdin_is_judged_by_its_exit_status() {
        let big = json!("z".repeat(1024 * 1024));
        let quick = handler(sh("echo '{\"done\": true}'"), 1024);
        assert_eq!(
            quick.run(&work(big.clone()), 1, &Reporter::unheard()).await,
            Ok(json!({"done": true}))
        );
        let failing = handler(sh("echo nope >&2; exit 4"), 1024);
        match failing.run(&work(big), 1, &Reporter::unheard()).await {
            Err(HandlerError::Retryable(message)) => {
                assert!(
                    message.contains("nope") && message.contains('4'),
                    "{message}"
                );
            }
            other => panic!("expected a retryable failure, got {}", brief(&other)),
        }
    }

    #[tokio::test]
    async fn exec_output_over_the_limit_is_permanent_and_not_read_to_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let finished = dir.path().join("finished");
        let limit = 64 * 1024;
        // 16 MiB, far more than the limit plus a pipe buffer: the program can only get to
        // `touch` if the worker reads (and holds) all of it.
        let script = format!("head -c 16777216 /dev/zero; touch {}", finished.display());
        let flood = handler(sh(&script), limit);
        let outcome = tokio::time::timeout(
            DEADLOCK_GUARD,
            flood.run(&work(json!(null)), 1, &Reporter::unheard()),
        )
        .await
        .expect("stopped reading at the limit");
        expect_too_large(&outcome, limit);
        assert!(
            !finished.exists(),
            "the worker read all 16 MiB instead of stopping at the limit"
        );
    }

    #[tokio::test]
    async fn the_limit_is_exact_and_counts_the_stored_json() {
        let limit = 1000;
        // A JSON string of exactly `limit` bytes (quotes included) is fine, one more is not.
        let exact = handler(sh("printf '\"%0998d\"' 0"), limit);
        assert_eq!(
            exact.run(&work(json!(null)), 1, &Reporter::unheard()).await,
            Ok(json!("0".repeat(998)))
        );
        let over = handler(sh("printf '\"%0999d\"' 0"), limit);
        expect_too_large(
            &over.run(&work(json!(null)), 1, &Reporter::unheard()).await,
            limit,
        );
        // 400 bytes of text are stored as a JSON string of 2402 bytes (`\u0001` each).
        let escaped = handler(sh("head -c 400 /dev/zero | tr '\\0' '\\001'"), limit);
        expect_too_large(
            &escaped
                .run(&work(json!(null)), 1, &Reporter::unheard())
                .await,
            limit,
        );
    }

    #[tokio::test]
    async fn exec_keeps_only_the_end_of_a_huge_stderr() {
        let noisy = handler(
            sh("head -c 8388608 /dev/zero | tr '\\0' e >&2; echo 'the real reason' >&2; exit 3"),
            1024,
        );
        let outcome = tokio::time::timeout(
            DEADLOCK_GUARD,
            noisy.run(&work(json!(null)), 1, &Reporter::unheard()),
        )
        .await
        .expect("finished");
        match outcome {
            Err(HandlerError::Retryable(message)) => {
                assert!(message.contains("the real reason"), "{message}");
                assert!(message.len() < 1024, "{} bytes", message.len());
            }
            other => panic!("expected a retryable failure, got {}", brief(&other)),
        }
    }

    /// Serves one HTTP answer of `status` with a body of `size` zero bytes (chunked, or
    /// with a Content-Length), and tells how many body bytes it got to write before the
    /// client went away.
    async fn serve_huge_body(
        status: u16,
        size: usize,
        chunked: bool,
    ) -> (String, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/run", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut socket = BufReader::new(socket);
            let mut length = 0;
            loop {
                let mut line = String::new();
                socket.read_line(&mut line).await.expect("request line");
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().expect("length");
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut request = vec![0; length];
            socket.read_exact(&mut request).await.expect("request body");
            let head = if chunked {
                format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n")
            } else {
                format!("HTTP/1.1 {status} X\r\ncontent-length: {size}\r\n\r\n")
            };
            let mut socket = socket.into_inner();
            if socket.write_all(head.as_bytes()).await.is_err() {
                return 0;
            }
            let chunk = vec![b'0'; 64 * 1024];
            let mut written = 0;
            while written < size {
                let framed = if chunked {
                    [
                        format!("{:x}\r\n", chunk.len()).into_bytes(),
                        chunk.clone(),
                        b"\r\n".to_vec(),
                    ]
                    .concat()
                } else {
                    chunk.clone()
                };
                if socket.write_all(&framed).await.is_err() {
                    return written;
                }
                written += chunk.len();
            }
            if chunked {
                let _ = socket.write_all(b"0\r\n\r\n").await;
            }
            written
        });
        (url, server)
    }

    /// The attempt's W3C trace context reaches an http handler in its headers, and an exec
    /// program in its environment.
    #[tokio::test]
    async fn handlers_get_the_attempts_trace_context() {
        let trace = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: Some("vendor=1".into()),
        };
        let expected = json!({"traceparent": trace.traceparent, "tracestate": "vendor=1"});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let echo_headers = |headers: axum::http::HeaderMap| async move {
            let header = |name| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            axum::Json(
                json!({"traceparent": header("traceparent"), "tracestate": header("tracestate")}),
            )
        };
        let app = axum::Router::new().route("/", axum::routing::post(echo_headers));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let sidecar = handler(HandlerSpec::Http { url }, 1 << 20);
        let unheard = Reporter::unheard();
        let answer = sidecar
            .run_traced(&work(json!(null)), 1, Some(&trace), &unheard)
            .await
            .expect("answered");
        assert_eq!(answer, expected);
        let script =
            r#"printf '{"traceparent": "%s", "tracestate": "%s"}' "$TRACEPARENT" "$TRACESTATE""#;
        let exec = pooled(HandlerSpec::Exec {
            command: vec!["sh".into(), "-c".into(), script.into()],
        });
        let answer = exec
            .run_traced(&work(json!(null)), 1, Some(&trace), &unheard)
            .await
            .expect("ran");
        assert_eq!(answer, expected);
    }

    #[tokio::test]
    async fn http_bodies_over_the_limit_are_permanent_and_not_read_to_the_end() {
        const HUGE: usize = 64 * 1024 * 1024;
        let limit = 64 * 1024;
        for chunked in [true, false] {
            let (url, server) = serve_huge_body(200, HUGE, chunked).await;
            let sidecar = handler(HandlerSpec::Http { url }, limit);
            let outcome = tokio::time::timeout(
                DEADLOCK_GUARD,
                sidecar.run(&work(json!(null)), 1, &Reporter::unheard()),
            )
            .await
            .expect("stopped reading at the limit");
            expect_too_large(&outcome, limit);
            drop(sidecar);
            let written = tokio::time::timeout(DEADLOCK_GUARD, server)
                .await
                .expect("server done")
                .expect("server task");
            assert!(
                written < HUGE,
                "chunked {chunked}: the worker read the whole {HUGE}-byte body"
            );
        }
        // An error answer's body is not the result: it stays retryable, with a bounded message.
        let (url, server) = serve_huge_body(503, HUGE, true).await;
        let sidecar = handler(HandlerSpec::Http { url }, limit);
        match tokio::time::timeout(
            DEADLOCK_GUARD,
            sidecar.run(&work(json!(null)), 1, &Reporter::unheard()),
        )
        .await
        .expect("finished")
        {
            Err(HandlerError::Retryable(message)) => {
                assert!(
                    message.contains("503"),
                    "{}",
                    brief(&Err(HandlerError::Retryable(message.clone())))
                );
                assert!(message.len() < 1024, "{} bytes", message.len());
            }
            other => panic!("expected a retryable failure, got {}", brief(&other)),
        }
        drop(sidecar);
        let written = tokio::time::timeout(DEADLOCK_GUARD, server)
            .await
            .expect("server done")
            .expect("server task");
        assert!(
            written < HUGE,
            "the worker read the whole {HUGE}-byte error body"
        );
    }

    /// The attempt's end (here a timeout; a cancel drops the handler the same way) comes
    /// only after every process of the program is dead, not just signalled.
    #[tokio::test]
    async fn an_attempt_ends_only_after_its_programs_are_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pids");
        let script = format!(
            "sleep 30 & a=$!; sleep 30 & echo \"$a $!\" > {}; wait",
            pid_file.display()
        );
        let slow = pooled(HandlerSpec::Exec {
            command: vec!["sh".into(), "-c".into(), script],
        });
        for _ in 0..20 {
            let _ = std::fs::remove_file(&pid_file);
            let input = work(json!(null));
            let unheard = Reporter::unheard();
            let run = slow.run(&input, 1, &unheard);
            let outcome = tokio::time::timeout(Duration::from_millis(300), run).await;
            assert!(outcome.is_err(), "the attempt should time out");
            let pids = std::fs::read_to_string(&pid_file).expect("pids written");
            for pid in pids.split_whitespace() {
                let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|stat| {
                    stat.rsplit_once(')')
                        .map(|(_, rest)| rest.trim().to_owned())
                });
                let running = state
                    .as_ref()
                    .is_ok_and(|rest| rest.as_ref().is_some_and(|r| !r.starts_with('Z')));
                assert!(
                    !running,
                    "sleep {pid} still runs after the attempt ended: {state:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn exec_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let slow = pooled(HandlerSpec::Exec {
            command: vec!["sh".into(), "-c".into(), script],
        });
        let outcome = tokio::time::timeout(
            Duration::from_millis(500),
            slow.run(&work(json!(null)), 1, &Reporter::unheard()),
        )
        .await;
        assert!(outcome.is_err(), "the attempt should time out");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid written")
            .trim()
            .parse()
            .expect("pid");
        // Reap-free check: signal 0 fails once the grandchild is gone.
        let gone = eventually(|| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z "))
        })
        .await;
        assert!(gone, "sleep {pid} survived the timeout");
    }

    /// Whether `done` comes true within a few seconds, looking every 20 ms without
    /// blocking the runtime.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if done() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn exit(code: i32) -> std::process::ExitStatus {
        std::os::unix::process::ExitStatusExt::from_raw(code << 8)
    }

    fn killed(signal: i32) -> std::process::ExitStatus {
        std::os::unix::process::ExitStatusExt::from_raw(signal)
    }

    #[test]
    fn a_program_that_exits_0_gives_its_output() {
        assert_eq!(
            exited("p", exit(0), false, b"{\"a\": 1}\n", b"noise"),
            Ok(json!({"a": 1}))
        );
        assert_eq!(
            exited("p", exit(0), true, b"  plain text\n", b""),
            Ok(json!("plain text"))
        );
    }

    #[test]
    fn a_failing_program_is_retried_with_the_end_of_its_stderr() {
        match exited("p", exit(3), false, b"", b"first\nthe reason\n") {
            Err(HandlerError::Retryable(message)) => {
                assert!(message.starts_with("p exited with"), "{message}");
                assert!(message.ends_with(": first\nthe reason"), "{message}");
            }
            other => panic!("expected a retryable failure, got {other:?}"),
        }
        assert!(matches!(
            exited("p", killed(9), true, b"", b""),
            Err(HandlerError::Retryable(_))
        ));
    }

    #[test]
    fn only_the_guard_can_say_the_program_cannot_start() {
        let cannot_start = exit(i32::from(crate::guard::CANNOT_START));
        assert_eq!(
            exited("p", cannot_start, true, b"", b"cannot start p: not found\n"),
            Err(HandlerError::Permanent("cannot start p: not found".into()))
        );
        // Unguarded, 127 is just the program's own exit code.
        assert!(matches!(
            exited("p", cannot_start, false, b"", b""),
            Err(HandlerError::Retryable(_))
        ));
    }
}
