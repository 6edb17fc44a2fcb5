//! What clients submit and what travels on the work stream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{IdScope, WorkId};
use crate::record::WorkRecord;

/// The task name used when a submission names none.
pub const DEFAULT_TASK: &str = "default";

/// The header carrying the KV revision the work was accepted on: that of the expired
/// record (or expiry marker) the api found for its id, or `0` for none. The worker's
/// first compare-and-set goes on it, with no read.
pub const RECORD_REVISION_HEADER: &str = "Workpool-Record-Revision";

/// The body of `POST /api/v1/work`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkSubmission {
    /// Any JSON value; the handler gets it as it is.
    pub data: serde_json::Value,
    /// A name for the kind of work (letters, digits, '-' and '_', at most 64); it labels
    /// metrics and is passed to the handler. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub task: Option<String>,
    /// Work with the same key runs one at a time, in order (1-256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub key: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmissionError {
    #[error("task must be 1-64 characters of letters, digits, '-' and '_'")]
    BadTask,
    #[error("key must be 1-256 bytes")]
    BadKey,
}

impl WorkSubmission {
    pub fn task(&self) -> &str {
        self.task.as_deref().unwrap_or(DEFAULT_TASK)
    }

    pub fn validate(&self) -> Result<(), SubmissionError> {
        let task = self.task();
        let task_ok = (1..=64).contains(&task.len())
            && task
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !task_ok {
            return Err(SubmissionError::BadTask);
        }
        if let Some(key) = &self.key
            && !(1..=256).contains(&key.len())
        {
            return Err(SubmissionError::BadKey);
        }
        Ok(())
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
}

impl WorkMessage {
    #[allow(clippy::expect_used)] // strings, a timestamp and an already-valid JSON value
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a WorkMessage always serialises")
    }

    /// The record of this work while it is queued: the stream's message is its
    /// `pending` state, and no record is written for it.
    pub fn pending_record(&self) -> WorkRecord {
        WorkRecord {
            tenant: self.tenant.clone(),
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
        };
        assert_eq!(work.validate(), Ok(()));
        work.task = Some("a.b".into());
        assert_eq!(work.validate(), Err(SubmissionError::BadTask));
        work.task = Some("resize-image_2".into());
        work.key = Some(String::new());
        assert_eq!(work.validate(), Err(SubmissionError::BadKey));
    }

    #[test]
    fn idempotency_key_overrides_content() {
        let a = WorkSubmission {
            data: json!(1),
            task: None,
            key: None,
        };
        let b = WorkSubmission {
            data: json!(2),
            task: None,
            key: None,
        };
        assert_ne!(
            a.id(IdScope::default(), None),
            b.id(IdScope::default(), None)
        );
        let keyed = |work: &WorkSubmission| work.id(IdScope::default(), Some("order-7"));
        assert_eq!(keyed(&a), keyed(&b));
    }
}
