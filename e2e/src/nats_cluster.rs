//! A real 3-node `nats-server` cluster with JetStream for one test: every node on
//! loopback (or clients on the pod network's bridge address) with its own ports, store
//! and log, routed to the others. A node can be
//! killed, paused or restarted on its store while the other two keep a quorum, which is
//! what a replicated (`nats.replicas: 3`) pool is meant to survive.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pool::PoolNats;
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::paths;
use workpool_local_cluster::process::Process;

use crate::{HarnessError, Result};

/// How many nodes: the smallest cluster that keeps a quorum with one node down.
pub const NODES: usize = 3;

#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    config: PathBuf,
    process: Option<Process>,
    /// How often the node was started: each start logs to its own file, so the log of
    /// the run a fault ended is kept.
    starts: usize,
}

#[derive(Debug)]
pub struct NatsCluster {
    /// Where clients connect (routes and monitoring stay on loopback).
    host: String,
    nodes: Vec<Node>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl NatsCluster {
    /// Starts the three nodes and waits until each is healthy and JetStream has elected
    /// a meta leader (before that, creating a stream fails).
    pub async fn start() -> Result<Self> {
        Self::start_on("127.0.0.1").await
    }

    /// The same with client connections on `host` (the pod network's bridge address, so
    /// the local cluster's pods reach it).
    pub async fn start_on(host: &str) -> Result<Self> {
        let binary = paths::tool("nats-server", "nats-server")?;
        let dir = tempfile::Builder::new()
            .prefix("workpool-nats-cluster-")
            .tempdir()
            .map_err(HarnessError::io("creating a temp dir"))?;
        // Held together, so no two of the nine ports are the same.
        let ports = crate::free_ports::<{ 3 * NODES }>()?;
        let (client_ports, rest) = ports.split_at(NODES);
        let (monitor_ports, route_ports) = rest.split_at(NODES);
        let routes = route_ports
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Flushed before each ack, as the chart's NATS is: a replicated pool is the
        // deployment meant to keep every acknowledged write, so the cluster runs as it
        // would. WORKPOOL_NATS_SYNC=default runs it with NATS's default, to compare.
        let sync = match std::env::var("WORKPOOL_NATS_SYNC").as_deref() {
            Ok("default") => "",
            _ => ", sync_interval: always",
        };
        let mut nodes = Vec::with_capacity(NODES);
        for i in 0..NODES {
            let name = format!("n{i}");
            let store = dir.path().join(format!("{name}-store"));
            let config = dir.path().join(format!("{name}.conf"));
            let text = format!(
                "server_name: {name}\nlisten: {host}:{port}\nhttp: 127.0.0.1:{monitor}\n\
                 max_payload: 8MB\njetstream {{ store_dir: {store:?}{sync} }}\n\
                 cluster {{\n  name: workpool-e2e\n  listen: 127.0.0.1:{route}\n  \
                 routes: [{routes}]\n}}\n",
                port = client_ports[i],
                monitor = monitor_ports[i],
                route = route_ports[i],
            );
            std::fs::write(&config, text)
                .map_err(HarnessError::io(format!("writing {name}.conf")))?;
            nodes.push(Node {
                name,
                port: client_ports[i],
                monitor_port: monitor_ports[i],
                config,
                process: None,
                starts: 0,
            });
        }
        let mut cluster = Self {
            host: host.to_owned(),
            nodes,
            binary,
            dir,
            http: workpool_local_cluster::http::client(),
        };
        cluster.start_all_again().await?;
        Ok(cluster)
    }

    /// Stops every node and keeps their stores and logs (not removed on drop); returns
    /// their directory.
    pub fn keep_stores(mut self) -> PathBuf {
        (0..NODES).for_each(|i| self.kill(i));
        let Self { dir, .. } = self;
        dir.keep()
    }

    /// The client URLs of every node, comma-separated: what `NATS_URL` takes for a
    /// cluster (core/src/config.rs splits it), so a process can connect while any one
    /// node is down.
    pub fn urls(&self) -> String {
        (0..NODES)
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .map(|node| format!("nats://{}:{}", self.host, node.port))
            .unwrap_or_default()
    }

    /// The monitoring endpoint of node `i` (`/varz`, `/jsz`, ...).
    pub fn monitor_url(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .map(|node| format!("http://127.0.0.1:{}", node.monitor_port))
            .unwrap_or_default()
    }

    /// The server name of node `i` (`n0`, `n1`, `n2`), as JetStream reports leaders.
    pub fn name(&self, i: usize) -> &str {
        self.nodes.get(i).map_or("", |node| node.name.as_str())
    }

    /// The stores, configs and logs of every node.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether node `i` runs (it may be paused).
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|node| node.process.is_some())
    }

    fn node(&self, i: usize) -> Result<&Node> {
        self.nodes
            .get(i)
            .ok_or_else(|| HarnessError::Other(format!("no NATS node {i}")))
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let binary = self.binary.clone();
        let dir = self.dir.path().to_owned();
        let node = self
            .nodes
            .get_mut(i)
            .ok_or_else(|| HarnessError::Other(format!("no NATS node {i}")))?;
        node.starts += 1;
        let log = dir.join(format!("{}.{}.log", node.name, node.starts));
        let process = Process::spawn(
            &format!("nats-server-{}", node.name),
            &binary,
            &["-c".into(), node.config.display().to_string()],
            &[],
            log,
        )?;
        node.process = Some(process);
        Ok(())
    }

    /// Waits until node `i`'s full health check passes: JetStream is current with the
    /// meta leader and with every stream and consumer it holds, so a restarted node has
    /// caught up before the next fault.
    async fn wait_healthy(&self, i: usize) -> Result<()> {
        let node = self.node(i)?;
        let health = format!("http://127.0.0.1:{}/healthz", node.monitor_port);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.http.get(&health).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => last = response.text().await.unwrap_or_default(),
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(HarnessError::Timeout(format!(
            "NATS node {} (port {}) to become healthy; last answer: {last}",
            node.name, node.port
        )))
    }

    /// Waits until every running node names the same JetStream meta leader.
    async fn wait_meta_leader(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.process.is_none() {
                    continue;
                }
                let jsz = format!("{}/jsz", self.monitor_url(i));
                let leader = match self.http.get(&jsz).send().await {
                    Ok(response) => response
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    Err(_) => String::new(),
                };
                leaders.push(leader);
            }
            if leaders.first().is_some_and(|first| !first.is_empty())
                && leaders.windows(2).all(|pair| pair[0] == pair[1])
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(HarnessError::Timeout(
            "the NATS cluster to elect a JetStream meta leader".into(),
        ))
    }

    /// Kills node `i` at once (SIGKILL): what it had not written to its store is gone,
    /// and its streams elect a new leader among the other two.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes.get_mut(i).and_then(|node| node.process.take()) {
            process.kill();
        }
    }

    /// Stops node `i` gracefully (as a rolling upgrade would).
    pub async fn stop(&mut self, i: usize) -> Result<()> {
        if let Some(mut process) = self.nodes.get_mut(i).and_then(|node| node.process.take()) {
            process.terminate();
            process.wait_exit(Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// (Re)starts node `i` on its ports and store; waits until it has caught up.
    pub async fn start_again(&mut self, i: usize) -> Result<()> {
        if !self.is_up(i) {
            self.spawn(i)?;
        }
        self.wait_healthy(i).await?;
        self.wait_meta_leader().await
    }

    /// Starts every node that is down, then waits until all are healthy: all first,
    /// since no node becomes healthy before it has found a quorum.
    pub async fn start_all_again(&mut self) -> Result<()> {
        for i in 0..NODES {
            if !self.is_up(i) {
                self.spawn(i)?;
            }
        }
        for i in 0..NODES {
            self.wait_healthy(i).await?;
        }
        self.wait_meta_leader().await
    }

    /// Freezes node `i` (SIGSTOP) until [`NatsCluster::resume`].
    pub fn pause(&self, i: usize) {
        if let Some(process) = self.nodes.get(i).and_then(|node| node.process.as_ref()) {
            process.pause();
        }
    }

    pub fn resume(&self, i: usize) {
        if let Some(process) = self.nodes.get(i).and_then(|node| node.process.as_ref()) {
            process.resume();
        }
    }

    /// A client that knows every node, for the test's own checks.
    pub async fn client(&self) -> Result<async_nats::Client> {
        let urls = (0..NODES).map(|i| self.url(i)).collect::<Vec<_>>();
        async_nats::connect(urls.as_slice())
            .await
            .map_err(HarnessError::context(format!(
                "connecting to {}",
                self.urls()
            )))
    }

    /// The index of the node that leads `stream` now. Waits out an election (after a
    /// leader was lost, the stream has none for a few seconds).
    pub async fn stream_leader(&self, stream: &str) -> Result<usize> {
        let js = async_nats::jetstream::new(self.client().await?);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match js.get_stream(stream).await {
                Ok(mut handle) => match handle.info().await {
                    Ok(info) => {
                        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
                        if let Some(i) = leader
                            .as_deref()
                            .and_then(|name| self.nodes.iter().position(|n| n.name == name))
                        {
                            return Ok(i);
                        }
                        last = format!("leader {leader:?}");
                    }
                    Err(err) => last = err.to_string(),
                },
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(HarnessError::Timeout(format!(
            "a leader of stream {stream}; last: {last}"
        )))
    }

    /// The logs of every node, each start's in turn, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .flat_map(|node| (1..=node.starts).map(move |start| (node, start)))
            .map(|(node, start)| {
                let log = self.dir.path().join(format!("{}.{start}.log", node.name));
                format!(
                    "--- nats {} (start {start}) ---\n{}",
                    node.name,
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl PoolNats for NatsCluster {
    fn url(&self) -> String {
        self.urls()
    }

    fn client(&self) -> impl Future<Output = Result<async_nats::Client>> + Send {
        NatsCluster::client(self)
    }
}

/// One server or a 3-node cluster, chosen at run time (the chaos checker's `Config`).
/// The whole-server operations act on every node of a cluster.
#[derive(Debug)]
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl PoolNats for Nats {
    fn url(&self) -> String {
        match self {
            Nats::Single(server) => server.url(),
            Nats::Cluster(cluster) => cluster.urls(),
        }
    }

    async fn client(&self) -> Result<async_nats::Client> {
        match self {
            Nats::Single(server) => server.client().await,
            Nats::Cluster(cluster) => cluster.client().await,
        }
    }
}

impl Nats {
    pub fn kill(&mut self) {
        match self {
            Nats::Single(server) => server.kill(),
            Nats::Cluster(cluster) => (0..NODES).for_each(|i| cluster.kill(i)),
        }
    }

    pub async fn stop(&mut self) -> Result<()> {
        match self {
            Nats::Single(server) => server.stop().await,
            Nats::Cluster(cluster) => {
                for i in 0..NODES {
                    cluster.stop(i).await?;
                }
                Ok(())
            }
        }
    }

    pub async fn start_again(&mut self) -> Result<()> {
        match self {
            Nats::Single(server) => server.start_again().await,
            Nats::Cluster(cluster) => cluster.start_all_again().await,
        }
    }

    pub fn pause(&self) {
        match self {
            Nats::Single(server) => server.pause(),
            Nats::Cluster(cluster) => (0..NODES).for_each(|i| cluster.pause(i)),
        }
    }

    pub fn resume(&self) {
        match self {
            Nats::Single(server) => server.resume(),
            Nats::Cluster(cluster) => {
                (0..NODES).for_each(|i| cluster.resume(i));
            }
        }
    }

    pub fn cluster(&self) -> Option<&NatsCluster> {
        match self {
            Nats::Single(_) => None,
            Nats::Cluster(cluster) => Some(cluster),
        }
    }

    pub fn cluster_mut(&mut self) -> Option<&mut NatsCluster> {
        match self {
            Nats::Single(_) => None,
            Nats::Cluster(cluster) => Some(cluster),
        }
    }
}
