//! The JetStream objects of one pool, derived from its spec as plain values (no server).

use std::time::Duration;

use async_nats::jetstream::{consumer, kv, stream};

use crate::names::{DELAYED_CONSUMER, PoolNames, WEBHOOK_CONSUMER};
use crate::priority::Priority;
use crate::spec::PoolSpec;

/// How long the stream remembers message ids for deduplication, at most.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The work stream's dedupe window: never longer than a record lives, so the stream
/// cannot remember a submission that the results bucket has already forgotten. Message
/// ids carry the record's revision as well, so this is a second line, not the first.
pub fn work_duplicate_window(spec: &PoolSpec) -> Duration {
    DUPLICATE_WINDOW.min(spec.result_ttl)
}

/// Room for the message envelope (id, task, key, timestamps) around `data`.
pub const ENVELOPE_BYTES: usize = 4096;

/// Most unacknowledged unkeyed messages across all workers of a pool.
pub const WORK_MAX_ACK_PENDING: i64 = 20_000;

/// Most delayed messages handed to workers and not yet due: each waits, unacknowledged,
/// for its time (its worker naks it until then). Past this many, the next waits for one
/// to come due; a pool's `queue.maxPending` is usually smaller.
pub const DELAYED_MAX_ACK_PENDING: i64 = 1_000_000;

fn message_size_limit(spec: &PoolSpec) -> i32 {
    i32::try_from(spec.queue.max_payload_bytes.saturating_add(ENVELOPE_BYTES)).unwrap_or(i32::MAX)
}

/// The work stream: a work queue (a message is gone once acked), deduplicated by id,
/// refusing new messages when full so the api can answer 429.
pub fn work_stream(names: &PoolNames, spec: &PoolSpec) -> stream::Config {
    stream::Config {
        name: names.stream(),
        description: Some(format!(
            "Workpool work queue of {}/{}",
            names.namespace, names.pool
        )),
        subjects: names.stream_subjects(),
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_messages: spec.queue.max_pending,
        // One message per subject, and the subject ends in the work id: a second
        // publish of queued work is refused, so work is queued once however long it
        // waits, beyond the dedupe window (docs/reliability.md).
        max_messages_per_subject: 1,
        discard_new_per_subject: true,
        max_message_size: message_size_limit(spec),
        storage: stream::StorageType::File,
        num_replicas: spec.nats.replicas,
        duplicate_window: work_duplicate_window(spec),
        allow_direct: true,
        ..Default::default()
    }
}

/// Dead letters: copies of work that failed for good, kept for inspection.
pub fn dead_letter_stream(names: &PoolNames, spec: &PoolSpec) -> stream::Config {
    stream::Config {
        name: names.dead_letter_stream(),
        description: Some(format!(
            "Workpool dead letters of {}/{}",
            names.namespace, names.pool
        )),
        subjects: vec![names.dead_letter_filter()],
        retention: stream::RetentionPolicy::Limits,
        max_age: spec.queue.dead_letter_ttl,
        max_message_size: message_size_limit(spec),
        storage: stream::StorageType::File,
        num_replicas: spec.nats.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    }
}

/// Work records: one revision per key, with no age limit: a terminal record expires
/// `resultTTL` after it was written by its own TTL, an open one never (module
/// [`crate::expiry`]).
pub fn results_bucket(names: &PoolNames, spec: &PoolSpec) -> kv::Config {
    kv::Config {
        bucket: names.bucket(),
        description: format!("Workpool results of {}/{}", names.namespace, names.pool),
        history: 1,
        max_age: Duration::ZERO,
        limit_markers: Some(crate::expiry::EXPIRY_MARKER_TTL),
        storage: stream::StorageType::File,
        num_replicas: spec.nats.replicas,
        ..Default::default()
    }
}

fn pull_consumer(
    name: String,
    filters: Vec<String>,
    max_ack_pending: i64,
    spec: &PoolSpec,
) -> consumer::pull::Config {
    let (filter_subject, filter_subjects) = match <[String; 1]>::try_from(filters) {
        Ok([one]) => (one, Vec::new()),
        Err(several) => (String::new(), several),
    };
    consumer::pull::Config {
        durable_name: Some(name),
        filter_subject,
        filter_subjects,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.worker.ack_wait,
        // Unlimited: the worker counts attempts itself and dead-letters after the last,
        // so no message is ever left stranded by the server giving up on it.
        max_deliver: -1,
        max_ack_pending,
        num_replicas: spec.nats.replicas,
        ..Default::default()
    }
}

/// The consumer all workers pull unkeyed work of `priority` from.
pub fn work_consumer(
    names: &PoolNames,
    spec: &PoolSpec,
    priority: Priority,
) -> consumer::pull::Config {
    pull_consumer(
        PoolNames::unkeyed_consumer(priority).to_owned(),
        vec![names.unkeyed_filter(priority)],
        WORK_MAX_ACK_PENDING,
        spec,
    )
}

/// The consumers of unkeyed work, highest priority first.
pub fn work_consumers(names: &PoolNames, spec: &PoolSpec) -> Vec<consumer::pull::Config> {
    Priority::ALL
        .into_iter()
        .map(|priority| work_consumer(names, spec, priority))
        .collect()
}

/// The consumer workers pull delayed work from, to queue it once it is due.
pub fn delayed_consumer(names: &PoolNames, spec: &PoolSpec) -> consumer::pull::Config {
    pull_consumer(
        DELAYED_CONSUMER.to_owned(),
        vec![names.delayed_filter()],
        DELAYED_MAX_ACK_PENDING,
        spec,
    )
}

/// The consumer of the results bucket's writes that workers deliver completion webhooks
/// from (made only for a pool that allows callbacks). It starts at the writes made after
/// it; an attempt may take `webhooks.timeout`, so its `ackWait` is longer than that.
pub fn webhook_consumer(names: &PoolNames, spec: &PoolSpec) -> consumer::pull::Config {
    consumer::pull::Config {
        deliver_policy: consumer::DeliverPolicy::New,
        ack_wait: spec.webhooks.timeout + Duration::from_secs(30),
        ..pull_consumer(
            WEBHOOK_CONSUMER.to_owned(),
            vec![format!("$KV.{}.>", names.bucket())],
            WEBHOOK_MAX_ACK_PENDING,
            spec,
        )
    }
}

/// Most bucket writes handed to workers for webhooks and not yet acknowledged: retrying
/// deliveries wait unacknowledged for their next attempt.
pub const WEBHOOK_MAX_ACK_PENDING: i64 = 100_000;

/// One consumer per partition; `max_ack_pending: 1` makes a key's work serial.
pub fn keyed_consumers(names: &PoolNames, spec: &PoolSpec) -> Vec<consumer::pull::Config> {
    (0..spec.worker.partitions)
        .map(|p| {
            pull_consumer(
                PoolNames::keyed_consumer(p),
                names.keyed_filters(p),
                1,
                spec,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> (PoolNames, PoolSpec) {
        (
            PoolNames::new("default", "demo").expect("names"),
            PoolSpec::default(),
        )
    }

    #[test]
    fn work_stream_is_a_deduplicated_work_queue_that_refuses_when_full() {
        let (names, mut spec) = demo();
        spec.queue.max_pending = 7;
        let config = work_stream(&names, &spec);
        assert_eq!(config.name, "WP_default_demo");
        assert_eq!(config.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(config.discard, stream::DiscardPolicy::New);
        assert_eq!(config.max_messages, 7);
        assert_eq!(config.max_message_size, 1024 * 1024 + 4096);
        assert_eq!(config.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(config.max_messages_per_subject, 1);
        assert!(config.discard_new_per_subject);
    }

    #[test]
    fn the_dedupe_window_never_outlives_a_record() {
        let (names, mut spec) = demo();
        spec.result_ttl = Duration::from_secs(60);
        assert_eq!(
            work_stream(&names, &spec).duplicate_window,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn bucket_keeps_one_revision_and_expires_records_by_their_own_ttl() {
        let (names, mut spec) = demo();
        spec.result_ttl = Duration::from_secs(2);
        let config = results_bucket(&names, &spec);
        // No age limit: it would expire records of work still in the queue.
        assert_eq!((config.history, config.max_age), (1, Duration::ZERO));
        assert_eq!(config.limit_markers, Some(crate::expiry::EXPIRY_MARKER_TTL));
    }

    #[test]
    fn consumers_cover_disjoint_subjects() {
        let (names, mut spec) = demo();
        spec.worker.partitions = 3;
        spec.worker.ack_wait = Duration::from_secs(4);
        let keyed = keyed_consumers(&names, &spec);
        let filters: Vec<&str> = keyed
            .iter()
            .map(|c| c.filter_subjects[0].as_str())
            .collect();
        assert_eq!(
            filters,
            [
                "wp.default.demo.keyed.*.0.>",
                "wp.default.demo.keyed.*.1.>",
                "wp.default.demo.keyed.*.2.>"
            ]
        );
        assert!(
            keyed
                .iter()
                .all(|c| c.max_ack_pending == 1 && c.ack_wait == Duration::from_secs(4))
        );
        let unkeyed: Vec<(String, String)> = work_consumers(&names, &spec)
            .into_iter()
            .map(|c| (c.durable_name.unwrap_or_default(), c.filter_subject))
            .collect();
        assert_eq!(
            unkeyed,
            [
                ("workers-high".into(), "wp.default.demo.high.>".into()),
                ("workers".into(), "wp.default.demo.work.>".into()),
                ("workers-low".into(), "wp.default.demo.low.>".into()),
            ]
        );
        assert_eq!(
            work_consumer(&names, &spec, Priority::Normal).max_deliver,
            -1
        );
    }

    #[test]
    fn dead_letters_expire_and_use_their_own_subjects() {
        let (names, spec) = demo();
        let config = dead_letter_stream(&names, &spec);
        assert_eq!(config.subjects, ["wp.default.demo.dead.>"]);
        assert_eq!(config.retention, stream::RetentionPolicy::Limits);
        assert_eq!(config.max_age, spec.queue.dead_letter_ttl);
    }
}
