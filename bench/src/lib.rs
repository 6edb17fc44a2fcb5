//! `make bench`: end-to-end jobs per second (POST to `worked`, builtin echo, small
//! payload, open-loop arrivals) and the raw JetStream async-publish rate, measured in one
//! run against one nats-server, with their ratio; then both again on a server that
//! flushes before each ack (`sync_interval: always`, the chart's setting), for its cost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;
use tokio::sync::Semaphore;
use workpool_core::PoolSpec;

use workpool_e2e::pool::{PoolNats, TestPool};
use workpool_local_cluster::nats::NatsServer;

#[derive(Debug, clap::Parser)]
#[command(
    name = "workpool-bench",
    about = "Workpool's benchmark suite (make bench)"
)]
pub struct BenchArgs {
    /// Jobs submitted end to end.
    #[arg(long, default_value_t = 60_000)]
    pub jobs: usize,
    /// Offered arrival rate in jobs per second (open loop: arrivals do not wait for
    /// completions). The default is above what two cores sustain, so the figure is the
    /// system's capacity; pass a lower rate to see latency at a sustainable load.
    #[arg(long, default_value_t = 40_000)]
    pub rate: u64,
    /// Most POSTs in flight at once (a bound on the load generator, not on the system).
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// Messages for the raw publish measurement.
    #[arg(long, default_value_t = 200_000)]
    pub raw_messages: usize,
    /// Publish acks outstanding at once in the raw measurement.
    #[arg(long, default_value_t = 4096)]
    pub raw_window: usize,
    #[arg(long, default_value_t = 1)]
    pub apis: usize,
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Jobs in flight per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Jobs (and a fifth as many raw messages) for the run on a server with
    /// `sync_interval: always`; 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    pub synced_jobs: usize,
}

/// What one end-to-end run measured.
struct EndToEnd {
    completed: usize,
    rate: f64,
}

/// Publishes `count` 128-byte messages to a file-backed stream as fast as acks come back.
async fn raw_publish_rate(
    client: async_nats::Client,
    count: usize,
    window: usize,
) -> Result<f64, String> {
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|err| format!("creating the raw stream: {err}"))?;
    let payload = bytes::Bytes::from(vec![b'x'; 128]);
    let started = Instant::now();
    let mut acks: FuturesUnordered<
        <async_nats::jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture,
    > = FuturesUnordered::new();
    for _ in 0..count {
        if acks.len() >= window
            && let Some(ack) = acks.next().await
        {
            ack.map_err(|err| err.to_string())?;
        }
        let ack = js
            .publish("bench.raw", payload.clone())
            .await
            .map_err(|err| err.to_string())?;
        acks.push(ack.into_future());
    }
    while let Some(ack) = acks.next().await {
        ack.map_err(|err| err.to_string())?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    js.delete_stream("BENCH_RAW")
        .await
        .map_err(|err| err.to_string())?;
    Ok(rate)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    let spec = PoolSpec::from_json(&format!(
        r#"{{"queue": {{"maxPending": 1000000}}, "worker": {{"handler": {{"builtin": "echo"}}, "concurrency": {}}}}}"#,
        args.concurrency
    ))
    .map_err(|err| err.to_string())?;
    let pool = TestPool::start(spec.clone(), args.apis, args.workers)
        .await
        .map_err(|err| err.to_string())?;
    let (raw, e2e) = measure(&pool, &args, args.raw_messages, args.jobs).await?;
    println!(
        "\nRESULT end-to-end {:.0} jobs/s | raw publish {raw:.0} msgs/s | ratio {:.3}",
        e2e.rate,
        e2e.rate / raw
    );
    drop(pool);
    if args.synced_jobs > 0 {
        println!("\nthe same on a nats-server with sync_interval: always ...");
        let synced = NatsServer::start_synced()
            .await
            .map_err(|err| err.to_string())?;
        let pool = TestPool::start_on(synced, spec, args.apis, args.workers)
            .await
            .map_err(|err| err.to_string())?;
        let (synced_raw, synced_e2e) =
            measure(&pool, &args, args.synced_jobs / 5, args.synced_jobs).await?;
        println!(
            "\nDURABILITY sync_interval=always: end-to-end {:.0} jobs/s ({:.2} of default) | raw publish {synced_raw:.0} msgs/s ({:.2} of default)",
            synced_e2e.rate,
            synced_e2e.rate / e2e.rate,
            synced_raw / raw
        );
    }
    if e2e.completed < args.jobs {
        return Err(format!(
            "only {} of {} jobs completed",
            e2e.completed, args.jobs
        ));
    }
    Ok(())
}

/// The raw publish rate and an end-to-end run of `jobs` on `pool`'s server.
async fn measure<N: PoolNats>(
    pool: &TestPool<N>,
    args: &BenchArgs,
    raw_messages: usize,
    jobs: usize,
) -> Result<(f64, EndToEnd), String> {
    let client = pool.nats.client().await.map_err(|err| err.to_string())?;
    println!(
        "raw JetStream async publish: {raw_messages} x 128 B, window {} ...",
        args.raw_window
    );
    let raw = raw_publish_rate(client.clone(), raw_messages, args.raw_window).await?;
    println!("  {raw:.0} msgs/s");
    let e2e = end_to_end(pool, client, args, jobs).await?;
    Ok((raw, e2e))
}

/// `jobs` POSTs at the offered rate, each timed until its `worked` event.
async fn end_to_end<N: PoolNats>(
    pool: &TestPool<N>,
    client: async_nats::Client,
    args: &BenchArgs,
    jobs: usize,
) -> Result<EndToEnd, String> {
    let mut worked = client
        .subscribe(pool.names.event_subject("work", "worked"))
        .await
        .map_err(|err| err.to_string())?;
    client.flush().await.map_err(|err| err.to_string())?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .build()
        .map_err(|err| err.to_string())?;
    let urls: Vec<String> = (0..args.apis)
        .map(|i| format!("{}/api/v1/work", pool.api_url(i)))
        .collect();
    let limit = Arc::new(Semaphore::new(args.max_in_flight));
    let submitted: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut throttled = 0usize;

    println!(
        "end to end: {jobs} jobs offered at {}/s over {} api and {} worker processes ...",
        args.rate, args.apis, args.workers
    );
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let collector = tokio::spawn({
        async move {
            let mut done = HashMap::new();
            while done.len() < jobs {
                match tokio::time::timeout(Duration::from_secs(30), worked.next()).await {
                    Ok(Some(message)) => {
                        let event: serde_json::Value =
                            serde_json::from_slice(&message.payload).unwrap_or_default();
                        if let Some(id) = event["id"].as_str() {
                            done.entry(id.to_owned()).or_insert_with(Instant::now);
                        }
                    }
                    _ => break,
                }
            }
            done
        }
    });
    for n in 0..jobs {
        tokio::time::sleep_until((started + interval.mul_f64(n as f64)).into()).await;
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                throttled += 1;
                limit
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|err| err.to_string())?
            }
        };
        let request = http
            .post(&urls[n % urls.len()])
            .json(&json!({"data": {"n": n}, "task": "bench"}));
        let submitted = submitted.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            match request.send().await {
                Ok(response) if response.status() == 202 => {
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    if let (Some(id), Ok(mut map)) = (body["callback"].as_str(), submitted.lock()) {
                        map.insert(id.to_owned(), sent);
                    }
                }
                _ => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
    let offered_for = started.elapsed();
    let done = collector.await.map_err(|err| err.to_string())?;
    let submitted = submitted.lock().map_err(|err| err.to_string())?.clone();
    let finished_at = done.values().max().copied().unwrap_or(started);
    let elapsed = finished_at.duration_since(started);
    let completed = submitted.keys().filter(|id| done.contains_key(*id)).count();
    let mut latencies: Vec<Duration> = submitted
        .iter()
        .filter_map(|(id, sent)| done.get(id).map(|end| end.duration_since(*sent)))
        .collect();
    latencies.sort();
    let e2e = completed as f64 / elapsed.as_secs_f64();
    println!(
        "  {completed} of {jobs} jobs worked in {:.2}s (arrivals took {:.2}s; {} refused; generator throttled {} times)",
        elapsed.as_secs_f64(),
        offered_for.as_secs_f64(),
        refused.load(std::sync::atomic::Ordering::Relaxed),
        throttled
    );
    println!(
        "  latency POST->worked: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    );
    Ok(EndToEnd {
        completed,
        rate: e2e,
    })
}
