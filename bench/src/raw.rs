//! Raw JetStream baselines, measured on the server the pool runs on, with none of our
//! code in the path: async publish, pull fetch + ack, KV put, synchronous publish
//! latency. Each uses a stream of its own, deleted afterwards.
//!
//! Beside them, the *floors*: the JetStream operations one job needs under Workpool's
//! invariants (docs/reliability.md), issued by a plain client with nothing else in the
//! path: no HTTP, no JSON, no handler, no second process. No implementation that keeps
//! those invariants can beat them on the same server and machine, so a target that the
//! floor itself misses is out of reach by protocol and machine, not by our code.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use workpool_e2e::{HarnessError as Error, Result};

use crate::floor::floors;
use crate::report::Figures;

pub const ASYNC_PUBLISH: &str = "raw_async_publish_per_s";
pub const FETCH_ACK: &str = "raw_fetch_ack_per_s";
pub const KV_PUT: &str = "raw_kv_put_per_s";
pub const SYNC_PUBLISH_MEAN_MS: &str = "raw_sync_publish_mean_ms";
pub const SYNC_PUBLISH_P99_MS: &str = "raw_sync_publish_p99_ms";
pub const INGEST_FLOOR: &str = "floor_ingest_per_s";
pub const DRAIN_FLOOR: &str = "floor_drain_per_s";
pub const JOB_FLOOR: &str = "floor_job_per_s";

/// How many of each the baselines use.
#[derive(Debug, Clone, Copy)]
pub struct RawSizes {
    pub messages: usize,
    pub window: usize,
    pub kv_puts: usize,
    pub sync_publishes: usize,
    /// Jobs of each floor.
    pub floor_jobs: usize,
    /// Submissions in flight at once in the floors (the load generator's connections).
    pub submitters: usize,
    /// Jobs a consumer of the floors holds at once (a worker's concurrency).
    pub concurrency: usize,
}

const PAYLOAD_BYTES: usize = 128;

fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES])
}

/// All four baselines, one after the other.
pub async fn baselines(client: async_nats::Client, sizes: RawSizes) -> Result<Figures> {
    let js = jetstream::new(client);
    let mut figures = Figures::new();
    figures.insert(
        ASYNC_PUBLISH,
        async_publish_rate(&js, sizes.messages, sizes.window).await?,
    );
    figures.insert(
        FETCH_ACK,
        fetch_ack_rate(&js, sizes.messages, sizes.window).await?,
    );
    figures.insert(KV_PUT, kv_put_rate(&js, sizes.kv_puts, sizes.window).await?);
    let (mean, p99) = sync_publish_latency(&js, sizes.sync_publishes).await?;
    figures.insert(SYNC_PUBLISH_MEAN_MS, mean);
    figures.insert(SYNC_PUBLISH_P99_MS, p99);
    figures.extend(floors(&js, sizes).await?);
    Ok(figures)
}

async fn fresh_stream(
    js: &jetstream::Context,
    name: &str,
    retention: stream::RetentionPolicy,
) -> Result<stream::Stream> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("bench.{name}")],
        storage: stream::StorageType::File,
        retention,
        ..Default::default()
    })
    .await
    .map_err(Error::context(format!("creating stream {name}")))
}

/// Publishes `count` messages to `subject` with up to `window` acks outstanding.
async fn publish_windowed(
    js: &jetstream::Context,
    subject: &str,
    count: usize,
    window: usize,
) -> Result<()> {
    let mut acks: FuturesUnordered<
        <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture,
    > = FuturesUnordered::new();
    for _ in 0..count {
        if acks.len() >= window
            && let Some(ack) = acks.next().await
        {
            ack.map_err(Error::context("a publish ack"))?;
        }
        let ack = js
            .publish(subject.to_owned(), payload())
            .await
            .map_err(Error::context("publishing"))?;
        acks.push(ack.into_future());
    }
    while let Some(ack) = acks.next().await {
        ack.map_err(Error::context("a publish ack"))?;
    }
    Ok(())
}

pub async fn async_publish_rate(
    js: &jetstream::Context,
    count: usize,
    window: usize,
) -> Result<f64> {
    fresh_stream(js, "RAW_PUBLISH", stream::RetentionPolicy::Limits).await?;
    let started = Instant::now();
    publish_windowed(js, "bench.RAW_PUBLISH", count, window).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream("RAW_PUBLISH").await;
    Ok(rate)
}

/// Fills a work-queue stream like a pool's, then pulls it empty through one durable
/// consumer, acking each message: the server's side of a worker with no work to do.
async fn fetch_ack_rate(js: &jetstream::Context, count: usize, window: usize) -> Result<f64> {
    let stream = fresh_stream(js, "RAW_FETCH", stream::RetentionPolicy::WorkQueue).await?;
    publish_windowed(js, "bench.RAW_FETCH", count, window).await?;
    let mut messages = pull(&stream, "raw", window).await?;
    let started = Instant::now();
    for _ in 0..count {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| Error::Timeout("the raw consumer's next message".into()))?
            .ok_or_else(|| Error::Other("the raw consumer's stream ended".into()))?
            .map_err(Error::context("a pulled message"))?;
        message
            .ack()
            .await
            .map_err(|err| Error::Other(format!("acking: {err}")))?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream("RAW_FETCH").await;
    Ok(rate)
}

/// The messages of a new durable consumer `name` on `stream`, with explicit acks and
/// at most `window` unacked, pulled `window` at a time.
pub async fn pull(
    stream: &stream::Stream,
    name: &str,
    window: usize,
) -> Result<consumer::pull::Stream> {
    let window = window.max(1);
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: i64::try_from(window).unwrap_or(i64::MAX),
            ..Default::default()
        })
        .await
        .map_err(Error::context(format!("creating the consumer {name}")))?;
    consumer
        .stream()
        .max_messages_per_batch(window)
        .messages()
        .await
        .map_err(Error::context("pulling"))
}

async fn kv_put_rate(js: &jetstream::Context, count: usize, window: usize) -> Result<f64> {
    let _ = js.delete_key_value("RAW_KV").await;
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "RAW_KV".into(),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(Error::context("creating the raw bucket"))?;
    let started = Instant::now();
    let mut puts: FuturesUnordered<_> = FuturesUnordered::new();
    for n in 0..count {
        if puts.len() >= window
            && let Some(put) = puts.next().await
        {
            put?;
        }
        let kv = kv.clone();
        puts.push(async move {
            kv.put(format!("k{n}"), payload())
                .await
                .map_err(Error::context("a KV put"))
        });
    }
    while let Some(put) = puts.next().await {
        put?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_key_value("RAW_KV").await;
    Ok(rate)
}

/// Mean and p99 of a publish that waits for its ack before the next, in ms.
async fn sync_publish_latency(js: &jetstream::Context, count: usize) -> Result<(f64, f64)> {
    fresh_stream(js, "RAW_SYNC", stream::RetentionPolicy::Limits).await?;
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let sent = Instant::now();
        js.publish("bench.RAW_SYNC", payload())
            .await
            .map_err(Error::context("publishing"))?
            .await
            .map_err(Error::context("a publish ack"))?;
        latencies.push(sent.elapsed());
    }
    let _ = js.delete_stream("RAW_SYNC").await;
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    latencies.sort();
    Ok((
        millis(mean),
        millis(crate::load::percentile(&latencies, 0.99)),
    ))
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
