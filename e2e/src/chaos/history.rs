//! What the clients did and saw, in the order they did it: the history the checker judges.

use serde::Serialize;

/// Why the workload sent a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Intent {
    /// New content.
    Fresh,
    /// The same content again while its record lives: must not queue it twice.
    WhileLive,
    /// The same content again after its record expired: must run again.
    AfterExpiry,
}

/// One POST as the client finally saw it (after its own retries).
#[derive(Debug, Clone, Serialize)]
pub struct Submission {
    pub id: String,
    pub key: Option<String>,
    pub intent: Intent,
    /// When the first try was sent and when the final answer came back (unix ns).
    pub sent_ns: u128,
    pub answered_ns: u128,
    /// The final HTTP status (0: no answer at all).
    pub code: u16,
    /// The `status` field of the answer (`accepted`, or the existing record's status).
    pub status: String,
    /// How long the handler runs (the data's `ms`).
    pub run_ms: u64,
}

impl Submission {
    /// Work that Workpool promised to run: answered `202`, or `200` for new content, which
    /// means an earlier try of this same POST (answered 503 or cut off) left its record.
    pub fn accepted(&self) -> bool {
        self.code == 202 || (self.code == 200 && self.intent == Intent::Fresh)
    }
}

/// One DELETE as the client finally saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Cancel {
    pub id: String,
    pub sent_ns: u128,
    pub answered_ns: u128,
    pub code: u16,
    /// The record's status in the answer (`cancelled` for 200, `working` for 202).
    pub status: String,
    /// The generation of the record in the answer.
    pub created_at: Option<String>,
}

/// The last record the checker read for an id after the run, with its generation.
#[derive(Debug, Clone, Serialize)]
pub struct Final {
    pub id: String,
    /// `None`: 404 (expired or never existed).
    pub status: Option<String>,
    pub created_at: Option<String>,
    /// Its message was still in the work stream at the end: queued, not lost.
    pub queued: bool,
}

/// A terminal record seen by the watchers during the run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Terminal {
    pub id: String,
    pub created_at: String,
    pub status: String,
    pub updated_at: String,
    /// Who wrote it (the worker, or `None` for the api) and the bucket's revision.
    pub worker: Option<String>,
    pub revision: u64,
}

/// Everything recorded in one run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct History {
    pub submissions: Vec<Submission>,
    pub cancels: Vec<Cancel>,
    pub terminals: Vec<Terminal>,
    pub finals: Vec<Final>,
    /// Faults injected, in order, as text (for the report and replay).
    pub faults: Vec<String>,
    /// What the faults found broken in the platform itself (see `Report::platform_broken`).
    pub platform_broken: Vec<String>,
    /// The stream and keyed consumers at the end, when work was left open.
    pub queue_at_end: Vec<String>,
}
