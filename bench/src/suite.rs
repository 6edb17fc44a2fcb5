//! One run of the suite on a fresh nats-server and pool: the raw baselines, then the
//! api alone (healthz and ingest rates, which also queue the backlog), the backlog
//! drained by a worker started afterwards, end to end at saturation and at half of it,
//! and the processes' memory before and after.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use workpool_core::PoolSpec;

use workpool_e2e::pool::{PoolNats, TestPool};
use workpool_e2e::{HarnessError as Error, Result};

use crate::load::{self, MakeRequest, OpenLoop, Until, percentile};
use crate::raw::{self, RawSizes, millis};
use crate::report::Figures;

pub const HEALTHZ: &str = "api_healthz_per_s";
pub const INGEST: &str = "api_ingest_per_s";
pub const DRAIN: &str = "backlog_drain_per_s";
pub const E2E: &str = "e2e_single_per_s";
pub const E2E_BULK: &str = "e2e_bulk_per_s";
pub const E2E_WORKED_P50_MS: &str = "e2e_worked_p50_ms";
pub const E2E_WORKED_P99_MS: &str = "e2e_worked_p99_ms";
pub const HALF_POST_P50_MS: &str = "half_post_p50_ms";
pub const HALF_POST_P99_MS: &str = "half_post_p99_ms";
pub const HALF_POST_P999_MS: &str = "half_post_p999_ms";
pub const HALF_WORKED_P50_MS: &str = "half_worked_p50_ms";
pub const HALF_WORKED_P99_MS: &str = "half_worked_p99_ms";
pub const API_IDLE_MIB: &str = "api_idle_mib";
pub const WORKER_IDLE_MIB: &str = "worker_idle_mib";
pub const API_LOADED_MIB: &str = "api_loaded_mib";
pub const WORKER_LOADED_MIB: &str = "worker_loaded_mib";

/// How much of everything one run does.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub raw: RawSizes,
    /// How long the healthz rate is measured.
    pub healthz_for: Duration,
    /// Requests a closed loop keeps in flight.
    pub connections: usize,
    /// Jobs POSTed with no worker running (the ingest figure), then drained.
    pub backlog: usize,
    /// Jobs of the saturation run, and their offered rate.
    pub jobs: usize,
    pub rate: f64,
    pub max_in_flight: usize,
    /// Items per `POST /api/v1/work/batch` of the bulk run (of `jobs` items in all).
    pub batch: usize,
    /// How long the run at half the saturation rate offers work.
    pub half_for: Duration,
    /// Jobs in flight per worker.
    pub concurrency: usize,
}

pub fn bench_spec(concurrency: usize) -> Result<PoolSpec> {
    PoolSpec::from_json(&format!(
        r#"{{"queue": {{"maxPending": 1000000}}, "worker": {{"handler": {{"builtin": "echo"}}, "concurrency": {concurrency}}}}}"#
    ))
    .map_err(Error::context("the bench pool's spec"))
}

/// One run on a fresh server and pool; `run` tells its work apart from other runs'.
pub async fn one_run(sizes: Sizes, run: usize) -> Result<Figures> {
    let mut pool = TestPool::start(bench_spec(sizes.concurrency)?, 1, 1).await?;
    let client = pool.nats.client().await?;
    let mut figures = raw::baselines(client.clone(), sizes.raw).await?;
    println!("  raw: {figures:.2?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    figures.insert(API_IDLE_MIB, rss_mib(pool.apis[0].process.pid())?);
    figures.insert(WORKER_IDLE_MIB, rss_mib(pool.workers[0].process.pid())?);
    let mut idle_worker = pool.workers.remove(0);
    idle_worker.process.terminate();
    idle_worker
        .process
        .wait_exit(Duration::from_secs(20))
        .await?;

    let api = pool.api_url(0);
    let healthz = load::closed_loop(
        get(&pool.http, format!("{api}/healthz")),
        sizes.connections,
        Until::Elapsed(sizes.healthz_for),
    )
    .await;
    figures.insert(HEALTHZ, healthz.rate());
    let ingest = load::closed_loop(
        post_work(&pool.http, &api, run, "backlog"),
        sizes.connections,
        Until::Succeeded(sizes.backlog),
    )
    .await;
    figures.insert(INGEST, ingest.rate());
    println!(
        "  healthz {:.0}/s, ingest {:.0}/s ({} failed)",
        healthz.rate(),
        ingest.rate(),
        ingest.failed
    );

    figures.insert(DRAIN, drain(&mut pool, &client).await?);
    let saturation = Load::single("saturation", sizes.rate, sizes.jobs, sizes);
    let saturated = end_to_end(&pool, &client, run, saturation).await?;
    figures.insert(E2E, saturated.rate);
    figures.insert(E2E_WORKED_P50_MS, saturated.worked_p50_ms);
    figures.insert(E2E_WORKED_P99_MS, saturated.worked_p99_ms);
    let half_rate = saturated.rate / 2.0;
    let half_jobs = (half_rate * sizes.half_for.as_secs_f64()).ceil() as usize;
    let half_load = Load::single("half", half_rate, half_jobs.max(1), sizes);
    let half = end_to_end(&pool, &client, run, half_load).await?;
    figures.insert(HALF_POST_P50_MS, half.post_p50_ms);
    figures.insert(HALF_POST_P99_MS, half.post_p99_ms);
    figures.insert(HALF_POST_P999_MS, half.post_p999_ms);
    figures.insert(HALF_WORKED_P50_MS, half.worked_p50_ms);
    figures.insert(HALF_WORKED_P99_MS, half.worked_p99_ms);

    let bulk = end_to_end(&pool, &client, run, Load::bulk(sizes)).await?;
    figures.insert(E2E_BULK, bulk.rate);

    // Idle again: the load generator's connections closed, a moment to settle.
    pool.http = workpool_local_cluster::http::client();
    tokio::time::sleep(Duration::from_secs(2)).await;
    figures.insert(API_LOADED_MIB, rss_mib(pool.apis[0].process.pid())?);
    figures.insert(WORKER_LOADED_MIB, rss_mib(pool.workers[0].process.pid())?);
    Ok(figures)
}

fn get(http: &reqwest::Client, url: String) -> MakeRequest {
    let http = http.clone();
    Arc::new(move |_| http.get(&url))
}

/// POSTs of distinct work (so none is deduplicated), told apart by run and phase.
fn post_work(http: &reqwest::Client, api: &str, run: usize, phase: &'static str) -> MakeRequest {
    let http = http.clone();
    let url = format!("{api}/api/v1/work");
    Arc::new(move |n| {
        http.post(&url)
            .json(&json!({"task": "bench", "data": {"n": n, "run": run, "phase": phase}}))
    })
}

/// Starts a worker on the queued backlog and times it until the stream is empty.
async fn drain<N: PoolNats>(pool: &mut TestPool<N>, client: &async_nats::Client) -> Result<f64> {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js
        .get_stream(pool.names.stream())
        .await
        .map_err(Error::context("getting the work stream"))?;
    let backlog = queued(&mut stream).await?;
    let started = Instant::now();
    pool.add_worker().await?;
    let deadline = started + Duration::from_secs(600);
    while queued(&mut stream).await? > 0 {
        if Instant::now() > deadline {
            return Err(Error::Timeout("the backlog to drain".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = backlog as f64 / started.elapsed().as_secs_f64();
    println!("  drained {backlog} queued jobs at {rate:.0}/s");
    Ok(rate)
}

async fn queued(stream: &mut async_nats::jetstream::stream::Stream) -> Result<u64> {
    stream
        .info()
        .await
        .map(|info| info.state.messages)
        .map_err(Error::context("reading the work stream's state"))
}

/// What one end-to-end run measured; latencies from each POST's scheduled time.
struct EndToEnd {
    rate: f64,
    post_p50_ms: f64,
    post_p99_ms: f64,
    post_p999_ms: f64,
    worked_p50_ms: f64,
    worked_p99_ms: f64,
}

/// An open loop of POSTs: single submissions, or batches of `batch` items.
#[derive(Debug, Clone, Copy)]
struct Load {
    phase: &'static str,
    /// POSTs per second, and POSTs in all.
    rate: f64,
    posts: usize,
    batch: Option<usize>,
    max_in_flight: usize,
}

impl Load {
    fn single(phase: &'static str, rate: f64, jobs: usize, sizes: Sizes) -> Self {
        Load {
            phase,
            rate,
            posts: jobs,
            batch: None,
            max_in_flight: sizes.max_in_flight,
        }
    }

    /// `sizes.jobs` items in batches, offered at the saturation rate in items.
    fn bulk(sizes: Sizes) -> Self {
        let batch = sizes.batch.max(1);
        Load {
            phase: "bulk",
            rate: sizes.rate / batch as f64,
            posts: sizes.jobs.div_ceil(batch),
            batch: Some(batch),
            max_in_flight: (sizes.max_in_flight / batch).max(4),
        }
    }

    fn jobs(&self) -> usize {
        self.posts * self.batch.unwrap_or(1)
    }

    fn requests(&self, http: &reqwest::Client, api: &str, run: usize) -> MakeRequest {
        let Some(batch) = self.batch else {
            return post_work(http, api, run, self.phase);
        };
        let (http, url, phase) = (http.clone(), format!("{api}/api/v1/work/batch"), self.phase);
        Arc::new(move |n| {
            let items: Vec<_> = (n * batch..(n + 1) * batch)
                .map(|i| json!({"task": "bench", "data": {"n": i, "run": run, "phase": phase}}))
                .collect();
            http.post(&url).json(&items)
        })
    }
}

/// The load's POSTs, each item timed until its answer and until its `worked` event.
async fn end_to_end<N: PoolNats>(
    pool: &TestPool<N>,
    client: &async_nats::Client,
    run: usize,
    load: Load,
) -> Result<EndToEnd> {
    let worked = collect_worked(pool, client, load.jobs()).await?;
    let offered = load::open_loop(
        load.requests(&pool.http, &pool.api_url(0), run),
        load.rate,
        load.posts,
        load.max_in_flight,
    )
    .await?;
    let done = worked
        .await
        .map_err(Error::context("the worked-event collector"))?;
    summarize(load.phase, load.rate, load.jobs(), &offered, &done)
}

fn summarize(
    phase: &str,
    rate: f64,
    jobs: usize,
    offered: &OpenLoop,
    done: &HashMap<String, Instant>,
) -> Result<EndToEnd> {
    let accepted: Vec<(&str, Instant, Duration)> = offered
        .answers
        .iter()
        .flat_map(|a| {
            a.ids
                .iter()
                .map(move |id| (id.as_str(), a.scheduled, a.latency()))
        })
        .collect();
    let mut post: Vec<Duration> = accepted.iter().map(|(_, _, latency)| *latency).collect();
    post.sort();
    let mut worked: Vec<Duration> = accepted
        .iter()
        .filter_map(|(id, scheduled, _)| done.get(*id).map(|end| end.duration_since(*scheduled)))
        .collect();
    worked.sort();
    let last = done.values().max().copied().unwrap_or(offered.started);
    let completed = worked.len();
    println!(
        "  {phase}: {completed} of {jobs} jobs ({} POSTs at {rate:.0}/s) worked in {:.2}s ({} late, {} not accepted)",
        offered.answers.len(),
        last.duration_since(offered.started).as_secs_f64(),
        offered.late,
        jobs - accepted.len()
    );
    if completed < jobs {
        return Err(Error::Other(format!(
            "{phase}: only {completed} of {jobs} jobs were accepted and worked"
        )));
    }
    Ok(EndToEnd {
        rate: completed as f64 / last.duration_since(offered.started).as_secs_f64(),
        post_p50_ms: millis(percentile(&post, 0.5)),
        post_p99_ms: millis(percentile(&post, 0.99)),
        post_p999_ms: millis(percentile(&post, 0.999)),
        worked_p50_ms: millis(percentile(&worked, 0.5)),
        worked_p99_ms: millis(percentile(&worked, 0.99)),
    })
}

/// Collects when each id's `worked` event arrives, until `expected` or 30 s of silence.
async fn collect_worked<N: PoolNats>(
    pool: &TestPool<N>,
    client: &async_nats::Client,
    expected: usize,
) -> Result<tokio::task::JoinHandle<HashMap<String, Instant>>> {
    let mut events = client
        .subscribe(pool.names.event_filter("work", "worked"))
        .await
        .map_err(Error::context("subscribing to worked events"))?;
    client
        .flush()
        .await
        .map_err(Error::context("flushing the subscription"))?;
    Ok(tokio::spawn(async move {
        let mut done = HashMap::with_capacity(expected);
        while done.len() < expected {
            let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_secs(30), events.next()).await
            else {
                break;
            };
            let event: serde_json::Value =
                serde_json::from_slice(&message.payload).unwrap_or_default();
            if let Some(id) = event["id"].as_str() {
                done.entry(id.to_owned()).or_insert_with(Instant::now);
            }
        }
        done
    }))
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(Error::io(format!("reading /proc/{pid}/status")))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| Error::Other(format!("no VmRSS in /proc/{pid}/status")))
}

/// The cost of a durable server: raw async publish and end to end at saturation on a
/// nats-server that flushes before each ack (`sync_interval: always`).
pub async fn synced(sizes: Sizes, jobs: usize) -> Result<(f64, f64)> {
    let server = workpool_local_cluster::nats::NatsServer::start_synced().await?;
    let pool = TestPool::start_on(server, bench_spec(sizes.concurrency)?, 1, 1).await?;
    let client = pool.nats.client().await?;
    let raw_sizes = RawSizes {
        messages: (jobs / 5).max(1),
        ..sizes.raw
    };
    let js = async_nats::jetstream::new(client.clone());
    let raw = raw::async_publish_rate(&js, raw_sizes.messages, raw_sizes.window).await?;
    let e2e = end_to_end(
        &pool,
        &client,
        0,
        Load::single("synced", sizes.rate, jobs, sizes),
    )
    .await?;
    Ok((raw, e2e.rate))
}
