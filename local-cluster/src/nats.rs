//! A real `nats-server` with JetStream for one test: free ports, a temporary store,
//! stopped and removed when dropped. It can be stopped and started again on the same port
//! and store, to test recovery.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::Process;
use crate::{Error, Result, paths};

#[derive(Debug)]
pub struct NatsServer {
    process: Option<Process>,
    pub host: String,
    pub port: u16,
    monitor_port: u16,
    config: PathBuf,
    dir: tempfile::TempDir,
    binary: PathBuf,
    auth: Option<ServerAuth>,
}

/// The files of a server that runs with auth on ([`NatsServer::start_secured_on`]).
#[derive(Debug, Clone)]
pub struct ServerAuth {
    /// A user with every right in the account: the operator's, and the tests' own.
    pub admin_creds: PathBuf,
    /// The account's seed, with which the operator mints each pool's user.
    pub account_seed: PathBuf,
}

/// NATS's default flush policy, unless WORKPOOL_NATS_SYNC=always asks for a flush before
/// each ack, as the chart's NATS does (docs/reliability.md says why the default stays here).
fn sync_from_env() -> bool {
    std::env::var("WORKPOOL_NATS_SYNC").as_deref() == Ok("always")
}

impl NatsServer {
    /// Starts a server and waits until JetStream is ready.
    pub async fn start() -> Result<Self> {
        Self::start_on("127.0.0.1").await
    }

    /// A server listening on `host` (for example the pod network's bridge address).
    pub async fn start_on(host: &str) -> Result<Self> {
        Self::start_with(host, "8MB", sync_from_env()).await
    }

    /// A server whose `max_payload` is `bytes` (to test pools that would not fit).
    pub async fn start_with_max_payload(bytes: usize) -> Result<Self> {
        Self::start_with("127.0.0.1", &bytes.to_string(), sync_from_env()).await
    }

    /// A server with auth on, as the chart's: an operator-signed account, users minted
    /// by its key (docs/security.md); clients without credentials are refused.
    pub async fn start_secured_on(host: &str) -> Result<Self> {
        Self::start_configured(host, "8MB", sync_from_env(), true).await
    }

    /// A server run from a `nats.conf` written elsewhere (the chart's, say), with `files`
    /// beside it (what it includes); its `port`, `http_port` and `store_dir` lines are
    /// replaced by this server's own.
    pub async fn start_from_config(text: &str, files: &[(&str, &str)]) -> Result<Self> {
        let mut server = Self::unstarted("127.0.0.1")?;
        let (port, monitor_port) = (server.port, server.monitor_port);
        let store = server.dir.path().join("store");
        let text: Vec<String> = text
            .lines()
            .map(|line| match line.trim_start() {
                l if l.starts_with("port:") => format!("listen: 127.0.0.1:{port}"),
                l if l.starts_with("http_port:") => format!("http: 127.0.0.1:{monitor_port}"),
                l if l.starts_with("store_dir:") => format!("store_dir: {store:?}"),
                _ => line.to_owned(),
            })
            .collect();
        std::fs::write(&server.config, text.join("\n")).map_err(Error::io("writing nats.conf"))?;
        for (name, content) in files {
            std::fs::write(server.dir.path().join(name), content)
                .map_err(Error::io("writing a file"))?;
        }
        server.start_again().await?;
        Ok(server)
    }

    /// A server that flushes its store before each acknowledgement
    /// (`sync_interval: always`), as the chart's NATS does: to measure what that costs.
    pub async fn start_synced() -> Result<Self> {
        Self::start_with("127.0.0.1", "8MB", true).await
    }

    async fn start_with(host: &str, max_payload: &str, sync_always: bool) -> Result<Self> {
        Self::start_configured(host, max_payload, sync_always, false).await
    }

    async fn start_configured(
        host: &str,
        max_payload: &str,
        sync_always: bool,
        secured: bool,
    ) -> Result<Self> {
        let mut server = Self::unstarted(host)?;
        let (port, monitor_port) = (server.port, server.monitor_port);
        let store = server.dir.path().join("store");
        let sync = if sync_always {
            ", sync_interval: always"
        } else {
            ""
        };
        let mut text = format!(
            "listen: {host}:{port}\nhttp: 127.0.0.1:{monitor_port}\nmax_payload: {max_payload}\n\
             jetstream {{ store_dir: {store:?}{sync} }}\n"
        );
        if secured {
            let (lines, auth) = write_trust(server.dir.path())?;
            text.push_str(&lines);
            server.auth = Some(auth);
        }
        std::fs::write(&server.config, text).map_err(Error::io("writing nats.conf"))?;
        server.start_again().await?;
        Ok(server)
    }

    /// A server not started yet: the binary, a temporary directory for its config and
    /// store, and free ports on `host`.
    fn unstarted(host: &str) -> Result<Self> {
        let binary = paths::tool("nats-server", "nats-server")?;
        let dir = tempfile::Builder::new()
            .prefix("workpool-nats-")
            .tempdir()
            .map_err(Error::io("creating a temp dir"))?;
        let [port, monitor_port] = crate::free_ports::<2>()?;
        Ok(Self {
            process: None,
            host: host.to_owned(),
            port,
            monitor_port,
            config: dir.path().join("nats.conf"),
            dir,
            binary,
            auth: None,
        })
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// The monitoring endpoint (`/varz`, `/jsz`, ...).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The store and logs of this server.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// (Re)starts the server on its port and store; waits until JetStream answers.
    pub async fn start_again(&mut self) -> Result<()> {
        let log = self.dir.path().join("nats.log");
        let process = Process::spawn(
            "nats-server",
            &self.binary,
            &["-c".into(), self.config.display().to_string()],
            &[],
            log,
        )?;
        self.process = Some(process);
        let health = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.monitor_port
        );
        let client = crate::http::client();
        for _ in 0..200 {
            if let Ok(response) = client.get(&health).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(Error::Timeout(format!(
            "nats-server on port {} to become healthy",
            self.port
        )))
    }

    /// Stops the server gracefully (as a restart or a rolling upgrade would).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.terminate();
            process.wait_exit(Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// Kills the server at once (SIGKILL): what it had not written to its store is gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Freezes the server (SIGSTOP) until [`NatsServer::resume`].
    pub fn pause(&self) {
        if let Some(process) = &self.process {
            process.pause();
        }
    }

    pub fn resume(&self) {
        if let Some(process) = &self.process {
            process.resume();
        }
    }

    /// The permission violations the server logged (publish or subscription refused
    /// by a user's permissions).
    pub fn permission_violations(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains(" Violation - "))
            .map(str::to_owned)
            .collect()
    }

    /// The credentials files, when the server runs with auth on.
    pub fn auth(&self) -> Option<&ServerAuth> {
        self.auth.as_ref()
    }

    /// A connected client for the test's own checks (with every right, when auth is on).
    pub async fn client(&self) -> Result<async_nats::Client> {
        let context = Error::context(format!("connecting to {}", self.url()));
        self.options()
            .await?
            .connect(self.url())
            .await
            .map_err(context)
    }

    /// Connect options with the admin user's credentials, when auth is on.
    pub async fn options(&self) -> Result<async_nats::ConnectOptions> {
        match &self.auth {
            Some(auth) => async_nats::ConnectOptions::with_credentials_file(&auth.admin_creds)
                .await
                .map_err(Error::io("reading the admin credentials")),
            None => Ok(async_nats::ConnectOptions::new()),
        }
    }
}

/// Makes an operator, a system account and the Workpool account; writes the admin
/// user's credentials and the account seed into `dir`; returns the config lines.
fn write_trust(dir: &std::path::Path) -> Result<(String, ServerAuth)> {
    let trust = workpool_runtime::nats_auth::Trust::generate();
    let auth = ServerAuth {
        admin_creds: dir.join("admin.creds"),
        account_seed: dir.join("account.seed"),
    };
    let mint = || Error::context("making NATS keys and JWTs");
    let admin = trust.account().user_creds("admin", None).map_err(mint())?;
    let seed = trust.account().seed().map_err(mint())?;
    std::fs::write(&auth.admin_creds, admin).map_err(Error::io("writing admin.creds"))?;
    std::fs::write(&auth.account_seed, seed).map_err(Error::io("writing account.seed"))?;
    Ok((trust.server_config().map_err(mint())?, auth))
}
