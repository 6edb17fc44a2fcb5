//! Standard metav1 Conditions for a WorkPool's status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const QUEUE_READY: &str = "QueueReady";
pub const API_AVAILABLE: &str = "ApiAvailable";
pub const WORKERS_AVAILABLE: &str = "WorkersAvailable";

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

#[cfg(test)]
mod tests {
    use super::*;

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
