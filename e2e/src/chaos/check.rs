//! The invariants, judged from the recorded history and the ledger alone. Each is a
//! count; a run passes when every violation count is zero.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::history::{History, Intent, Submission};
use super::ledger::Execution;

/// Clock slack when matching a record's `created_at` to the POST that made it.
const SLACK_NS: u128 = 50_000_000;

/// One submission generation: a work id and the `created_at` of the record made for it.
type Generation = (String, String);

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub submissions: usize,
    pub accepted: usize,
    pub executions: usize,
    pub cancels_confirmed: usize,
    pub cancels_requested: usize,
    /// Accepted work that ended with no terminal record and no confirmed cancel.
    pub lost: usize,
    /// Accepted work still `pending` or `working` after the drain.
    pub stuck: usize,
    /// Generations with more than one terminal record.
    pub extra_terminals: usize,
    /// `worked` records whose handler never ran.
    pub phantom_results: usize,
    /// Executions beyond the first per generation (allowed: at least once).
    pub duplicate_executions: usize,
    /// Pairs of executions of one key that overlapped in time.
    pub keyed_overlaps: usize,
    /// Keyed pairs where B started before A though A's 2xx came before B was sent.
    pub order_violations: usize,
    /// DELETEs answered `cancelled` while (or before) a handler ran the work.
    pub cancelled_while_running: usize,
    /// Resubmissions after expiry: how many, and how many did not run again.
    pub after_expiry: usize,
    pub after_expiry_not_run: usize,
    /// Resubmissions while the record lived that were queued again.
    pub while_live_requeued: usize,
    /// Promises of the platform broken while faults were applied: a force-deleted pod's
    /// processes still running, a refused spec change accepted.
    pub platform_broken: usize,
    /// What each violation was, for the first few (to debug and replay).
    pub evidence: Vec<String>,
}

/// How many violations are described in [`Report::evidence`].
const EVIDENCE: usize = 20;

impl Report {
    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.evidence.len() < EVIDENCE {
            self.evidence.push(what());
        }
    }
}

impl Report {
    pub fn violations(&self) -> usize {
        self.lost
            + self.stuck
            + self.extra_terminals
            + self.phantom_results
            + self.keyed_overlaps
            + self.order_violations
            + self.cancelled_while_running
            + self.after_expiry_not_run
            + self.platform_broken
    }
}

fn rfc3339_ns(text: &str) -> Option<u128> {
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u128::try_from(at.timestamp_nanos_opt()?).ok()
}

/// Every generation known for an id (from executions and terminal records).
fn generations(history: &History, runs: &[Execution]) -> HashMap<String, Vec<(u128, String)>> {
    let mut by_id: HashMap<String, HashSet<String>> = HashMap::new();
    for run in runs {
        by_id
            .entry(run.id.clone())
            .or_default()
            .insert(run.created_at.clone());
    }
    for terminal in &history.terminals {
        by_id
            .entry(terminal.id.clone())
            .or_default()
            .insert(terminal.created_at.clone());
    }
    for cancel in &history.cancels {
        if let Some(created) = &cancel.created_at {
            by_id
                .entry(cancel.id.clone())
                .or_default()
                .insert(created.clone());
        }
    }
    for last in &history.finals {
        if let Some(created) = &last.created_at {
            by_id
                .entry(last.id.clone())
                .or_default()
                .insert(created.clone());
        }
    }
    by_id
        .into_iter()
        .map(|(id, created)| {
            let mut list: Vec<(u128, String)> = created
                .into_iter()
                .filter_map(|text| Some((rfc3339_ns(&text)?, text)))
                .collect();
            list.sort();
            (id, list)
        })
        .collect()
}

/// The generation a `202` created: the one whose record was made while the POST ran.
fn generation_of(
    submission: &Submission,
    known: &HashMap<String, Vec<(u128, String)>>,
) -> Option<Generation> {
    let from = submission.sent_ns.saturating_sub(SLACK_NS);
    let to = submission.answered_ns + SLACK_NS;
    known
        .get(&submission.id)?
        .iter()
        .find(|(at, _)| (from..=to).contains(at))
        .map(|(_, text)| (submission.id.clone(), text.clone()))
}

/// When an execution may have ended: its end line, or (killed) its last tick, but never
/// later than its start plus its run time.
fn end_of(run: &Execution, run_ms: u64) -> u128 {
    run.ended_by()
        .min(run.start_ns + u128::from(run_ms) * 1_000_000)
        .max(run.end_ns.unwrap_or(0))
}

pub fn check(history: &History, runs: &[Execution]) -> Report {
    let known = generations(history, runs);
    let mut report = Report {
        submissions: history.submissions.len(),
        executions: runs.len(),
        platform_broken: history.platform_broken.len(),
        evidence: history
            .platform_broken
            .iter()
            .take(EVIDENCE)
            .cloned()
            .collect(),
        ..Report::default()
    };
    let run_ms: HashMap<&str, u64> = history
        .submissions
        .iter()
        .map(|s| (s.id.as_str(), s.run_ms))
        .collect();
    let mut runs_of: HashMap<Generation, Vec<&Execution>> = HashMap::new();
    for run in runs {
        runs_of
            .entry((run.id.clone(), run.created_at.clone()))
            .or_default()
            .push(run);
    }
    let mut terminals_of: HashMap<Generation, HashSet<(&str, &str)>> = HashMap::new();
    for t in &history.terminals {
        terminals_of
            .entry((t.id.clone(), t.created_at.clone()))
            .or_default()
            .insert((t.status.as_str(), t.updated_at.as_str()));
    }
    for (generation, terminals) in &terminals_of {
        if terminals.len() > 1 {
            report.extra_terminals += terminals.len() - 1;
            report.note(|| format!("extra terminal records: {generation:?}: {terminals:?}"));
        }
    }
    for (generation, terminals) in &terminals_of {
        let worked = terminals.iter().any(|(status, _)| *status == "worked");
        if worked
            && !runs_of
                .get(generation)
                .is_some_and(|r| r.iter().any(|r| r.end_ns.is_some()))
        {
            report.phantom_results += 1;
        }
    }
    for runs in runs_of.values() {
        report.duplicate_executions += runs.len().saturating_sub(1);
    }
    check_cancels(history, &runs_of, &run_ms, &mut report);
    let cancelled: HashSet<Generation> = confirmed_cancels(history);
    let mut accepted: Vec<(&Submission, Option<Generation>)> = Vec::new();
    for submission in &history.submissions {
        match submission.intent {
            Intent::WhileLive if submission.accepted() => report.while_live_requeued += 1,
            Intent::AfterExpiry => report.after_expiry += 1,
            _ => {}
        }
        if !submission.accepted() {
            continue;
        }
        report.accepted += 1;
        let generation = generation_of(submission, &known);
        let ended = generation
            .as_ref()
            .is_some_and(|g| terminals_of.contains_key(g))
            || generation.as_ref().is_some_and(|g| cancelled.contains(g));
        if !ended {
            let queued = history
                .finals
                .iter()
                .any(|f| f.id == submission.id && f.queued);
            let still_open = queued
                || generation.as_ref().is_some_and(|(id, created)| {
                    history.finals.iter().any(|f| {
                        &f.id == id
                            && f.created_at.as_ref() == Some(created)
                            && matches!(f.status.as_deref(), Some("pending" | "working"))
                    })
                });
            if still_open {
                report.stuck += 1;
                report.note(|| format!("stuck: {submission:?} ({generation:?})"));
            } else {
                report.lost += 1;
                report.note(|| format!("lost: {submission:?} ({generation:?})"));
                if submission.intent == Intent::AfterExpiry {
                    report.after_expiry_not_run += 1;
                }
            }
        }
        accepted.push((submission, generation));
    }
    check_keys(runs, &run_ms, &mut report);
    check_order(&accepted, &runs_of, &cancelled, &mut report);
    report
}

fn confirmed_cancels(history: &History) -> HashSet<Generation> {
    history
        .cancels
        .iter()
        .filter(|c| c.code == 200 && c.status == "cancelled")
        .filter_map(|c| Some((c.id.clone(), c.created_at.clone()?)))
        .collect()
}

/// A DELETE answered `cancelled` at T: no execution of that generation may run at T or
/// start after it.
fn check_cancels(
    history: &History,
    runs_of: &HashMap<Generation, Vec<&Execution>>,
    run_ms: &HashMap<&str, u64>,
    report: &mut Report,
) {
    for cancel in &history.cancels {
        match (cancel.code, cancel.status.as_str()) {
            (200, "cancelled") => report.cancels_confirmed += 1,
            (202, _) => {
                report.cancels_requested += 1;
                continue;
            }
            _ => continue,
        }
        let Some(created) = &cancel.created_at else {
            continue;
        };
        let ms = run_ms.get(cancel.id.as_str()).copied().unwrap_or(0);
        let runs = runs_of.get(&(cancel.id.clone(), created.clone()));
        let ran_on = runs.into_iter().flatten().any(|run| {
            run.start_ns > cancel.answered_ns
                || (run.start_ns < cancel.answered_ns && end_of(run, ms) > cancel.answered_ns)
        });
        if ran_on {
            report.cancelled_while_running += 1;
            report.note(|| format!("cancelled while running: {cancel:?}; runs {runs:?}"));
        }
    }
}

/// No two executions of one key overlap.
fn check_keys(runs: &[Execution], run_ms: &HashMap<&str, u64>, report: &mut Report) {
    let mut by_key: HashMap<&str, Vec<&Execution>> = HashMap::new();
    for run in runs {
        if let Some(key) = &run.key {
            by_key.entry(key).or_default().push(run);
        }
    }
    for runs in by_key.values_mut() {
        runs.sort_by_key(|run| run.start_ns);
        let mut busy: Option<(u128, &Execution)> = None;
        for run in runs.iter() {
            if let Some((busy_until, earlier)) = busy.filter(|(until, _)| run.start_ns < *until) {
                report.keyed_overlaps += 1;
                report.note(|| {
                    format!(
                        "keyed overlap: {run:?} started before {busy_until}, the end of {earlier:?}"
                    )
                });
            }
            let ms = run_ms.get(run.id.as_str()).copied().unwrap_or(0);
            let end = end_of(run, ms);
            if busy.is_none_or(|(until, _)| end > until) {
                busy = Some((end, run));
            }
        }
    }
}

/// Per key: when A's 2xx came back before B was sent, A starts first.
fn check_order(
    accepted: &[(&Submission, Option<Generation>)],
    runs_of: &HashMap<Generation, Vec<&Execution>>,
    cancelled: &HashSet<Generation>,
    report: &mut Report,
) {
    let first_start = |generation: &Option<Generation>| {
        let generation = generation.as_ref()?;
        if cancelled.contains(generation) {
            return None;
        }
        runs_of
            .get(generation)?
            .iter()
            .map(|run| run.start_ns)
            .min()
    };
    let mut by_key: HashMap<&str, Vec<(u128, u128, u128)>> = HashMap::new();
    for (submission, generation) in accepted {
        if let (Some(key), Some(start)) = (&submission.key, first_start(generation)) {
            by_key.entry(key).or_default().push((
                submission.sent_ns,
                submission.answered_ns,
                start,
            ));
        }
    }
    for jobs in by_key.values() {
        for a in jobs {
            report.order_violations += jobs.iter().filter(|b| a.1 < b.0 && b.2 < a.2).count();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::{Cancel, Terminal};
    use super::*;

    const T0: u128 = 1_700_000_000_000_000_000;

    fn created(offset_ms: u128) -> String {
        let ns = i64::try_from(T0 + offset_ms * 1_000_000).expect("fits");
        chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339()
    }

    fn ms(offset: u128) -> u128 {
        T0 + offset * 1_000_000
    }

    fn submission(id: &str, key: Option<&str>, sent: u128, answered: u128) -> Submission {
        Submission {
            id: id.into(),
            key: key.map(str::to_owned),
            intent: Intent::Fresh,
            sent_ns: ms(sent),
            answered_ns: ms(answered),
            code: 202,
            status: "accepted".into(),
            run_ms: 10,
        }
    }

    fn run(id: &str, created_ms: u128, key: Option<&str>, start: u128, end: u128) -> Execution {
        Execution {
            id: id.into(),
            created_at: created(created_ms),
            key: key.map(str::to_owned),
            start_ns: ms(start),
            end_ns: Some(ms(end)),
            last_seen_ns: ms(end),
            gone_ns: None,
            origin: "-".into(),
        }
    }

    fn worked(id: &str, created_ms: u128) -> Terminal {
        Terminal {
            id: id.into(),
            created_at: created(created_ms),
            status: "worked".into(),
            updated_at: "u".into(),
            worker: None,
            revision: 1,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let history = History {
            submissions: vec![
                submission("a", Some("k"), 0, 2),
                submission("b", Some("k"), 3, 5),
            ],
            terminals: vec![worked("a", 1), worked("b", 4)],
            ..History::default()
        };
        let runs = [
            run("a", 1, Some("k"), 10, 20),
            run("b", 4, Some("k"), 21, 30),
        ];
        let report = check(&history, &runs);
        assert_eq!(report.violations(), 0, "{report:?}");
        assert_eq!(report.accepted, 2);
    }

    #[test]
    fn lost_overlapping_out_of_order_and_phantom_work_is_counted() {
        let history = History {
            submissions: vec![
                submission("a", Some("k"), 0, 2),
                submission("b", Some("k"), 3, 5),
                submission("lost", None, 6, 7),
            ],
            terminals: vec![worked("a", 1), worked("b", 4), worked("ghost", 100)],
            ..History::default()
        };
        // b starts before a, and they overlap.
        let runs = [
            run("b", 4, Some("k"), 10, 30),
            run("a", 1, Some("k"), 20, 40),
        ];
        let report = check(&history, &runs);
        assert_eq!(report.lost, 1, "{report:?}");
        assert_eq!(report.keyed_overlaps, 1, "{report:?}");
        assert_eq!(report.order_violations, 1, "{report:?}");
        assert_eq!(report.phantom_results, 1, "{report:?}");
    }

    #[test]
    fn a_cancel_answered_while_the_handler_ran_is_counted() {
        let history = History {
            submissions: vec![submission("a", None, 0, 2)],
            cancels: vec![Cancel {
                id: "a".into(),
                sent_ns: ms(14),
                answered_ns: ms(15),
                code: 200,
                status: "cancelled".into(),
                created_at: Some(created(1)),
            }],
            ..History::default()
        };
        let report = check(&history, &[run("a", 1, None, 10, 20)]);
        assert_eq!(report.cancelled_while_running, 1, "{report:?}");
        assert_eq!(
            report.lost, 0,
            "a confirmed cancel ends the work: {report:?}"
        );
    }

    #[test]
    fn new_content_answered_200_after_retries_is_promised_work_too() {
        // The first try's answer was lost; the retry found the record it had made.
        let mut retried = submission("a", None, 0, 2);
        retried.code = 200;
        retried.status = "pending".into();
        let mut live = submission("a", None, 3, 4);
        live.intent = Intent::WhileLive;
        live.code = 200;
        let history = History {
            submissions: vec![retried, live],
            ..History::default()
        };
        let report = check(&history, &[]);
        assert_eq!((report.accepted, report.lost), (1, 1), "{report:?}");
    }

    #[test]
    fn a_platform_promise_broken_by_a_fault_is_a_violation() {
        let history = History {
            platform_broken: vec!["pod x: processes [1] still run".into()],
            ..History::default()
        };
        let report = check(&history, &[]);
        assert_eq!(report.violations(), 1, "{report:?}");
        assert_eq!(report.evidence.len(), 1);
    }

    #[test]
    fn a_resubmission_after_expiry_that_never_ran_is_counted() {
        let mut again = submission("a", None, 100, 102);
        again.intent = Intent::AfterExpiry;
        let history = History {
            submissions: vec![submission("a", None, 0, 2), again],
            terminals: vec![worked("a", 1)],
            ..History::default()
        };
        let report = check(&history, &[run("a", 1, None, 10, 20)]);
        assert_eq!(
            (report.lost, report.after_expiry_not_run),
            (1, 1),
            "{report:?}"
        );
    }
}
