//! The Workpool worker: pulls work from the pool's JetStream consumers, runs the pool's
//! handler, records results in the KV bucket, and drains cleanly on SIGTERM.

pub mod cluster;
mod delayed;
mod groups;
pub mod guard;
pub mod handlers;
mod hold;
pub use workpool_runtime::http_client;
pub mod metrics;
pub mod process;
pub mod progress;
pub mod progress_endpoint;
mod pull;
pub mod records;
mod spans;
mod unkeyed;
mod webhooks;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use workpool_core::PoolNames;
use workpool_core::names::{DELAYED_CONSUMER, WEBHOOK_CONSUMER};
use workpool_core::priority::Priority;
use workpool_runtime::admin::Admin;
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
    #[arg(long, env = "WORKPOOL_DRAIN_TIMEOUT", default_value = "25s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// The pool's headless worker Service: its ready endpoints are the members keyed
    /// partitions are spread over. Without it (outside Kubernetes) this worker counts
    /// only itself and pulls every partition.
    #[arg(long, env = "WORKPOOL_WORKERS_SERVICE")]
    pub workers_service: Option<String>,
}

/// The pool's handler; `exec` programs run under the guard when the worker binary is
/// known (it always is, except in odd test setups); an `http` handler gets a loopback
/// endpoint to report progress to.
async fn handler(spec: &workpool_core::PoolSpec) -> Result<Handler, WorkerError> {
    let mut handler = Handler::new(spec)?;
    if handler.is_http() {
        let endpoint = progress_endpoint::ProgressEndpoint::start().await?;
        handler = handler.with_progress_endpoint(endpoint);
    }
    Ok(match std::env::current_exe() {
        Ok(program) => handler.with_exec_guard(guard::ExecGuard {
            program,
            fence: hold::fence(spec.worker.ack_wait),
        }),
        Err(err) => {
            tracing::warn!(%err, "worker binary not found; exec handlers run unguarded");
            handler
        }
    })
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
    #[error("the http handler's client: {0}")]
    HttpClient(#[from] http_client::ClientError),
    #[error("completion webhooks: {0}")]
    Webhooks(#[from] webhooks::WebhookKeyError),
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
    /// Signs and sends completion webhooks, when the pool allows callbacks.
    signer: Option<webhooks::Signer>,
}

/// The consumers a worker pulls from, bound once they exist.
struct Bound {
    records: Records,
    consumers: Consumers,
}

struct Consumers {
    unkeyed: unkeyed::Queues,
    delayed: PullConsumer,
    /// The bucket's writes, when the pool allows completion webhooks.
    webhooks: Option<PullConsumer>,
    partitions: HashMap<u32, PullConsumer>,
}

/// Why the pool's NATS objects cannot be bound (yet): the operator creates them, and
/// the worker may start first.
#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error("results bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: jetstream::context::KeyValueError,
    },
    #[error("stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("consumer {consumer}: {source}")]
    Consumer {
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
}

async fn bind(js: &jetstream::Context, config: &PoolConfig) -> Result<Bound, BindError> {
    let names: &PoolNames = &config.names;
    let bucket = names.bucket();
    let kv = js
        .get_key_value(&bucket)
        .await
        .map_err(|source| BindError::Bucket { bucket, source })?;
    let stream_name = names.stream();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|source| BindError::Stream {
            stream: stream_name,
            source,
        })?;
    let consumer = |name: String| {
        let stream = &stream;
        async move {
            stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                .await
                .map_err(|source| BindError::Consumer {
                    consumer: name,
                    source,
                })
        }
    };
    let mut unkeyed = Vec::new();
    for priority in Priority::ALL {
        let name = PoolNames::unkeyed_consumer(priority).to_owned();
        unkeyed.push((priority, consumer(name).await?));
    }
    let delayed: PullConsumer = consumer(DELAYED_CONSUMER.to_owned()).await?;
    let webhooks = match config.spec.webhooks.enabled() {
        true => Some(webhook_consumer(js, names).await?),
        false => None,
    };
    let mut partitions = HashMap::new();
    for partition in 0..config.spec.worker.partitions {
        let name = PoolNames::keyed_consumer(partition);
        partitions.insert(partition, consumer(name).await?);
    }
    Ok(Bound {
        records: Records::new(
            RecordStore::new(kv, js.clone(), config.spec.result_ttl),
            config.pod.clone(),
            config.spec.worker.ack_wait,
        ),
        consumers: Consumers {
            unkeyed,
            delayed,
            webhooks,
            partitions,
        },
    })
}

async fn webhook_consumer(
    js: &jetstream::Context,
    names: &PoolNames,
) -> Result<PullConsumer, BindError> {
    let name = names.bucket_stream();
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|source| BindError::Stream {
            stream: name,
            source,
        })?;
    stream
        .get_consumer(WEBHOOK_CONSUMER)
        .await
        .map_err(|source| BindError::Consumer {
            consumer: WEBHOOK_CONSUMER.to_owned(),
            source,
        })
}

/// Binds the pool's NATS objects, trying again for as long as it takes; `None` if
/// `stop` comes first.
async fn wait_until_bound(
    js: &jetstream::Context,
    config: &PoolConfig,
    stop: &CancellationToken,
) -> Option<Bound> {
    let mut delays = workpool_runtime::retry::UntilAnswered::new();
    loop {
        match bind(js, config).await {
            Ok(bound) => return Some(bound),
            Err(err) => {
                tracing::warn!(%err, "pool's NATS objects not reachable yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delays.next_delay()) => {}
                    () = stop.cancelled() => return None,
                }
            }
        }
    }
}

/// The pool's members, from the ready endpoints of its headless worker Service; `None`
/// without a Service (outside Kubernetes) or without a Kubernetes API.
async fn members(
    service: Option<&str>,
    namespace: &str,
) -> Option<watch::Receiver<BTreeSet<String>>> {
    let service = service?;
    match kube::Client::try_default().await {
        Ok(kube) => Some(workpool_runtime::membership::watch_service(
            kube, namespace, service,
        )),
        Err(err) => {
            tracing::warn!(%err, "no Kubernetes API: counting only this worker as a member");
            None
        }
    }
}

/// A token cancelled once `shutdown` completes.
fn cancelled_on(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_signal.cancel();
    });
    stop
}

/// Runs a worker until `shutdown` completes, then drains.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let Args {
        pool,
        listen,
        drain_timeout,
        workers_service,
    } = args;
    let config = pool.load()?;
    let signer = match config.spec.webhooks.enabled() {
        true => Some(webhooks::Signer::from_env()?),
        false => None,
    };
    let client = workpool_runtime::config::connect_nats(&config, "workpool-worker").await?;
    let js = jetstream::new(client.clone());
    let metrics = WorkerMetrics::new(&config.names.namespace, &config.names.pool)?;
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Admin::new(metrics.registry().clone(), {
        let (ready, client) = (ready.clone(), client.clone());
        move || {
            ready.load(Ordering::Relaxed)
                && client.connection_state() == async_nats::connection::State::Connected
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(admin.serve(listener, http_stop.clone().cancelled_owned()));

    let stop = cancelled_on(shutdown);
    if let Some(bound) = wait_until_bound(&js, &config, &stop).await {
        let members = members(workers_service.as_deref(), &config.names.namespace).await;
        let worker = Arc::new(Worker {
            running: cluster::Running::default(),
            membership: cluster::Membership::new(config.pod.clone(), members),
            handler: handler(&config.spec).await?,
            signer,
            records: bound.records,
            config,
            client,
            js,
            metrics,
        });
        worker
            .serve(bound.consumers, &ready, stop, drain_timeout)
            .await?;
    }
    ready.store(false, Ordering::Relaxed);
    http_stop.cancel();
    let _ = http.await;
    Ok(())
}

impl Worker {
    /// Answers peers and pulls work, ready, until `stop`; then drains.
    async fn serve(
        self: Arc<Self>,
        consumers: Consumers,
        ready: &Arc<AtomicBool>,
        stop: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), WorkerError> {
        let requests = self.peer_requests().await?;
        ready.store(true, Ordering::Relaxed);
        tracing::info!(pod = %self.config.pod, concurrency = self.config.spec.worker.concurrency, "worker pulling");
        let peers_stop = CancellationToken::new();
        let peers = tokio::spawn(self.clone().answer_peers(
            requests,
            ready.clone(),
            peers_stop.clone(),
        ));
        self.work_until_stopped(consumers, stop, drain_timeout)
            .await;
        peers_stop.cancel();
        let _ = peers.await;
        Ok(())
    }

    async fn work_until_stopped(
        self: Arc<Self>,
        consumers: Consumers,
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
        let Consumers {
            unkeyed,
            delayed,
            webhooks,
            partitions,
        } = consumers;
        loops.spawn(self.clone().unkeyed_loop(unkeyed, limit, lanes.clone()));
        loops.spawn(
            self.clone()
                .pull_owned_partitions(partitions, lanes.clone()),
        );
        // Delayed work only moves to its queue when due; it takes none of the slots.
        loops.spawn(self.clone().delayed_loop(delayed, stop.clone()));
        if let Some(hooks) = webhooks {
            loops.spawn(self.clone().webhook_loop(hooks, stop.clone()));
        }
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
