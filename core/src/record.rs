//! The work record kept in the results bucket, and the forward-only status rule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::priority::Priority;
use crate::progress::Progress;
use crate::webhook::WebhookDelivery;

/// Where a piece of work stands. `accepted` is only the POST answer, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkStatus {
    Pending,
    Working,
    Worked,
    Failed,
    Cancelled,
}

impl WorkStatus {
    fn rank(self) -> u8 {
        match self {
            WorkStatus::Pending => 0,
            WorkStatus::Working => 1,
            WorkStatus::Worked | WorkStatus::Failed | WorkStatus::Cancelled => 2,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 2
    }

    /// The forward-only rule: `pending < working < worked|failed|cancelled`. `working`
    /// may follow `working` (a new attempt); nothing follows a terminal status.
    pub fn may_become(self, next: WorkStatus) -> bool {
        next.rank() > self.rank() || (self == WorkStatus::Working && next == WorkStatus::Working)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkStatus::Pending => "pending",
            WorkStatus::Working => "working",
            WorkStatus::Worked => "worked",
            WorkStatus::Failed => "failed",
            WorkStatus::Cancelled => "cancelled",
        }
    }
}

/// The stored state of one piece of work, as `GET /api/v1/work/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkRecord {
    pub status: WorkStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error of the last failed attempt (kept while retrying, final when `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts started so far.
    pub attempts: u32,
    /// The pod that ran (or runs) the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// While `working`: the running attempt holds the work until then and renews the
    /// hold with its heartbeat; no other attempt starts before it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
    /// A DELETE asked for the work to be cancelled while it ran; the attempt that holds
    /// it stops and records `cancelled`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// The api pod that accepted the work.
    pub accepted_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The tenant that submitted the work, as on its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How long the record lives once terminal, when its submission asked for less than
    /// the pool's `resultTTL`, as on its message.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "30s")]
    pub ttl: Option<Duration>,
    /// Delayed work starts no earlier than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// What the handler of the latest attempt last reported of its progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// As submitted; `normal` is not shown.
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
    /// Where the record is POSTed once the work ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The group whose limits it runs within.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How the completion webhook's delivery stands; absent until its first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDelivery>,
}

/// A work record with its id: what `GET /api/v1/work/{id}` answers and a completion
/// webhook sends.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkView {
    pub id: crate::WorkId,
    #[serde(flatten)]
    pub record: WorkRecord,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("work status may not go from {from} to {to}")]
pub struct BackwardTransition {
    pub from: &'static str,
    pub to: &'static str,
}

impl WorkRecord {
    pub fn pending(task: &str, key: Option<&str>, accepted_by: &str, now: DateTime<Utc>) -> Self {
        Self {
            status: WorkStatus::Pending,
            result: None,
            error: None,
            attempts: 0,
            worker: None,
            lease_until: None,
            cancel_requested: false,
            task: task.to_owned(),
            key: key.map(str::to_owned),
            accepted_by: accepted_by.to_owned(),
            created_at: now,
            updated_at: now,
            tenant: None,
            ttl: None,
            run_at: None,
            progress: None,
            priority: Priority::Normal,
            callback_url: None,
            group: None,
            webhook: None,
        }
    }

    /// Moves to `next` if the forward-only rule allows it.
    pub fn advance(
        &mut self,
        next: WorkStatus,
        now: DateTime<Utc>,
    ) -> Result<(), BackwardTransition> {
        if !self.status.may_become(next) {
            return Err(BackwardTransition {
                from: self.status.as_str(),
                to: next.as_str(),
            });
        }
        self.status = next;
        self.updated_at = now;
        Ok(())
    }

    /// Whether a running attempt holds the work at `now` (its lease has not run out).
    pub fn is_held(&self, now: DateTime<Utc>) -> bool {
        self.status == WorkStatus::Working && self.lease_until.is_some_and(|until| until > now)
    }

    /// Whether the record still shows attempt `attempt` of `worker` as the running one.
    pub fn is_attempt_of(&self, worker: &str, attempt: u32) -> bool {
        self.status == WorkStatus::Working
            && self.attempts == attempt
            && self.worker.as_deref() == Some(worker)
    }

    #[allow(clippy::expect_used)] // only strings, numbers and already-valid JSON values
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a WorkRecord always serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::WorkStatus::*;
    use super::*;

    #[test]
    fn status_only_moves_forward() {
        let all = [Pending, Working, Worked, Failed, Cancelled];
        let allowed: Vec<(WorkStatus, WorkStatus)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Pending, Working),
                (Pending, Worked),
                (Pending, Failed),
                (Pending, Cancelled),
                (Working, Working),
                (Working, Worked),
                (Working, Failed),
                (Working, Cancelled),
            ]
        );
    }

    #[test]
    fn advance_refuses_going_back_and_keeps_the_record() {
        let now = Utc::now();
        let mut record = WorkRecord::pending("default", None, "api-0", now);
        record.advance(Worked, now).expect("forward");
        let before = record.clone();
        assert_eq!(
            record.advance(Working, now),
            Err(BackwardTransition {
                from: "worked",
                to: "working"
            })
        );
        assert_eq!(record, before);
    }

    #[test]
    fn a_lease_holds_only_while_working_and_unexpired() {
        let now = Utc::now();
        let mut record = WorkRecord::pending("default", None, "api-0", now);
        record.lease_until = Some(now + chrono::Duration::seconds(5));
        assert!(!record.is_held(now), "pending work is held by nobody");
        record.advance(Working, now).expect("forward");
        assert!(record.is_held(now));
        assert!(!record.is_held(now + chrono::Duration::seconds(5)));
        record.advance(Worked, now).expect("forward");
        assert!(!record.is_held(now));
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut record = WorkRecord::pending("echo", Some("k"), "api-0", Utc::now());
        record.result = Some(serde_json::json!({"x": 1}));
        assert_eq!(
            WorkRecord::from_json(&record.to_json()).expect("parse"),
            record
        );
    }
}
