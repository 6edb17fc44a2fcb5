//! Priorities of unkeyed work, and the rule by which a worker picks among them
//! (docs/worker.md, "Priorities").

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How soon queued work runs relative to other queued work of its pool.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Every priority, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn is_normal(&self) -> bool {
        *self == Priority::Normal
    }

    /// 0 for high, 1 for normal, 2 for low.
    pub fn index(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// After this many jobs started in a row from higher priorities while a lower one had
/// work waiting, a worker's next job is of the lower priority.
pub const STARVATION_LIMIT: u32 = 9;

/// The order in which one worker asks its priorities' queues for work: highest first,
/// except that a priority passed over [`STARVATION_LIMIT`] times comes first (lowest
/// first among such), so low work gets at least one start in ten under any backlog of
/// higher work.
#[derive(Debug, Default, Clone)]
pub struct Fairness {
    /// Per priority: jobs started from higher priorities since its last start, or since
    /// its queue was last found empty.
    passed_over: [u32; 3],
}

impl Fairness {
    /// The priorities to ask first for a single job, because they waited too long.
    pub fn overdue(&self) -> Vec<Priority> {
        Priority::ALL
            .into_iter()
            .rev()
            .filter(|p| self.passed_over[p.index()] >= STARVATION_LIMIT)
            .collect()
    }

    /// A job of `priority` started.
    pub fn started(&mut self, priority: Priority) {
        for other in Priority::ALL {
            let count = &mut self.passed_over[other.index()];
            if other == priority {
                *count = 0;
            } else if other > priority {
                *count = count.saturating_add(1);
            }
        }
    }

    /// `priority`'s queue had nothing: nothing of it waits, so it is not being passed over.
    pub fn found_empty(&mut self, priority: Priority) {
        self.passed_over[priority.index()] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a worker with a backlog in the given priorities taking `jobs` jobs one
    /// at a time, and returns how many of each it started.
    fn starts(backlog: &[Priority], jobs: usize) -> [usize; 3] {
        let mut fairness = Fairness::default();
        let mut counts = [0; 3];
        for _ in 0..jobs {
            let order = fairness.overdue().into_iter().chain(Priority::ALL);
            let mut picked = None;
            for priority in order {
                if backlog.contains(&priority) {
                    picked = Some(priority);
                    break;
                }
                fairness.found_empty(priority);
            }
            let priority = picked.expect("a backlog");
            fairness.started(priority);
            counts[priority.index()] += 1;
        }
        counts
    }

    #[test]
    fn high_goes_first_and_low_gets_one_start_in_ten() {
        use Priority::*;
        assert_eq!(starts(&[High, Low], 100), [90, 0, 10]);
        assert_eq!(starts(&[High, Normal], 100), [90, 10, 0]);
        assert_eq!(starts(&[Normal, Low], 100), [0, 90, 10]);
        let all = starts(&[High, Normal, Low], 100);
        assert!(all[0] >= 80 && all[1] >= 9 && all[2] >= 9, "{all:?}");
        assert_eq!(starts(&[Low], 10), [0, 0, 10]);
    }

    #[test]
    fn serialises_lowercase_and_defaults_to_normal() {
        assert_eq!(
            serde_json::to_string(&Priority::High).expect("json"),
            r#""high""#
        );
        let parsed: Priority = serde_json::from_str(r#""low""#).expect("low");
        assert_eq!(parsed, Priority::Low);
        assert!(serde_json::from_str::<Priority>(r#""urgent""#).is_err());
        assert!(Priority::default().is_normal());
    }
}
