//! The floors: what one job must cost the server under Workpool's invariants, measured
//! with a plain client and nothing else in the path.
//!
//! - **ingest**: the dedupe read of the results bucket (a key that is not there), the
//!   publish of the work with a message id on a subject that ends in its id, refused
//!   while any subject of that id holds a message (as the api publishes), waiting for
//!   its ack, and the `work.accepted` event;
//! - **drain**: for each queued message, the outcome written as a bucket create, the
//!   `work.started` and `work.worked` events, and the ack;
//! - **job**: both at once on one stream, submissions and a consumer racing, until every
//!   job is acked.
//!
//! Each uses the same concurrency as the suite's load generator and worker.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use workpool_core::message::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT;
use workpool_e2e::{HarnessError as Error, Result};

use crate::raw::{DRAIN_FLOOR, INGEST_FLOOR, JOB_FLOOR, RawSizes, pull};
use crate::report::Figures;

const PAYLOAD: &[u8] =
    br#"{"id":"0123456789abcdef0123456789abcdef","task":"default","data":{"n":1}}"#;

/// A stream and bucket shaped like a pool's, made fresh for one floor.
struct Queue {
    js: jetstream::Context,
    client: async_nats::Client,
    name: String,
    stream: stream::Stream,
    bucket: kv::Store,
}

impl Queue {
    async fn fresh(js: &jetstream::Context, name: &str) -> Result<Self> {
        let _ = js.delete_stream(name).await;
        let _ = js.delete_key_value(name).await;
        let stream = js
            .create_stream(stream::Config {
                name: name.into(),
                subjects: vec![format!("{name}.work.>")],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                ..Default::default()
            })
            .await
            .map_err(Error::context(format!("creating stream {name}")))?;
        let bucket = js
            .create_key_value(kv::Config {
                bucket: name.into(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(Error::context(format!("creating bucket {name}")))?;
        Ok(Self {
            js: js.clone(),
            client: js.client(),
            name: name.into(),
            stream,
            bucket,
        })
    }

    async fn remove(self) {
        let _ = self.js.delete_stream(&self.name).await;
        let _ = self.js.delete_key_value(&self.name).await;
    }

    /// One submission: the dedupe read, the publish waited for, the event.
    async fn submit(&self, job: usize) -> Result<()> {
        let key = format!("j{job}");
        if self
            .bucket
            .entry(key.as_str())
            .await
            .map_err(Error::context("the dedupe read"))?
            .is_some()
        {
            return Err(Error::Other(format!(
                "floor job {key} already has a record"
            )));
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::from_static(PAYLOAD))
            .message_id(format!("{key}.0").as_str())
            .expected_last_subject_sequence(0)
            .header(
                EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                format!("{}.*.{key}", self.name).as_str(),
            );
        self.js
            .send_publish(format!("{}.work.{key}", self.name), publish)
            .await
            .map_err(Error::context("publishing work"))?
            .await
            .map_err(Error::context("the work's publish ack"))?;
        self.event("accepted").await
    }

    /// Submits jobs `0..count` with up to `in_flight` at once.
    async fn submit_all(&self, count: usize, in_flight: usize) -> Result<()> {
        let mut submissions = FuturesUnordered::new();
        for job in 0..count {
            if submissions.len() >= in_flight.max(1)
                && let Some(done) = submissions.next().await
            {
                done?;
            }
            submissions.push(self.submit(job));
        }
        while let Some(done) = submissions.next().await {
            done?;
        }
        Ok(())
    }

    async fn event(&self, verb: &str) -> Result<()> {
        self.client
            .publish(
                format!("{}.events.work.{verb}.default", self.name),
                bytes::Bytes::from_static(PAYLOAD),
            )
            .await
            .map_err(Error::context("publishing an event"))
    }

    /// Pulls `count` messages, `concurrency` at a time, each ended as a worker ends a
    /// job: the started event, the outcome's create, the worked event, the ack.
    async fn consume(&self, count: usize, concurrency: usize) -> Result<()> {
        let messages = pull(&self.stream, "workers", concurrency).await?;
        let mut finished = 0;
        let mut jobs = messages
            .take(count)
            .map(|message| self.finish(message))
            .buffer_unordered(concurrency.max(1));
        while finished < count {
            tokio::time::timeout(Duration::from_secs(30), jobs.next())
                .await
                .map_err(|_| Error::Timeout("the floor consumer's next message".into()))?
                .ok_or_else(|| Error::Other("the floor consumer's stream ended".into()))??;
            finished += 1;
        }
        Ok(())
    }

    async fn finish(
        &self,
        message: std::result::Result<jetstream::Message, consumer::pull::MessagesError>,
    ) -> Result<()> {
        let message = message.map_err(Error::context("a pulled message"))?;
        let key = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.event("started").await?;
        self.bucket
            .create(key.as_str(), message.payload.clone())
            .await
            .map_err(Error::context("writing the outcome"))?;
        self.event("worked").await?;
        message
            .ack()
            .await
            .map_err(|err| Error::Other(format!("acking: {err}")))
    }
}

/// All three floors, each on a fresh stream and bucket.
pub async fn floors(js: &jetstream::Context, sizes: RawSizes) -> Result<Figures> {
    let jobs = sizes.floor_jobs.max(1);
    let mut figures = Figures::new();

    let queue = Queue::fresh(js, "FLOOR_QUEUE").await?;
    let started = Instant::now();
    queue.submit_all(jobs, sizes.submitters).await?;
    figures.insert(INGEST_FLOOR, per_second(jobs, started));
    let started = Instant::now();
    queue.consume(jobs, sizes.concurrency).await?;
    figures.insert(DRAIN_FLOOR, per_second(jobs, started));
    queue.remove().await;

    let queue = Queue::fresh(js, "FLOOR_JOB").await?;
    let started = Instant::now();
    let (submitted, consumed) = tokio::join!(
        queue.submit_all(jobs, sizes.submitters),
        queue.consume(jobs, sizes.concurrency)
    );
    submitted?;
    consumed?;
    figures.insert(JOB_FLOOR, per_second(jobs, started));
    queue.remove().await;
    Ok(figures)
}

fn per_second(count: usize, since: Instant) -> f64 {
    count as f64 / since.elapsed().as_secs_f64()
}
