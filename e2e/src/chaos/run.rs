//! One seeded run: start a pool, drive the workload while faults hit it, drain, then
//! judge the history and the ledger.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinSet;
use workpool_core::PoolSpec;

use super::check::{Report, check};
use super::client::{Apis, Client};
use super::faults::{ALL, CLUSTER, Fault, Injector, PODS, Target};
use super::history::{Final, History, Intent, Submission, Terminal};
use super::ledger::{LedgerServer, executions};
use super::pods::PodPool;
use crate::nats_cluster::{Nats, NatsCluster};
use crate::pool::{PoolNats, TestPool};
use workpool_local_cluster::nats::NatsServer;
use workpool_local_cluster::paths;
use workpool_local_cluster::supervisor::LocalCluster;

use crate::{HarnessError, Result};

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub jobs: usize,
    pub keys: usize,
    pub per_second: u32,
    pub workers: usize,
    pub apis: usize,
    /// Mean pause between faults.
    pub fault_every: Duration,
    pub ack_wait: Duration,
    pub result_ttl: Duration,
    /// Resubmissions of worked content after its record expired.
    pub after_expiry_probes: usize,
    /// Run on a 3-node NATS cluster with `nats.replicas: 3`, and kill the work stream's
    /// leader among the faults.
    pub nats_cluster: bool,
    /// Run on the local cluster's pods (operator, api and workers), with the faults that
    /// need pods and a control plane; otherwise on api and worker processes alone.
    pub pods: bool,
}

/// The seed in `CHAOS_SEED` (to replay a run), or `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(default)
}

impl Config {
    /// The short run of `make test`.
    pub fn short(seed: u64) -> Self {
        Self {
            seed,
            jobs: 800,
            keys: 20,
            per_second: 40,
            workers: 3,
            apis: 2,
            fault_every: Duration::from_millis(1500),
            ack_wait: Duration::from_secs(2),
            result_ttl: Duration::from_secs(8),
            after_expiry_probes: 4,
            nats_cluster: false,
            pods: true,
        }
    }

    /// The same run on api and worker processes the test starts itself, with no
    /// Kubernetes: only the process and NATS faults.
    pub fn on_processes(self) -> Self {
        Self {
            pods: false,
            ..self
        }
    }

    /// The same run on a 3-node NATS cluster. Records live at least 30 s there: a watch
    /// whose consumer was on a killed node sees nothing for 10 s (async-nats notices a lost
    /// ordered consumer after two missed 5 s heartbeats) plus the election, and a terminal
    /// record that expired meanwhile would be counted as lost work.
    pub fn on_nats_cluster(self) -> Self {
        Self {
            nats_cluster: true,
            result_ttl: self.result_ttl.max(Duration::from_secs(30)),
            ..self
        }
    }
}

type Shared<T> = Arc<Mutex<Vec<T>>>;

/// Keyed partitions of the checker's pool.
const PARTITIONS: u32 = 8;

fn push<T>(list: &Shared<T>, item: T) {
    list.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(item);
}

/// The pool's spec as JSON (a WorkPool's `spec`, or a test pool's); its handler sends
/// to the ledger at `ledger` (`host:port`).
fn spec(config: &Config, ledger: &str) -> serde_json::Value {
    // Pods run it from the test image, where it is on the PATH.
    let program = match config.pods {
        true => "workpool-ledger".to_owned(),
        false => paths::workspace_binary("workpool-ledger").map_or_else(
            |_| "workpool-ledger".to_owned(),
            |p| p.display().to_string(),
        ),
    };
    json!({
        "resultTTL": format!("{}ms", config.result_ttl.as_millis()),
        "worker": {
            "concurrency": 4,
            "partitions": PARTITIONS,
            "ackWait": format!("{}ms", config.ack_wait.as_millis()),
            "timeout": "10s",
            "maxAttempts": 20,
            "backoff": ["100ms", "500ms"],
            "handler": {"exec": {"command": [program, ledger]}},
        },
        // Grouped work is put aside and queued again while its group is full: the
        // checker holds that path to the same invariants.
        "groups": {"concurrency": 2, "rate": {"jobs": 40, "per": "1s"}},
    })
}

/// Starts what the run acts on (the local cluster's pods, or processes on one NATS
/// server or a 3-node cluster) and the ledger its handlers reach.
async fn start(config: &Config) -> Result<(Target, LedgerServer)> {
    if config.pods {
        let cluster = LocalCluster::start().await?;
        let ledger = LedgerServer::start(&cluster.host).await?;
        let apis = i32::try_from(config.apis).unwrap_or(2);
        let workers = i32::try_from(config.workers).unwrap_or(3);
        let spec = spec(config, &ledger.address);
        let pool = PodPool::start(cluster, spec, apis, workers, config.nats_cluster).await?;
        return Ok((Target::Pods(Box::new(pool)), ledger));
    }
    let ledger = LedgerServer::start("127.0.0.1").await?;
    let mut spec = spec(config, &ledger.address);
    let nats = if config.nats_cluster {
        spec["nats"] = json!({"replicas": 3});
        Nats::Cluster(NatsCluster::start().await?)
    } else {
        Nats::Single(NatsServer::start().await?)
    };
    let spec = PoolSpec::from_json(&spec.to_string())
        .map_err(HarnessError::context("the chaos pool's spec"))?;
    let pool = TestPool::start_on(nats, spec, config.apis, config.workers).await?;
    Ok((Target::Processes(Box::new(pool)), ledger))
}

/// Runs the whole thing; the report says how many times each invariant broke.
pub async fn run(config: &Config) -> Result<(Report, History)> {
    let (mut target, ledger) = start(config).await?;
    let kinds: &[Fault] = match &target {
        Target::Pods(_) => &PODS,
        Target::Processes(_) if config.nats_cluster => &CLUSTER,
        Target::Processes(_) => &ALL,
    };
    let apis: Apis = Arc::new(RwLock::new(api_urls(&target)));
    let terminals: Shared<Terminal> = Arc::default();
    let (nats, names) = match &target {
        Target::Pods(pods) => (pods.nats_access(), pods.names.clone()),
        Target::Processes(pool) => (
            NatsAccess {
                url: pool.nats.url(),
                creds: None,
            },
            pool.names.clone(),
        ),
    };
    let watcher = tokio::spawn(watch_terminals(
        nats.clone(),
        names.bucket(),
        terminals.clone(),
    ));
    let client = Client::new(apis.clone());
    let history = Arc::new(Mutex::new(History::default()));
    let workload = tokio::spawn(workload(config.clone(), client.clone(), history.clone()));

    let mut rng = fastrand::Rng::with_seed(config.seed ^ 0xfa17);
    let mut injector = Injector::new(config.ack_wait, 1, config.workers + 2);
    let mut faults = Vec::new();
    let mut round = Vec::new();
    while !workload.is_finished() {
        let pause = config.fault_every.mul_f64(0.5 + rng.f64());
        tokio::time::sleep(pause).await;
        if workload.is_finished() {
            break;
        }
        // Rounds of every fault kind in a seeded order: a short run still has each.
        if round.is_empty() {
            round = kinds.to_vec();
            rng.shuffle(&mut round);
            if config.nats_cluster {
                // Each round on a cluster opens with a leader kill (the fault a replicated
                // stream is there to survive), so even a short run has one.
                round.push(Fault::KillStreamLeader);
            }
        }
        let fault = round.pop().unwrap_or(ALL[0]);
        let at = chrono::Utc::now().format("%H:%M:%S%.3f");
        // A fault that could not be applied (the apiserver slow to answer, say) is
        // recorded, not fatal: the run and its history go on.
        let done = match injector.apply(&mut target, fault, &mut rng).await {
            Ok(done) => format!("{at} {done}"),
            Err(err) => format!("{at} {fault:?} could not be applied: {err}"),
        };
        tracing::info!(%done, "fault");
        faults.push(done);
        *apis.write().unwrap_or_else(PoisonError::into_inner) = api_urls(&target);
    }
    workload.await.map_err(HarnessError::context("workload"))?;
    let mut history = Arc::try_unwrap(history)
        .map_err(|_| HarnessError::Other("workload still running".into()))?
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    drain(&history, &terminals, config.result_ttl, || {
        workers_ready(&target)
    })
    .await;
    history.finals = finals(&client, &history).await;
    let open = open_ids(&history, &terminals);
    if !open.is_empty() {
        let (queued, state) = still_queued(&nats, &names, &open, PARTITIONS).await;
        for last in &mut history.finals {
            last.queued = queued.contains(&last.id);
        }
        history.queue_at_end = state;
    }
    watcher.abort();
    history.terminals = terminals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    history.faults = faults;
    let mut platform_broken = injector.platform_broken;
    if let Target::Pods(pods) = &mut target {
        platform_broken.extend(pods.stop_checks_done().await);
    }
    history.platform_broken = platform_broken;
    // Stopped before the ledger is read, so runs the stop killed are `gone` in it; the
    // state is kept until the verdict, and only a failed run keeps it.
    let kept = match target {
        Target::Pods(pods) => pods.stop_keeping_state()?,
        Target::Processes(pool) => vec![keep_process_logs(&pool)?],
    };
    let ledger_text = ledger.text();
    let report = check(&history, &executions(&ledger_text));
    if let Some(dir) = kept.first().filter(|_| report.violations() > 0) {
        // The executions behind the evidence, line by line.
        let _ = std::fs::write(dir.join("ledger.txt"), &ledger_text);
    }
    for dir in kept {
        if report.violations() == 0 {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("kept for study: {}", dir.display());
        }
    }
    Ok((report, history))
}

/// The api and worker processes' logs, in a directory of their own (removed again unless
/// the run failed).
fn keep_process_logs(pool: &TestPool<Nats>) -> Result<std::path::PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix("workpool-chaos-processes-")
        .tempdir()
        .map_err(HarnessError::io("a directory for the processes' logs"))?
        .keep();
    std::fs::write(dir.join("processes.log"), pool.logs())
        .map_err(HarnessError::io("writing the processes' logs"))?;
    Ok(dir)
}

/// Where the checker reads the pool's NATS objects, and as whom.
#[derive(Debug, Clone)]
pub struct NatsAccess {
    /// One server, or every node of a cluster, comma-separated.
    pub url: String,
    /// A user with every right, where the server runs with auth on.
    pub creds: Option<std::path::PathBuf>,
}

impl NatsAccess {
    async fn connect(&self) -> Option<async_nats::Client> {
        let servers: Vec<&str> = self.url.split(',').collect();
        let options = match &self.creds {
            Some(file) => async_nats::ConnectOptions::with_credentials_file(file)
                .await
                .ok()?,
            None => async_nats::ConnectOptions::new(),
        };
        options.connect(servers.as_slice()).await.ok()
    }
}

fn api_urls(target: &Target) -> Vec<String> {
    match target {
        // One balancer in front of every api pod, as users of the local cluster reach it.
        Target::Pods(pods) => vec![pods.api_url.clone()],
        Target::Processes(pool) => (0..pool.apis.len()).map(|i| pool.api_url(i)).collect(),
    }
}

/// Every terminal record written during the run, from a watch of the whole bucket that
/// starts again (with the current values) after each NATS fault.
async fn watch_terminals(nats: NatsAccess, bucket: String, terminals: Shared<Terminal>) {
    loop {
        let watched = async {
            let client = nats.connect().await?;
            let kv = async_nats::jetstream::new(client)
                .get_key_value(&bucket)
                .await
                .ok()?;
            let mut watch = kv.watch_with_history(">").await.ok()?;
            while let Some(Ok(entry)) = watch.next().await {
                let Ok(record) = serde_json::from_slice::<serde_json::Value>(&entry.value) else {
                    continue;
                };
                let status = record["status"].as_str().unwrap_or_default();
                if matches!(status, "worked" | "failed" | "cancelled") {
                    push(
                        &terminals,
                        Terminal {
                            id: entry.key.clone(),
                            created_at: record["created_at"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            status: status.to_owned(),
                            updated_at: record["updated_at"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            worker: record["worker"].as_str().map(str::to_owned),
                            revision: entry.revision,
                        },
                    );
                }
            }
            Some(())
        };
        watched.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The submissions, resubmissions, cancels and expiry probes, at the configured rate.
async fn workload(config: Config, client: Client, history: Arc<Mutex<History>>) {
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let mut tasks = JoinSet::new();
    let gap = Duration::from_secs(1) / config.per_second.max(1);
    for probe in 0..config.after_expiry_probes {
        let (client, history) = (client.clone(), history.clone());
        let ttl = config.result_ttl;
        tasks.spawn(after_expiry_probe(client, history, probe, config.seed, ttl));
    }
    for n in 0..config.jobs {
        tokio::time::sleep(gap).await;
        let roll = rng.u32(..100);
        let (client, history) = (client.clone(), history.clone());
        let key = (roll < 60).then(|| format!("k{}", rng.usize(..config.keys.max(1))));
        let ms = if roll.is_multiple_of(17) {
            1500
        } else {
            rng.u64(5..60)
        };
        let mut body = json!({"data": {"n": n, "seed": config.seed, "ms": ms}, "key": key});
        if key.is_none() {
            // Unkeyed work: some of it prioritised, some of it in one of a few groups.
            let priority = match roll % 10 {
                0 | 1 => Some("high"),
                2 => Some("low"),
                _ => None,
            };
            body["priority"] = json!(priority);
            if roll.is_multiple_of(3) {
                body["group"] = json!(format!("g{}", roll % 4));
            }
        }
        let idempotency = roll
            .is_multiple_of(13)
            .then(|| format!("idem-{}-{n}", config.seed));
        let cancel_after = roll
            .is_multiple_of(23)
            .then(|| Duration::from_millis(rng.u64(0..800)));
        let resubmit = roll.is_multiple_of(11);
        tasks.spawn(async move {
            let first = client
                .submit(&body, idempotency.as_deref(), Intent::Fresh)
                .await;
            let id = first.id.clone();
            let accepted = first.accepted();
            record(&history, first);
            if resubmit && accepted {
                // The same content (or key, with other data) while the record lives.
                let again = match &idempotency {
                    Some(_) => json!({"data": {"other": n}}),
                    None => body.clone(),
                };
                let answer = client
                    .submit(&again, idempotency.as_deref(), Intent::WhileLive)
                    .await;
                record(&history, answer);
            }
            if let (Some(after), true) = (cancel_after, accepted) {
                tokio::time::sleep(after).await;
                let cancel = client.cancel(&id).await;
                history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .cancels
                    .push(cancel);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn record(history: &Arc<Mutex<History>>, submission: Submission) {
    history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .submissions
        .push(submission);
}

/// Submits content, waits for it to be worked and forgotten, and submits it again.
async fn after_expiry_probe(
    client: Client,
    history: Arc<Mutex<History>>,
    probe: usize,
    seed: u64,
    ttl: Duration,
) {
    let body = json!({"data": {"probe": probe, "seed": seed, "ms": 20}});
    let first = client.submit(&body, None, Intent::Fresh).await;
    let id = first.id.clone();
    let accepted = first.accepted();
    record(&history, first);
    if !accepted {
        return;
    }
    let deadline = tokio::time::Instant::now() + ttl * 4 + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if client.get(&id).await.is_none() {
            let again = client.submit(&body, None, Intent::AfterExpiry).await;
            record(&history, again);
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the pool has a worker that could make progress: on the local cluster, a
/// ready worker pod. After a run of apiserver restarts the ReplicaSet controller and the
/// scheduler can take minutes to replace deleted pods (their watches back off up to
/// 30 s, jittered, after each restart); the pool is not to blame for that wait.
async fn workers_ready(target: &Target) -> bool {
    match target {
        Target::Pods(pods) => pods.a_worker_is_ready().await,
        Target::Processes(_) => true,
    }
}

/// Waits until every accepted id has a terminal record. A slow machine drains slowly,
/// so the wait lasts as long as work keeps finishing: it ends once nothing has finished
/// for a minute while a worker was ready (or after a quarter of an hour).
async fn drain<F, Fut>(history: &History, terminals: &Shared<Terminal>, ttl: Duration, ready: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + Duration::from_secs(900);
    let mut last_progress = tokio::time::Instant::now();
    let mut last_open = usize::MAX;
    loop {
        let open = open_ids(history, terminals).len();
        // While no worker is ready, the minute without progress does not run.
        let platform_down = open > 0 && !ready().await;
        if open < last_open || platform_down {
            last_open = last_open.min(open);
            last_progress = tokio::time::Instant::now();
        }
        let now = tokio::time::Instant::now();
        if open == 0 || now > give_up || now - last_progress > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the last writes reach the watcher, but read the finals before they expire.
    tokio::time::sleep(ttl.min(Duration::from_secs(1))).await;
}

/// Accepted submissions with no terminal record seen yet.
fn open_ids(history: &History, terminals: &Shared<Terminal>) -> Vec<(String, Option<String>)> {
    let ended: std::collections::HashSet<String> = terminals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|t| t.id.clone())
        .collect();
    history
        .submissions
        .iter()
        .filter(|s| s.accepted() && !ended.contains(&s.id))
        .map(|s| (s.id.clone(), s.key.clone()))
        .collect()
}

/// Of the open ids, those whose message is still in the work stream (queued, not lost),
/// and how each keyed consumer stands: evidence for a run that did not drain.
async fn still_queued(
    nats: &NatsAccess,
    names: &workpool_core::PoolNames,
    open: &[(String, Option<String>)],
    partitions: u32,
) -> (std::collections::HashSet<String>, Vec<String>) {
    let mut queued = std::collections::HashSet::new();
    let mut state = Vec::new();
    let Some(client) = nats.connect().await else {
        return (queued, vec!["NATS unreachable at the end".into()]);
    };
    let js = async_nats::jetstream::new(client);
    let Ok(mut stream) = js.get_stream(names.stream()).await else {
        return (queued, vec!["work stream unreadable at the end".into()]);
    };
    for (id, _key) in open {
        let Ok(work_id) = id.parse::<workpool_core::WorkId>() else {
            continue;
        };
        let subject = names.any_work_subject(&work_id);
        if stream.direct_get_last_for_subject(subject).await.is_ok() {
            queued.insert(id.clone());
        }
    }
    if let Ok(info) = stream.info().await {
        state.push(format!("stream holds {} messages", info.state.messages));
    }
    for partition in 0..partitions {
        let name = workpool_core::PoolNames::keyed_consumer(partition);
        if let Ok(mut consumer) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
            .await
            && let Ok(info) = consumer.info().await
        {
            state.push(format!(
                "{name}: pending {} ack-pending {} redelivered {} waiting {}",
                info.num_pending, info.num_ack_pending, info.num_redelivered, info.num_waiting
            ));
        }
    }
    (queued, state)
}

async fn finals(client: &Client, history: &History) -> Vec<Final> {
    let mut ids: Vec<&str> = history
        .submissions
        .iter()
        .filter(|s| s.accepted())
        .map(|s| s.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut finals = Vec::new();
    for id in ids {
        let record = client.get(id).await;
        finals.push(Final {
            queued: false,
            id: id.to_owned(),
            status: record
                .as_ref()
                .and_then(|r| r["status"].as_str())
                .map(str::to_owned),
            created_at: record
                .as_ref()
                .and_then(|r| r["created_at"].as_str())
                .map(str::to_owned),
        });
    }
    finals
}

/// Writes the run's report and faults to `artifacts/chaos-<target>-<seed>.json` and its
/// whole history beside it (`-history.json`), to study a failed run; returns the report.
pub fn save(config: &Config, report: &Report, history: &History) -> String {
    let summary = json!({
        "seed": config.seed,
        "nats_cluster": config.nats_cluster,
        "pods": config.pods,
        "report": report,
        "faults": history.faults,
    });
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    let _ = std::fs::create_dir_all("artifacts");
    let target = match (config.pods, config.nats_cluster) {
        (true, true) => "pods-nats-cluster",
        (true, false) => "pods",
        (false, true) => "processes-nats-cluster",
        (false, false) => "processes",
    };
    let name = format!("artifacts/chaos-{target}-{}.json", config.seed);
    let _ = std::fs::write(&name, &text);
    if let Ok(history) = serde_json::to_string(history) {
        let _ = std::fs::write(name.replace(".json", "-history.json"), history);
    }
    text
}
