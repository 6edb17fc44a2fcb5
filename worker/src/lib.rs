//! The Workpool worker: pulls work from the pool's JetStream consumers, runs the pool's
//! handler, records results in the KV bucket, and drains cleanly on SIGTERM.

pub mod cluster;
pub mod guard;
pub mod handlers;
mod hold;
pub mod metrics;
pub mod process;
mod pull;
pub mod records;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use workpool_core::PoolNames;
use workpool_core::names::WORK_CONSUMER;
use workpool_runtime::config::{PoolArgs, PoolConfig};
use workpool_runtime::records::RecordStore;

use crate::handlers::Handler;
use crate::metrics::WorkerMetrics;
use crate::pull::Lanes;
use crate::records::Records;

/// Command-line settings of the worker.
#[derive(Debug, clap::Parser)]
#[command(name = "workpool-worker", about = "Workpool worker")]
pub struct Args {
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Address of the health and metrics endpoint.
    #[arg(long, env = "WORKPOOL_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// After SIGTERM, how long running attempts may take to finish before they are
    /// handed back to the queue (keep it below the pod's termination grace period).
    #[arg(long, env = "WORKPOOL_DRAIN_TIMEOUT", default_value = "25s", value_parser = humantime_duration)]
    pub drain_timeout: Duration,
    /// The pool's headless worker Service: its ready endpoints are the members keyed
    /// partitions are spread over. Without it (outside Kubernetes) this worker counts
    /// only itself and pulls every partition.
    #[arg(long, env = "WORKPOOL_WORKERS_SERVICE")]
    pub workers_service: Option<String>,
}

/// The pool's handler; `exec` programs run under the guard when the worker binary is
/// known (it always is, except in odd test setups).
fn handler(spec: &workpool_core::PoolSpec) -> Handler {
    let handler = Handler::new(spec);
    match std::env::current_exe() {
        Ok(program) => handler.with_exec_guard(guard::ExecGuard {
            program,
            fence: hold::fence(spec.worker.ack_wait),
        }),
        Err(err) => {
            tracing::warn!(%err, "worker binary not found; exec handlers run unguarded");
            handler
        }
    }
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    text.parse::<humantime_serde::re::humantime::Duration>()
        .map(Into::into)
        .map_err(|err| err.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("configuration: {0}")]
    Config(#[from] workpool_runtime::config::ConfigError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("connecting to NATS: {0}")]
    Nats(#[from] workpool_runtime::config::ConnectError),
    #[error("subscribing to peer requests: {0}")]
    PeerSubscribe(#[from] async_nats::SubscribeError),
    #[error("serving health endpoint: {0}")]
    Serve(#[from] std::io::Error),
}

/// Everything one worker process shares across its jobs.
pub struct Worker {
    config: PoolConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    records: Records,
    handler: Handler,
    metrics: WorkerMetrics,
    running: cluster::Running,
    membership: cluster::Membership,
}

/// The consumers a worker pulls from, bound once they exist.
struct Bound {
    records: Records,
    work: PullConsumer,
    partitions: HashMap<u32, PullConsumer>,
}

async fn bind(js: &jetstream::Context, config: &PoolConfig) -> Result<Bound, String> {
    let names: &PoolNames = &config.names;
    let kv = js
        .get_key_value(names.bucket())
        .await
        .map_err(|err| err.to_string())?;
    let stream = js
        .get_stream(names.stream())
        .await
        .map_err(|err| err.to_string())?;
    let work: PullConsumer = stream
        .get_consumer(WORK_CONSUMER)
        .await
        .map_err(|err| format!("consumer {WORK_CONSUMER}: {err}"))?;
    let mut partitions = HashMap::new();
    for partition in 0..config.spec.worker.partitions {
        let name = PoolNames::keyed_consumer(partition);
        let consumer: PullConsumer = stream
            .get_consumer(&name)
            .await
            .map_err(|err| format!("consumer {name}: {err}"))?;
        partitions.insert(partition, consumer);
    }
    Ok(Bound {
        records: Records::new(
            RecordStore::new(kv, js.clone(), config.spec.result_ttl),
            config.pod.clone(),
            config.spec.worker.ack_wait,
        ),
        work,
        partitions,
    })
}

#[derive(Clone)]
struct Health {
    ready: Arc<AtomicBool>,
    client: async_nats::Client,
    /// Set once the worker is bound; its metrics are served from here.
    worker: Arc<std::sync::OnceLock<Arc<Worker>>>,
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let connected = health.client.connection_state() == async_nats::connection::State::Connected;
    if health.ready.load(Ordering::Relaxed) && connected {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    let text = health
        .worker
        .get()
        .map(|worker| worker.metrics.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Runs a worker until `shutdown` completes, then drains.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let config = args.pool.load()?;
    let client = workpool_runtime::config::connect_nats(&config, "workpool-worker").await?;
    let js = jetstream::new(client.clone());
    let health = Health {
        ready: Arc::new(AtomicBool::new(false)),
        client: client.clone(),
        worker: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health.clone());
    let http_stop = CancellationToken::new();
    let http_stopped = http_stop.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_stopped.cancelled().await })
            .await
    });

    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_signal.cancel();
    });

    let mut delay = Duration::from_millis(100);
    let bound = loop {
        match bind(&js, &config).await {
            Ok(bound) => break Some(bound),
            Err(err) => {
                tracing::warn!(%err, "pool's NATS objects not reachable yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => break None,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    if let Some(bound) = bound {
        let metrics = WorkerMetrics::new(&config.names.namespace, &config.names.pool)?;
        let members = match &args.workers_service {
            Some(service) => match kube::Client::try_default().await {
                Ok(kube) => Some(workpool_runtime::membership::watch_service(
                    kube,
                    &config.names.namespace,
                    service,
                )),
                Err(err) => {
                    tracing::warn!(%err, "no Kubernetes API: counting only this worker as a member");
                    None
                }
            },
            None => None,
        };
        let worker = Arc::new(Worker {
            running: cluster::Running::default(),
            membership: cluster::Membership::new(config.pod.clone(), members),
            handler: handler(&config.spec),
            records: bound.records,
            config,
            client,
            js,
            metrics,
        });
        let requests = worker.peer_requests().await?;
        let _ = health.worker.set(worker.clone());
        health.ready.store(true, Ordering::Relaxed);
        tracing::info!(pod = %worker.config.pod, concurrency = worker.config.spec.worker.concurrency, "worker pulling");
        let peers_stop = CancellationToken::new();
        let peers = tokio::spawn(worker.clone().answer_peers(
            requests,
            health.ready.clone(),
            peers_stop.clone(),
        ));
        worker
            .work_until_stopped(bound.work, bound.partitions, stop, args.drain_timeout)
            .await;
        peers_stop.cancel();
        let _ = peers.await;
    }
    health.ready.store(false, Ordering::Relaxed);
    http_stop.cancel();
    let _ = http.await;
    Ok(())
}

impl Worker {
    async fn work_until_stopped(
        self: Arc<Self>,
        work: PullConsumer,
        partitions: HashMap<u32, PullConsumer>,
        stop: CancellationToken,
        drain_timeout: Duration,
    ) {
        let lanes = Lanes {
            tracker: TaskTracker::new(),
            stop: stop.clone(),
            abort: CancellationToken::new(),
        };
        let limit = Arc::new(Semaphore::new(self.config.spec.worker.concurrency));
        let mut loops = tokio::task::JoinSet::new();
        // Unkeyed work shares the pod's concurrency; each keyed partition adds at most
        // one job, since the server allows one in flight per partition.
        loops.spawn(self.clone().pull_loop(
            WORK_CONSUMER.to_owned(),
            work,
            Some(limit),
            lanes.clone(),
        ));
        loops.spawn(
            self.clone()
                .pull_owned_partitions(partitions, lanes.clone()),
        );
        stop.cancelled().await;
        tracing::info!(
            in_flight = self.metrics.in_flight.get(),
            "stopping: no new pulls; finishing running work"
        );
        self.announce_leaving().await;
        while loops.join_next().await.is_some() {}
        lanes.tracker.close();
        if tokio::time::timeout(drain_timeout, lanes.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain_timeout,
                "drain timeout: handing running work back to the queue"
            );
            lanes.abort.cancel();
            lanes.tracker.wait().await;
        }
        // Acks are fire-and-forget publishes: flush them before the connection goes.
        if let Err(err) = self.client.flush().await {
            tracing::warn!(%err, "final flush failed; unacked work will be redelivered");
        }
        tracing::info!("drained");
    }
}
