//! Standard metav1 Conditions for a WorkPool's status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use workpool_core::crd::{ReplicaStatus, WorkPoolStatus};

pub const READY: &str = "Ready";
pub const QUEUE_READY: &str = "QueueReady";
pub const API_AVAILABLE: &str = "ApiAvailable";
pub const WORKERS_AVAILABLE: &str = "WorkersAvailable";
/// Set while a deletion waits for the pool's NATS objects to go.
pub const DELETING: &str = "Deleting";

/// A condition; its transition time is kept from `previous` when the status is unchanged.
pub fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map_or_else(
            || Time(k8s_openapi::jiff::Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// What a reconcile changed in a pool's status, in words for its log line: a newly
/// observed generation, conditions that flipped, ready or desired pods that moved.
pub fn changes(previous: &WorkPoolStatus, next: &WorkPoolStatus) -> Vec<String> {
    let mut changes = Vec::new();
    if previous.observed_generation != next.observed_generation {
        changes.push(format!(
            "generation {} applied",
            next.observed_generation.unwrap_or(0)
        ));
    }
    for condition in &next.conditions {
        let before = previous
            .conditions
            .iter()
            .find(|c| c.type_ == condition.type_)
            .map_or("Unknown", |c| c.status.as_str());
        if before != condition.status {
            changes.push(format!(
                "{} {before}->{} ({})",
                condition.type_, condition.status, condition.reason
            ));
        }
    }
    for (component, before, after) in [
        ("api", &previous.api, &next.api),
        ("workers", &previous.workers, &next.workers),
    ] {
        let pair = |status: &Option<ReplicaStatus>| {
            status.as_ref().map_or((0, 0), |s| (s.ready, s.desired))
        };
        let ((ready_before, desired_before), (ready, desired)) = (pair(before), pair(after));
        if desired_before != desired {
            changes.push(format!("{component} desired {desired_before}->{desired}"));
        }
        if ready_before != ready {
            changes.push(format!("{component} ready {ready_before}->{ready}"));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_what_moved_and_nothing_else() {
        let before = WorkPoolStatus {
            observed_generation: Some(1),
            conditions: vec![condition(
                READY,
                false,
                "Starting",
                "x".into(),
                Some(1),
                &[],
            )],
            api: Some(ReplicaStatus::new(1, 2, "s".into())),
            workers: Some(ReplicaStatus::new(2, 2, "s".into())),
            ..Default::default()
        };
        assert!(changes(&before, &before).is_empty());
        let after = WorkPoolStatus {
            observed_generation: Some(2),
            conditions: vec![condition(READY, true, "Ready", "y".into(), Some(2), &[])],
            api: Some(ReplicaStatus::new(2, 2, "s".into())),
            workers: Some(ReplicaStatus::new(2, 4, "s".into())),
            ..Default::default()
        };
        assert_eq!(
            changes(&before, &after),
            [
                "generation 2 applied",
                "Ready False->True (Ready)",
                "api ready 1->2",
                "workers desired 2->4",
            ]
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = condition(READY, false, "Starting", "x".into(), Some(1), &[]);
        let same = condition(
            READY,
            false,
            "Starting",
            "y".into(),
            Some(2),
            std::slice::from_ref(&first),
        );
        assert_eq!(same.last_transition_time, first.last_transition_time);
        assert_eq!(same.observed_generation, Some(2));
        let flipped = condition(
            READY,
            true,
            "Ready",
            "z".into(),
            Some(2),
            std::slice::from_ref(&first),
        );
        assert_eq!(flipped.status, "True");
    }
}
