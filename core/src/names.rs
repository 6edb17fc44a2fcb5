//! NATS names of one pool (docs/architecture.md lists them). `namespace` and `pool` are
//! DNS labels, which are valid in stream, bucket and subject names alike.

use crate::ids::WorkId;
use crate::message::WorkMessage;
use crate::priority::Priority;

/// All NATS names of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNames {
    pub namespace: String,
    pub pool: String,
}

/// The durable consumer of unkeyed work.
pub const WORK_CONSUMER: &str = "workers";

/// The durable consumer of delayed work, which workers move to its queue once due.
pub const DELAYED_CONSUMER: &str = "delayed";

/// The durable consumer, on the results bucket's stream, of the record writes workers
/// deliver completion webhooks from.
pub const WEBHOOK_CONSUMER: &str = "webhooks";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{what} {value:?} is not a DNS label (lowercase letters, digits and '-', 1-63 characters, starting and ending with a letter or digit)"
)]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
}

/// Whether `text` is an RFC 1123 DNS label.
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    let edge_ok = |b: Option<&u8>| matches!(b, Some(b'a'..=b'z' | b'0'..=b'9'));
    (1..=63).contains(&bytes.len()) && inner_ok && edge_ok(bytes.first()) && edge_ok(bytes.last())
}

impl PoolNames {
    pub fn new(namespace: &str, pool: &str) -> Result<Self, InvalidName> {
        for (what, value) in [("namespace", namespace), ("pool name", pool)] {
            if !is_dns_label(value) {
                return Err(InvalidName {
                    what,
                    value: value.to_owned(),
                });
            }
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            pool: pool.to_owned(),
        })
    }

    pub(crate) fn prefix(&self) -> String {
        format!("wp.{}.{}", self.namespace, self.pool)
    }

    /// The work stream, also the name of the results bucket.
    pub fn stream(&self) -> String {
        format!("WP_{}_{}", self.namespace, self.pool)
    }

    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DLQ", self.stream())
    }

    pub fn bucket(&self) -> String {
        self.stream()
    }

    /// The stream under the results bucket.
    pub fn bucket_stream(&self) -> String {
        format!("KV_{}", self.bucket())
    }

    /// Subjects the work stream captures.
    pub fn stream_subjects(&self) -> Vec<String> {
        Priority::ALL
            .into_iter()
            .map(|priority| self.unkeyed_filter(priority))
            .chain([
                format!("{}.keyed.>", self.prefix()),
                format!("{}.delayed.>", self.prefix()),
            ])
            .collect()
    }

    /// The subject of unkeyed `normal` work: `wp.<ns>.<pool>.work.<id>.<task>`. The id lets the
    /// api ask the stream whether a message is still queued; the task ends it, so that a
    /// subscriber filters work by task, or by a task's leading tokens
    /// (`work.*.addressing.>`).
    pub fn work_subject(&self, task: &str, id: &WorkId) -> String {
        self.unkeyed_subject(Priority::Normal, task, id)
    }

    /// Where queued `work` goes: its key's partition (of `partitions`), or the unkeyed
    /// queue of its priority.
    pub fn queue_subject(&self, work: &WorkMessage, partitions: u32) -> String {
        let (id, task) = (&work.id, work.task.as_str());
        match &work.key {
            Some(key) => self.keyed_subject(partition_of(key, partitions), id, task),
            None => self.unkeyed_subject(work.priority, task, id),
        }
    }

    /// Unkeyed work of `priority`: `wp.<ns>.<pool>.<kind>.<id>.<task>`, the kind `work`
    /// for `normal` (as before priorities), `high` or `low`.
    pub fn unkeyed_subject(&self, priority: Priority, task: &str, id: &WorkId) -> String {
        format!("{}.{}.{id}.{task}", self.prefix(), unkeyed_kind(priority))
    }

    /// What the consumer of `priority`'s unkeyed work takes.
    pub fn unkeyed_filter(&self, priority: Priority) -> String {
        format!("{}.{}.>", self.prefix(), unkeyed_kind(priority))
    }

    /// The durable consumer of unkeyed work of `priority`.
    pub fn unkeyed_consumer(priority: Priority) -> &'static str {
        match priority {
            Priority::High => "workers-high",
            Priority::Normal => WORK_CONSUMER,
            Priority::Low => "workers-low",
        }
    }

    /// Delayed work waiting for its time: `wp.<ns>.<pool>.delayed.<id>.<task>`, the id in
    /// the same place as queued work's.
    pub fn delayed_subject(&self, task: &str, id: &WorkId) -> String {
        format!("{}.delayed.{id}.{task}", self.prefix())
    }

    pub fn delayed_filter(&self) -> String {
        format!("{}.delayed.>", self.prefix())
    }

    /// Every subject work of `id` may be queued on: unkeyed or keyed, in any partition,
    /// under any task, or delayed. The api asks the stream with it whether the work is queued.
    pub fn any_work_subject(&self, id: &WorkId) -> String {
        format!("{}.*.{id}.>", self.prefix())
    }

    pub fn work_filter(&self) -> String {
        self.unkeyed_filter(Priority::Normal)
    }

    /// The subject of keyed work: `wp.<ns>.<pool>.keyed.<id>.<partition>.<task>`, the id
    /// in the same place as unkeyed work's.
    pub fn keyed_subject(&self, partition: u32, id: &WorkId, task: &str) -> String {
        format!("{}.keyed.{id}.{partition}.{task}", self.prefix())
    }

    /// What a partition's consumer takes: its keyed work, and work queued in the
    /// earlier layout `keyed.<partition>.<id>` (before task names were in subjects), so an
    /// upgrade leaves none of it behind.
    pub fn keyed_filters(&self, partition: u32) -> Vec<String> {
        vec![
            format!("{}.keyed.*.{partition}.>", self.prefix()),
            format!("{}.keyed.{partition}.*", self.prefix()),
        ]
    }

    pub fn keyed_consumer(partition: u32) -> String {
        format!("{KEYED_CONSUMER_PREFIX}{partition}")
    }

    /// Whether `name` is one of the per-partition consumers.
    pub fn is_keyed_consumer(name: &str) -> bool {
        name.starts_with(KEYED_CONSUMER_PREFIX)
    }

    pub fn dead_letter_subject(&self, id: &WorkId) -> String {
        format!("{}.dead.{id}", self.prefix())
    }

    /// Where messages that are not work messages at all are dead-lettered.
    pub fn dead_letter_unreadable_subject(&self) -> String {
        format!("{}.dead.unreadable", self.prefix())
    }

    pub fn dead_letter_filter(&self) -> String {
        format!("{}.dead.>", self.prefix())
    }

    /// `wp.<ns>.<pool>.events.<entity>.<verb>.<task>`
    pub fn event_subject(&self, entity: &str, verb: &str, task: &str) -> String {
        format!("{}.events.{entity}.{verb}.{task}", self.prefix())
    }

    /// `<entity>.<verb>` events of every task.
    pub fn event_filter(&self, entity: &str, verb: &str) -> String {
        format!("{}.events.{entity}.{verb}.>", self.prefix())
    }

    /// All events of the pool, for subscribers.
    pub fn events_filter(&self) -> String {
        format!("{}.events.>", self.prefix())
    }

    /// Request/reply inbox of one worker pod.
    pub fn peer_subject(&self, pod: &str) -> String {
        format!("{}.peer.{pod}", self.prefix())
    }

    /// Where every worker answers (scatter-gather of the cluster view). `_all` cannot be
    /// a pod name, which is a DNS label.
    pub fn peers_all_subject(&self) -> String {
        format!("{}.peer._all", self.prefix())
    }
}

fn unkeyed_kind(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "high",
        Priority::Normal => "work",
        Priority::Low => "low",
    }
}

/// The names of the per-partition consumers start with this.
const KEYED_CONSUMER_PREFIX: &str = "keyed-";

/// The partition of a key: FNV-1a over its bytes, modulo the partition count. FNV is
/// fixed forever (unlike std's hasher), so every component agrees on the partition.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    u32::try_from(fnv1a(key.as_bytes()) % u64::from(partitions.max(1))).unwrap_or(0)
}

/// FNV-1a, 64 bits: stable across processes, builds and versions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_table() {
        let names = PoolNames::new("default", "demo").expect("valid");
        let id: WorkId = "0123456789abcdef0123456789abcdef".parse().expect("id");
        assert_eq!(names.stream(), "WP_default_demo");
        assert_eq!(names.dead_letter_stream(), "WP_default_demo_DLQ");
        assert_eq!(names.bucket(), "WP_default_demo");
        assert_eq!(
            names.stream_subjects(),
            [
                "wp.default.demo.high.>",
                "wp.default.demo.work.>",
                "wp.default.demo.low.>",
                "wp.default.demo.keyed.>",
                "wp.default.demo.delayed.>"
            ]
        );
        assert_eq!(
            names.work_subject("echo", &id),
            format!("wp.default.demo.work.{id}.echo")
        );
        assert_eq!(
            names.unkeyed_subject(Priority::Low, "echo", &id),
            format!("wp.default.demo.low.{id}.echo")
        );
        assert_eq!(
            names.unkeyed_filter(Priority::High),
            "wp.default.demo.high.>"
        );
        assert_eq!(
            names.keyed_subject(3, &id, "addressing.address.reconcile"),
            format!("wp.default.demo.keyed.{id}.3.addressing.address.reconcile")
        );
        assert_eq!(
            names.keyed_filters(3),
            ["wp.default.demo.keyed.*.3.>", "wp.default.demo.keyed.3.*"]
        );
        assert_eq!(
            names.any_work_subject(&id),
            format!("wp.default.demo.*.{id}.>")
        );
        assert_eq!(PoolNames::keyed_consumer(3), "keyed-3");
        assert_eq!(
            names.event_subject("work", "worked", "a.b"),
            "wp.default.demo.events.work.worked.a.b"
        );
        assert_eq!(
            names.event_filter("work", "worked"),
            "wp.default.demo.events.work.worked.>"
        );
        assert_eq!(
            names.peer_subject("demo-worker-0"),
            "wp.default.demo.peer.demo-worker-0"
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["", "Demo", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(PoolNames::new("default", bad).is_err(), "{bad:?}");
        }
        assert!(PoolNames::new("kube-system", "a-1").is_ok());
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(
            partition_of("customer-42", 16),
            partition_of("customer-42", 16)
        );
        let spread: std::collections::HashSet<u32> = (0..200)
            .map(|i| partition_of(&format!("key-{i}"), 16))
            .collect();
        assert_eq!(spread.len(), 16);
        assert!(spread.iter().all(|p| *p < 16));
    }
}
