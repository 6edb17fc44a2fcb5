//! The queue-relevant part of a WorkPool spec, shared by the api, the worker and the
//! provisioning of NATS objects. Field names and defaults match the WorkPool resource.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of one pool that its api, workers and NATS objects follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PoolSpec {
    /// How long a finished work record stays readable (its per-message TTL); records of
    /// open work never expire.
    #[serde(rename = "resultTTL", with = "humantime_serde")]
    pub result_ttl: Duration,
    pub queue: QueueSpec,
    pub nats: NatsSpec,
    pub worker: WorkerSpec,
    pub webhooks: crate::webhook::WebhookSpec,
    pub groups: crate::group::GroupLimits,
}

/// Limits of the work stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct QueueSpec {
    /// Most messages the stream holds; beyond it the api answers 429.
    pub max_pending: i64,
    /// Largest accepted request body in bytes; beyond it the api answers 413.
    pub max_payload_bytes: usize,
    /// How long dead letters are kept.
    #[serde(with = "humantime_serde")]
    pub dead_letter_ttl: Duration,
}

/// Where NATS is and how its objects are replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NatsSpec {
    pub url: String,
    /// JetStream replicas of the stream and bucket (1, 3 or 5).
    pub replicas: usize,
}

/// How workers run the work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkerSpec {
    /// Jobs in flight per worker process.
    pub concurrency: usize,
    pub handler: HandlerSpec,
    /// Limit of one attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts before work is recorded `failed` and dead-lettered.
    pub max_attempts: u32,
    /// Delay before attempt n+1 after a failed attempt n; the last entry repeats.
    #[serde(with = "duration_list")]
    pub backoff: Vec<Duration>,
    /// Partitions for keyed (serial per key) work.
    pub partitions: u32,
    /// How long the server waits for an ack or heartbeat before it redelivers a message
    /// (so also how long work held by a crashed worker waits before another takes it).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
}

/// Exactly one handler kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HandlerSpec {
    Builtin(BuiltinHandler),
    Exec {
        /// Program and arguments; the work is written to stdin as JSON.
        command: Vec<String>,
    },
    Http {
        /// The URL the work is POSTed to (usually a sidecar on localhost).
        url: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BuiltinHandler {
    /// Pause `data.ms` milliseconds (default 3000): the original demo's "work".
    Sleep,
    /// Return `data` as the result.
    Echo,
    /// Return the hex SHA-256 of `data` (of the string itself when `data` is a string).
    Sha256,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            result_ttl: Duration::from_secs(600),
            queue: QueueSpec::default(),
            nats: NatsSpec::default(),
            worker: WorkerSpec::default(),
            webhooks: crate::webhook::WebhookSpec::default(),
            groups: crate::group::GroupLimits::default(),
        }
    }
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            max_pending: 100_000,
            max_payload_bytes: 1024 * 1024,
            dead_letter_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Default for NatsSpec {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            replicas: 1,
        }
    }
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            concurrency: 4,
            handler: HandlerSpec::Builtin(BuiltinHandler::Sleep),
            timeout: Duration::from_secs(30),
            max_attempts: 5,
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            partitions: 16,
            ack_wait: Duration::from_secs(10),
        }
    }
}

impl WorkerSpec {
    /// The delay before the next attempt after attempt `attempt` (1-based) failed.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// How often a running job tells the server it is still alive.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(100))
    }
}

/// Errors of a spec that parsed but makes no sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{field} must be {rule}")]
    Invalid {
        field: &'static str,
        rule: &'static str,
    },
    #[error("invalid pool spec JSON: {0}")]
    Parse(String),
    #[error("webhooks: {0}")]
    Webhooks(String),
    #[error("groups: {0}")]
    Groups(String),
}

impl PoolSpec {
    /// Parses and validates a spec from JSON.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: PoolSpec =
            serde_json::from_str(text).map_err(|err| SpecError::Parse(err.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the ranges the schema of the WorkPool resource enforces too.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |field, rule| Err(SpecError::Invalid { field, rule });
        if self.result_ttl < Duration::from_secs(1) {
            return invalid("resultTTL", "at least 1s");
        }
        if self.queue.max_pending < 1 {
            return invalid("queue.maxPending", "at least 1");
        }
        if self.queue.max_payload_bytes < 64 {
            return invalid("queue.maxPayloadBytes", "at least 64");
        }
        if ![1, 3, 5].contains(&self.nats.replicas) {
            return invalid("nats.replicas", "1, 3 or 5");
        }
        if !(1..=1024).contains(&self.worker.concurrency) {
            return invalid("worker.concurrency", "between 1 and 1024");
        }
        if !(1..=100).contains(&self.worker.max_attempts) {
            return invalid("worker.maxAttempts", "between 1 and 100");
        }
        if !(1..=1024).contains(&self.worker.partitions) {
            return invalid("worker.partitions", "between 1 and 1024");
        }
        if self.worker.timeout < Duration::from_millis(10) {
            return invalid("worker.timeout", "at least 10ms");
        }
        if self.worker.ack_wait < Duration::from_millis(500) {
            return invalid("worker.ackWait", "at least 500ms");
        }
        self.webhooks.validate().map_err(SpecError::Webhooks)?;
        self.groups.validate().map_err(SpecError::Groups)?;
        match &self.worker.handler {
            HandlerSpec::Exec { command } if command.is_empty() => {
                invalid("worker.handler.exec.command", "a non-empty list")
            }
            HandlerSpec::Http { url }
                if !url.starts_with("http://") && !url.starts_with("https://") =>
            {
                invalid("worker.handler.http.url", "an http:// or https:// URL")
            }
            _ => Ok(()),
        }
    }
}

/// Serde for a list of humantime durations (`["1s", "5s"]`).
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(list: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(list.len()))?;
        for duration in list {
            seq.serialize_element(&humantime::format_duration(*duration).to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| humantime::parse_duration(text).map_err(D::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_gives_the_defaults() {
        assert_eq!(PoolSpec::from_json("{}"), Ok(PoolSpec::default()));
    }

    #[test]
    fn durations_and_handlers_parse_from_their_yaml_shape() {
        let spec = PoolSpec::from_json(
            r#"{"resultTTL":"2s","worker":{"handler":{"exec":{"command":["cat"]}},
                "backoff":["100ms","1s"],"timeout":"5s"}}"#,
        )
        .expect("valid spec");
        assert_eq!(spec.result_ttl, Duration::from_secs(2));
        assert_eq!(
            spec.worker.handler,
            HandlerSpec::Exec {
                command: vec!["cat".into()]
            }
        );
        assert_eq!(spec.worker.backoff_after(1), Duration::from_millis(100));
        assert_eq!(spec.worker.backoff_after(2), Duration::from_secs(1));
        assert_eq!(spec.worker.backoff_after(9), Duration::from_secs(1));
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_refused() {
        assert!(matches!(
            PoolSpec::from_json(r#"{"queue":{"maxPendin":3}}"#),
            Err(SpecError::Parse(msg)) if msg.contains("maxPendin")
        ));
        assert_eq!(
            PoolSpec::from_json(r#"{"worker":{"concurrency":0}}"#),
            Err(SpecError::Invalid {
                field: "worker.concurrency",
                rule: "between 1 and 1024"
            })
        );
        assert!(PoolSpec::from_json(r#"{"worker":{"handler":{"exec":{"command":[]}}}}"#).is_err());
        assert!(
            PoolSpec::from_json(r#"{"worker":{"handler":{"http":{"url":"ftp://x"}}}}"#).is_err()
        );
    }
}
