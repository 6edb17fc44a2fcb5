//! Events published (core NATS, fire and forget) on every transition of a piece of work.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::WorkId;
use crate::names::PoolNames;

/// The verbs of `wp.<ns>.<pool>.events.work.<verb>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkEventKind {
    Accepted,
    Started,
    Worked,
    Failed,
    Retried,
    Cancelled,
}

impl WorkEventKind {
    pub fn verb(self) -> &'static str {
        match self {
            WorkEventKind::Accepted => "accepted",
            WorkEventKind::Started => "started",
            WorkEventKind::Worked => "worked",
            WorkEventKind::Failed => "failed",
            WorkEventKind::Retried => "retried",
            WorkEventKind::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkEvent {
    pub event: WorkEventKind,
    pub id: WorkId,
    pub task: String,
    /// The pod that made the transition.
    pub by: String,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

impl WorkEvent {
    pub fn subject(&self, names: &PoolNames) -> String {
        names.event_subject("work", self.event.verb(), &self.task)
    }
}
