//! What clients submit and what travels on the work stream.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{IdScope, WorkId};
use crate::priority::Priority;
use crate::record::WorkRecord;

/// The task name used when a submission names none.
pub const DEFAULT_TASK: &str = "default";

/// The header carrying the KV revision the work was accepted on: that of the expired
/// record (or expiry marker) the api found for its id, or `0` for none. The worker's
/// first compare-and-set goes on it, with no read.
pub const RECORD_REVISION_HEADER: &str = "Workpool-Record-Revision";

/// NATS's header naming the subjects (a wildcard) that `Nats-Expected-Last-Subject-Sequence`
/// checks instead of the message's own (nats-server 2.11 and later; async-nats has no
/// name for it). The api's work publishes check every subject of their id with it.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";

/// Header of a dead letter: the error that ended the work.
pub const DEAD_LETTER_ERROR_HEADER: &str = "Workpool-Error";
/// Header of a dead letter: attempts made.
pub const DEAD_LETTER_ATTEMPTS_HEADER: &str = "Workpool-Attempts";

/// The body of `POST /api/v1/work`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkSubmission {
    /// Any JSON value; the handler gets it as it is.
    pub data: serde_json::Value,
    /// A name for the kind of work: dot-separated words of letters, digits, '-' and '_',
    /// at most 64 characters, such as `addressing.address.reconcile`
    /// (`<service>.<entity>.<request>`). It labels metrics, ends the subjects of the work
    /// and its events (so NATS wildcards filter by it), and is passed to the handler.
    /// Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", max_length = 64)]
    pub task: Option<String>,
    /// Work with the same key runs one at a time, in order (1-256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub key: Option<String>,
    /// How long the result is kept once the work ends, such as `30s` or `5m`: at least
    /// 1s and at most the pool's `resultTTL`, which is also the default. Not part of the
    /// content: the same content submitted again while its record lives is the same
    /// work, with the first submission's ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "30s")]
    pub ttl: Option<String>,
    /// Run no earlier than this time (RFC 3339); at most a year ahead. Not with `delay`.
    /// Not part of the content, like `ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Run no earlier than this long after acceptance, such as `90s` or `2h`; at most a
    /// year. Not with `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "10m")]
    pub delay: Option<String>,
    /// `high` work starts before `normal` and `low` work of the pool under a backlog;
    /// `low` still gets at least one start in ten (docs/worker.md, "Priorities").
    /// Unkeyed work only: keyed work runs in its key's order. Default `normal`. Not
    /// part of the content, like `ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Where to POST the record, signed, once the work ends (docs/api.md, "Completion
    /// webhooks"): an http or https URL whose host the pool's `spec.webhooks.allowedHosts`
    /// lists. Not part of the content, like `ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048, example = "https://hooks.example.com/workpool")]
    pub callback_url: Option<String>,
    /// Work of one group runs within the pool's `spec.groups` limits: at most so many at
    /// once, and so many starts per interval, across the pool (1-256 bytes; docs/worker.md,
    /// "Group limits"). Unkeyed work only. Not part of the content, like `ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub group: Option<String>,
}

/// The longest a submission may be delayed.
pub const MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmissionError {
    #[error(
        "task must be dot-separated words of letters, digits, '-' and '_' (such as addressing.address.reconcile), at most 64 characters"
    )]
    BadTask,
    #[error("key must be 1-256 bytes")]
    BadKey,
    #[error("ttl must be a duration such as 30s or 5m, at least 1s")]
    BadTtl,
    #[error("ttl must be at most the pool's resultTTL, {max}")]
    TtlOverPool { max: String },
    #[error("delay must be a duration such as 90s or 2h")]
    BadDelay,
    #[error("run_at and delay are two ways to say one thing: give one")]
    RunAtAndDelay,
    #[error("run_at and delay may be at most a year ahead")]
    TooFarAhead,
    #[error("keyed work runs in the order of its key: a priority is for unkeyed work")]
    KeyedPriority,
    #[error("group must be 1-256 bytes")]
    BadGroup,
    #[error("keyed work runs one at a time per key already: a group is for unkeyed work")]
    KeyedGroup,
}

impl WorkSubmission {
    pub fn task(&self) -> &str {
        self.task.as_deref().unwrap_or(DEFAULT_TASK)
    }

    pub fn validate(&self) -> Result<(), SubmissionError> {
        if !is_task_name(self.task()) {
            return Err(SubmissionError::BadTask);
        }
        if let Some(key) = &self.key
            && !(1..=256).contains(&key.len())
        {
            return Err(SubmissionError::BadKey);
        }
        if self.key.is_some() && !self.priority.unwrap_or_default().is_normal() {
            return Err(SubmissionError::KeyedPriority);
        }
        if let Some(group) = &self.group {
            if !(1..=256).contains(&group.len()) {
                return Err(SubmissionError::BadGroup);
            }
            if self.key.is_some() {
                return Err(SubmissionError::KeyedGroup);
            }
        }
        self.ttl()?;
        self.not_before(Utc::now()).map(|_| ())
    }

    /// When work submitted `now` may start at the earliest, if that is later than `now`.
    pub fn not_before(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, SubmissionError> {
        let ahead = match (&self.run_at, &self.delay) {
            (Some(_), Some(_)) => return Err(SubmissionError::RunAtAndDelay),
            (None, None) => return Ok(None),
            (Some(run_at), None) => (*run_at - now).to_std().unwrap_or_default(),
            (None, Some(text)) => {
                humantime::parse_duration(text).map_err(|_| SubmissionError::BadDelay)?
            }
        };
        if ahead > MAX_DELAY {
            return Err(SubmissionError::TooFarAhead);
        }
        let ahead = chrono::Duration::from_std(ahead).map_err(|_| SubmissionError::TooFarAhead)?;
        Ok((ahead > chrono::Duration::zero()).then(|| now + ahead))
    }

    /// The ttl asked for, if any (checked for form only; see [`Self::ttl_within`]).
    pub fn ttl(&self) -> Result<Option<Duration>, SubmissionError> {
        let Some(text) = &self.ttl else {
            return Ok(None);
        };
        let ttl = humantime::parse_duration(text).map_err(|_| SubmissionError::BadTtl)?;
        if ttl < Duration::from_secs(1) {
            return Err(SubmissionError::BadTtl);
        }
        Ok(Some(ttl))
    }

    /// The ttl asked for, refused past the pool's `result_ttl`.
    pub fn ttl_within(&self, result_ttl: Duration) -> Result<Option<Duration>, SubmissionError> {
        match self.ttl()? {
            Some(ttl) if ttl > result_ttl => Err(SubmissionError::TtlOverPool {
                max: humantime::format_duration(result_ttl).to_string(),
            }),
            ttl => Ok(ttl),
        }
    }

    /// The id of this submission in `scope`: from the idempotency key if given, else
    /// from content.
    pub fn id(&self, scope: IdScope<'_>, idempotency_key: Option<&str>) -> WorkId {
        match idempotency_key {
            Some(key) => WorkId::idempotency_in(scope, key),
            None => WorkId::content_in(scope, self.task(), self.key.as_deref(), &self.data),
        }
    }
}

/// Whether `task` is a task name: at most 64 characters, dot-separated words of letters,
/// digits, '-' and '_', each word a NATS subject token.
pub fn is_task_name(task: &str) -> bool {
    let is_word = |word: &str| {
        !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    task.len() <= 64 && task.split('.').all(is_word)
}

/// The payload of a message on the work stream; also what `exec` and `http` handlers get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkMessage {
    pub id: WorkId,
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub data: serde_json::Value,
    pub accepted_by: String,
    pub created_at: DateTime<Utc>,
    /// The tenant whose token submitted it (when the api's auth names tenants): only
    /// that tenant may read or cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How long its result is kept once it ends, when the submission asked for less than
    /// the pool's `resultTTL`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Delayed work: it starts no earlier than this. It waits on its own subject
    /// ([`crate::PoolNames::delayed_subject`]) until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
    /// Where the record is POSTed once the work ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The group whose limits it runs within.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Times it was put aside because its group was at a limit (it waits as delayed work
    /// meanwhile); spaces out its next tries.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parked: u32,
    /// The W3C trace context the work was sent in (the api's span), so the worker's
    /// spans join the submitter's trace. A handler gets its attempt's own context in
    /// `TRACEPARENT` (exec) or the `traceparent` header (http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// A W3C Trace Context (www.w3.org/TR/trace-context) as a message carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl WorkMessage {
    #[allow(clippy::expect_used)] // strings, a timestamp and an already-valid JSON value
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a WorkMessage always serialises")
    }

    /// The `Nats-Msg-Id` of this work's dead letter: the same for every delivery of one
    /// submission (so a worker that dies after dead-lettering does not store it twice),
    /// and new for each submission of the same id, such as a retry of a dead letter.
    pub fn dead_letter_id(&self) -> String {
        let micros = self.created_at.timestamp_micros();
        format!("{}.{micros}", self.id)
    }

    /// The record of this work while it is queued: the stream's message is its
    /// `pending` state, and no record is written for it.
    pub fn pending_record(&self) -> WorkRecord {
        WorkRecord {
            tenant: self.tenant.clone(),
            ttl: self.ttl,
            run_at: self.run_at,
            priority: self.priority,
            callback_url: self.callback_url.clone(),
            group: self.group.clone(),
            ..WorkRecord::pending(
                &self.task,
                self.key.as_deref(),
                &self.accepted_by,
                self.created_at,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn submissions_refuse_unknown_fields_with_their_name() {
        let err = serde_json::from_str::<WorkSubmission>(r#"{"data":1,"taks":"x"}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("taks"), "{err}");
        assert!(serde_json::from_str::<WorkSubmission>(r#"{"task":"x"}"#).is_err());
    }

    #[test]
    fn task_and_key_are_checked() {
        let mut work = WorkSubmission {
            data: json!(1),
            task: None,
            key: None,
            ttl: None,
            run_at: None,
            delay: None,
            priority: None,
            callback_url: None,
            group: None,
        };
        assert_eq!(work.validate(), Ok(()));
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a.*",
            "a.>",
            "ä",
            &"a".repeat(65),
        ] {
            work.task = Some(bad.into());
            assert_eq!(work.validate(), Err(SubmissionError::BadTask), "{bad:?}");
        }
        for good in ["addressing.address.reconcile", "a.b", &"a".repeat(64)] {
            work.task = Some(good.into());
            assert_eq!(work.validate(), Ok(()), "{good:?}");
        }
        work.task = Some("resize-image_2".into());
        work.key = Some(String::new());
        assert_eq!(work.validate(), Err(SubmissionError::BadKey));
    }

    #[test]
    fn a_ttl_is_a_duration_of_at_least_a_second_and_at_most_the_pools() {
        let with = |ttl: &str| WorkSubmission {
            data: json!(1),
            task: None,
            key: None,
            ttl: Some(ttl.into()),
            run_at: None,
            delay: None,
            priority: None,
            callback_url: None,
            group: None,
        };
        let pool = Duration::from_secs(600);
        assert_eq!(
            with("30s").ttl_within(pool),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(with("10m").ttl_within(pool), Ok(Some(pool)));
        for bad in ["", "soon", "500ms", "-1s", "30"] {
            assert_eq!(with(bad).validate(), Err(SubmissionError::BadTtl), "{bad}");
        }
        assert_eq!(
            with("11m").ttl_within(pool),
            Err(SubmissionError::TtlOverPool { max: "10m".into() })
        );
    }

    #[test]
    fn a_message_s_ttl_travels_to_its_records_and_shortens_their_life() {
        let message = WorkMessage {
            id: "0123456789abcdef0123456789abcdef".parse().expect("id"),
            task: "default".into(),
            key: None,
            data: json!(1),
            accepted_by: "api-0".into(),
            created_at: Utc::now(),
            tenant: None,
            ttl: Some(Duration::from_secs(5)),
            run_at: None,
            priority: Default::default(),
            callback_url: None,
            group: None,
            parked: 0,
            trace: None,
        };
        let back: WorkMessage = serde_json::from_slice(&message.to_json()).expect("json");
        assert_eq!(back, message);
        assert!(
            String::from_utf8(message.to_json())
                .expect("utf-8")
                .contains(r#""ttl":"5s""#)
        );
        let mut record = message.pending_record();
        assert_eq!(record.ttl, Some(Duration::from_secs(5)));
        record.status = crate::WorkStatus::Worked;
        let later = record.updated_at + chrono::Duration::seconds(6);
        assert!(crate::expiry::is_expired(
            &record,
            Duration::from_secs(600),
            later
        ));
        record.ttl = None;
        assert!(!crate::expiry::is_expired(
            &record,
            Duration::from_secs(600),
            later
        ));
    }

    #[test]
    fn idempotency_key_overrides_content() {
        let a = WorkSubmission {
            data: json!(1),
            task: None,
            key: None,
            ttl: None,
            run_at: None,
            delay: None,
            priority: None,
            callback_url: None,
            group: None,
        };
        let b = WorkSubmission {
            data: json!(2),
            task: None,
            key: None,
            ttl: None,
            run_at: None,
            delay: None,
            priority: None,
            callback_url: None,
            group: None,
        };
        assert_ne!(
            a.id(IdScope::default(), None),
            b.id(IdScope::default(), None)
        );
        let keyed = |work: &WorkSubmission| work.id(IdScope::default(), Some("order-7"));
        assert_eq!(keyed(&a), keyed(&b));
    }
}
