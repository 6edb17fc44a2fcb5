//! A whole pool for a test: a NATS server (or a 3-node cluster), its provisioned objects,
//! and api and worker processes running the real binaries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use workpool_core::peer_auth::{KEY_BYTES, PEER_KEY_ENV, PeerKey};
use workpool_core::webhook::WEBHOOK_KEY_ENV;
use workpool_core::{PoolNames, PoolSpec};

use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::paths;
use workpool_local_cluster::process::Process;

use crate::{HarnessError, Result, free_port};

/// The namespace and name every test pool uses (each test has its own server).
pub const NAMESPACE: &str = "default";
pub const POOL: &str = "demo";

#[derive(Debug)]
pub struct Member {
    pub process: Process,
    pub pod: String,
    pub port: u16,
}

/// What a pool needs of its NATS: the `NATS_URL` its processes get and a client for
/// provisioning and checks. A pool's `nats` is a [`NatsServer`] unless it was started with
/// [`TestPool::start_on`] (the chaos checker's [`crate::nats_cluster::Nats`] is a single
/// server or a 3-node cluster).
pub trait PoolNats {
    fn url(&self) -> String;
    fn client(&self) -> impl Future<Output = Result<async_nats::Client>> + Send;
    /// The `.creds` the pool's processes connect with, minted as the operator mints
    /// them, when the server runs with auth on.
    fn pool_creds(&self, _names: &PoolNames) -> Result<Option<String>> {
        Ok(None)
    }
    /// What the server refused a user, as it logged it (a server without auth refuses
    /// nothing).
    fn permission_violations(&self) -> Vec<String> {
        Vec::new()
    }
}

impl PoolNats for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }

    fn client(&self) -> impl Future<Output = Result<async_nats::Client>> + Send {
        NatsServer::client(self)
    }

    fn pool_creds(&self, names: &PoolNames) -> Result<Option<String>> {
        use workpool_runtime::nats_auth::AccountKey;
        let Some(auth) = self.auth() else {
            return Ok(None);
        };
        let mint = || HarnessError::context("minting the pool's NATS user");
        let account = AccountKey::from_file(&auth.account_seed).map_err(mint())?;
        let creds = account
            .user_creds(&names.pool, Some(&names.permissions()))
            .map_err(mint())?;
        Ok(Some(creds))
    }

    fn permission_violations(&self) -> Vec<String> {
        NatsServer::permission_violations(self)
    }
}

#[derive(Debug)]
pub struct TestPool<N: PoolNats = NatsServer> {
    pub nats: N,
    pub names: PoolNames,
    pub spec: PoolSpec,
    spec_file: PathBuf,
    pub apis: Vec<Member>,
    pub workers: Vec<Member>,
    pub http: reqwest::Client,
    extra_api_env: Vec<(String, String)>,
    /// The pool's peer key, as the operator would keep it in the pool's Secret.
    pub peer_key: PeerKey,
    /// The key the pool's completion webhooks are signed with (as the operator keeps it
    /// in the pool's webhook Secret).
    pub webhook_key: PeerKey,
    /// The pool's NATS user, when the server runs with auth on.
    creds_file: Option<PathBuf>,
    dir: tempfile::TempDir,
}

/// Every test of a pool checks on the way out that its processes never needed more than
/// the pool's own NATS user allows (docs/security.md): a refused subject is a feature
/// that silently stopped working.
impl<N: PoolNats> Drop for TestPool<N> {
    fn drop(&mut self) {
        let violations = self.nats.permission_violations();
        if !std::thread::panicking() && !violations.is_empty() {
            panic!("NATS refused the pool's user:\n{}", violations.join("\n"));
        }
    }
}

/// An HTTP answer: status and JSON body (`Value::Null` if the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn str(&self, field: &str) -> &str {
        self.body
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

impl TestPool {
    /// Starts NATS, provisions the pool and waits for `apis` api and `workers` worker
    /// processes to be ready.
    pub async fn start(spec: PoolSpec, apis: usize, workers: usize) -> Result<Self> {
        Self::start_with_api_env(spec, apis, workers, Vec::new()).await
    }

    pub async fn start_with_api_env(
        spec: PoolSpec,
        apis: usize,
        workers: usize,
        api_env: Vec<(String, String)>,
    ) -> Result<Self> {
        Self::unprovisioned(spec, api_env)
            .await?
            .provisioned_with(apis, workers)
            .await
    }

    /// A NATS server without the pool's objects and no processes yet. The server runs
    /// with auth on, and the processes connect as the pool's own user, with the
    /// permissions the operator gives a pool (docs/security.md).
    pub async fn unprovisioned(spec: PoolSpec, api_env: Vec<(String, String)>) -> Result<Self> {
        let nats = NatsServer::start_secured_on("127.0.0.1").await?;
        Self::unprovisioned_on(nats, spec, api_env)
    }
}

impl<N: PoolNats> TestPool<N> {
    /// A pool on a NATS the caller started (a cluster for `nats.replicas: 3`):
    /// provisions it and waits for `apis` api and `workers` worker processes.
    pub async fn start_on(nats: N, spec: PoolSpec, apis: usize, workers: usize) -> Result<Self> {
        Self::unprovisioned_on(nats, spec, Vec::new())?
            .provisioned_with(apis, workers)
            .await
    }

    /// Provisions the pool and waits for `apis` api and `workers` worker processes.
    async fn provisioned_with(mut self, apis: usize, workers: usize) -> Result<Self> {
        self.provision().await?;
        for _ in 0..apis {
            self.add_api().await?;
        }
        for _ in 0..workers {
            self.add_worker().await?;
        }
        Ok(self)
    }

    fn unprovisioned_on(nats: N, spec: PoolSpec, api_env: Vec<(String, String)>) -> Result<Self> {
        let names = PoolNames::new(NAMESPACE, POOL)
            .map_err(HarnessError::context("the test pool's names"))?;
        let dir = tempfile::Builder::new()
            .prefix("workpool-pool-")
            .tempdir()
            .map_err(HarnessError::io("temp dir"))?;
        let spec_file = dir.path().join("spec.json");
        let spec_json = serde_json::to_string_pretty(&spec)
            .map_err(HarnessError::context("encoding spec.json"))?;
        std::fs::write(&spec_file, spec_json).map_err(HarnessError::io("writing spec.json"))?;
        let creds_file = match nats.pool_creds(&names)? {
            Some(creds) => {
                let file = dir.path().join("nats.creds");
                std::fs::write(&file, creds).map_err(HarnessError::io("writing nats.creds"))?;
                Some(file)
            }
            None => None,
        };
        Ok(Self {
            nats,
            names,
            spec,
            spec_file,
            apis: Vec::new(),
            workers: Vec::new(),
            http: workpool_local_cluster::http::client(),
            extra_api_env: api_env,
            peer_key: random_peer_key(),
            webhook_key: random_peer_key(),
            creds_file,
            dir,
        })
    }

    /// Creates the pool's NATS objects, as the operator does, and like it retries what
    /// NATS did not answer: on a fresh 3-node cluster the first stream's creation can
    /// time out while its raft group forms (seen in `make test`). A refusal fails at once.
    pub async fn provision(&self) -> Result<()> {
        use backon::{ExponentialBuilder, Retryable};
        let js = async_nats::jetstream::new(self.nats.client().await?);
        let attempt = || workpool_runtime::provision::provision(&js, &self.names, &self.spec);
        let patience = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(10);
        attempt
            .retry(patience)
            .when(|err| !err.is_refusal())
            .notify(|err, _| eprintln!("provisioning not answered yet ({err}); retrying"))
            .await
            .map_err(HarnessError::context("provisioning"))
    }

    fn env(&self, pod: &str, port: u16) -> Vec<(String, String)> {
        let mut env = vec![
            ("WORKPOOL_NAMESPACE".into(), NAMESPACE.into()),
            ("WORKPOOL_POOL".into(), POOL.into()),
            (
                "WORKPOOL_SPEC_FILE".into(),
                self.spec_file.display().to_string(),
            ),
            ("NATS_URL".into(), self.nats.url()),
            ("POD_NAME".into(), pod.into()),
            ("WORKPOOL_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("RUST_LOG".into(), "info,async_nats=warn".into()),
            (PEER_KEY_ENV.into(), self.peer_key.to_hex()),
            (WEBHOOK_KEY_ENV.into(), self.webhook_key.to_hex()),
        ];
        if let Some(file) = &self.creds_file {
            env.push(("NATS_CREDS_FILE".into(), file.display().to_string()));
        }
        env
    }

    async fn spawn(
        &self,
        binary: &str,
        pod: String,
        extra_env: &[(String, String)],
    ) -> Result<Member> {
        let member = self.spawn_unready(binary, pod, extra_env)?;
        self.wait_ready(&member).await?;
        Ok(member)
    }

    /// Starts a process without waiting for it to be ready.
    pub fn spawn_unready(
        &self,
        binary: &str,
        pod: String,
        extra_env: &[(String, String)],
    ) -> Result<Member> {
        let port = free_port()?;
        let mut env = self.env(&pod, port);
        env.extend_from_slice(extra_env);
        let log = self.dir.path().join(format!("{pod}.log"));
        let process = Process::spawn(&pod, &paths::workspace_binary(binary)?, &[], &env, log)?;
        Ok(Member { process, pod, port })
    }

    /// Waits until the member's `/readyz` answers 200.
    pub async fn wait_ready(&self, member: &Member) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", member.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(HarnessError::Timeout(format!(
            "{} to be ready; log:\n{}",
            member.pod,
            member.process.log_text()
        )))
    }

    pub async fn add_api(&mut self) -> Result<usize> {
        let pod = format!("demo-api-{}", self.apis.len());
        let extra = self.extra_api_env.clone();
        let member = self.spawn("workpool-api", pod, &extra).await?;
        self.apis.push(member);
        Ok(self.apis.len() - 1)
    }

    pub async fn add_worker(&mut self) -> Result<usize> {
        self.add_worker_with_env(&[]).await
    }

    pub async fn add_worker_with_env(&mut self, env: &[(String, String)]) -> Result<usize> {
        let pod = format!("demo-worker-{}", self.workers.len());
        let member = self.spawn("workpool-worker", pod, env).await?;
        self.workers.push(member);
        Ok(self.workers.len() - 1)
    }

    pub fn api_url(&self, index: usize) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.apis.get(index).map_or(0, |api| api.port)
        )
    }

    async fn answer(response: reqwest::Response) -> Result<Answer> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(HarnessError::context("reading an answer"))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// The id the pool's api gives work of `data` (task `default`, no key, no tenant):
    /// keyed with the pool's id key, as the api derives it.
    pub fn content_id(&self, data: &Value) -> workpool_core::WorkId {
        let key = self.peer_key.id_key();
        let scope = workpool_core::ids::IdScope {
            key: Some(&key),
            tenant: None,
        };
        workpool_core::WorkId::content_in(scope, "default", None, data)
    }

    /// POSTs JSON work to api 0.
    pub async fn post(&self, body: &Value) -> Result<Answer> {
        self.send(
            self.http
                .post(format!("{}/api/v1/work", self.api_url(0)))
                .json(body),
        )
        .await
    }

    /// POSTs work and returns its callback id (the answer must carry one).
    pub async fn submit(&self, body: &Value) -> Result<String> {
        let answer = self.post(body).await?;
        match answer.str("callback") {
            "" => Err(HarnessError::Other(format!("no callback in {answer:?}"))),
            id => Ok(id.to_owned()),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer> {
        let response = request
            .send()
            .await
            .map_err(HarnessError::context("request failed"))?;
        Self::answer(response).await
    }

    /// `DELETE /api/v1/work/{id}` on the first api process.
    pub async fn cancel(&self, id: &str) -> Result<Answer> {
        self.send(
            self.http
                .delete(format!("{}/api/v1/work/{id}", self.api_url(0))),
        )
        .await
    }

    pub async fn get(&self, id: &str) -> Result<Answer> {
        self.send(
            self.http
                .get(format!("{}/api/v1/work/{id}", self.api_url(0))),
        )
        .await
    }

    /// Polls GET until `done` holds for the answer, or fails after `timeout`.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Answer) -> bool,
    ) -> Result<Answer> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            let answer = self.get(id).await?;
            if done(&answer) {
                return Ok(answer);
            }
            last = Some(answer);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(HarnessError::Timeout(format!(
            "work {id}; last answer {last:?}"
        )))
    }

    /// Waits until the work has the given status.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Result<Answer> {
        self.wait_for(id, timeout, |answer| {
            answer.status == 200 && answer.str("status") == status
        })
        .await
    }

    /// How many messages the work stream holds now (queued or being worked).
    pub async fn queued_messages(&self) -> Result<u64> {
        let js = async_nats::jetstream::new(self.nats.client().await?);
        let mut stream = js
            .get_stream(self.names.stream())
            .await
            .map_err(HarnessError::context("getting the work stream"))?;
        let info = stream
            .info()
            .await
            .map_err(HarnessError::context("reading the work stream's state"))?;
        Ok(info.state.messages)
    }

    /// Logs of every process, for failure messages.
    pub fn logs(&self) -> String {
        self.apis
            .iter()
            .chain(&self.workers)
            .map(|member| format!("--- {} ---\n{}", member.pod, member.process.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A pool spec whose handler runs `script` with `sh -c`, the rest default.
pub fn shell_handler_spec(script: impl Into<String>) -> PoolSpec {
    let mut spec = PoolSpec::default();
    spec.worker.handler = workpool_core::spec::HandlerSpec::Exec {
        command: vec!["sh".into(), "-c".into(), script.into()],
    };
    spec
}

/// A fresh peer key: std's randomly seeded hasher is random enough for a test pool.
fn random_peer_key() -> PeerKey {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; KEY_BYTES];
    for chunk in bytes.chunks_mut(8) {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        chunk.copy_from_slice(&random.to_le_bytes()[..chunk.len()]);
    }
    PeerKey::from_bytes(bytes)
}
