//! A WorkPool's status, computed from what a reconcile observed (no API calls): its
//! standard metav1 Conditions, replica counts, queue figures and endpoint.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use workpool_core::crd::{QueueStatus, ReplicaStatus, WorkPoolStatus};

use crate::children::{self, Component};
use crate::error::Error;
use crate::rollout::QueueOutcome;

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

/// Ready pods of a component and how many it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pods {
    pub ready: i32,
    pub wanted: i32,
}

impl Pods {
    /// At least one pod is ready, or none is wanted.
    fn available(self) -> bool {
        self.ready >= self.wanted.min(1)
    }
}

/// What one reconcile saw of a pool: everything its status follows from.
#[derive(Debug)]
pub struct Observed<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub queue: &'a QueueOutcome,
    /// Why the pods do not get the new settings, if they do not.
    pub held: Option<&'a str>,
    pub api: Pods,
    pub workers: Pods,
    /// Work in and out per second since the previous look, if there was one.
    pub rates: Option<crate::rates::Rates>,
}

/// The pool's status after a reconcile. Queue figures and the provisioned generation
/// stay as they were while NATS does not give new ones.
pub fn pool_status(seen: &Observed<'_>, previous: &WorkPoolStatus) -> WorkPoolStatus {
    let replicas = |pods: Pods, component| {
        ReplicaStatus::new(
            pods.ready,
            pods.wanted,
            children::selector_string(seen.name, component),
        )
    };
    let queue = seen.queue.figures.as_ref().ok().map(|f| QueueStatus {
        pending: f.pending,
        in_flight: f.in_flight,
        dead_letters: f.dead_letters,
        scheduled: f.scheduled,
        oldest_pending: f.oldest_pending.map(|at| at.to_rfc3339()),
        in_per_second: seen.rates.map(|r| r.in_per_second),
        out_per_second: seen.rates.map(|r| r.out_per_second),
    });
    WorkPoolStatus {
        observed_generation: seen.generation,
        conditions: conditions(seen, &previous.conditions),
        api: Some(replicas(seen.api, Component::Api)),
        workers: Some(replicas(seen.workers, Component::Worker)),
        queue: queue.or_else(|| previous.queue.clone()),
        endpoint: Some(format!(
            "http://{}.{}.svc",
            children::deployment_name(seen.name, Component::Api),
            seen.namespace
        )),
        provisioned_generation: if seen.queue.accepted {
            seen.generation
        } else {
            previous.provisioned_generation
        },
        adopted: previous
            .adopted
            .clone()
            .or_else(|| seen.queue.adopted.clone()),
        schedules: match &seen.queue.ticks {
            Some(Ok(schedules)) => schedules.clone(),
            _ => previous.schedules.clone(),
        },
    }
}

/// Ready, QueueReady, ApiAvailable and WorkersAvailable, in that order.
fn conditions(seen: &Observed<'_>, previous: &[Condition]) -> Vec<Condition> {
    let make = |kind, ok, reason: &str, message| {
        condition(kind, ok, reason, message, seen.generation, previous)
    };
    let (api, workers) = (seen.api, seen.workers);
    let (queue_ok, api_ok, workers_ok) = (
        seen.queue.figures.is_ok(),
        api.available(),
        workers.available(),
    );
    let ready_reason = match (queue_ok, api_ok, workers_ok) {
        (true, true, true) => "Ready",
        (false, _, _) => "QueueNotReady",
        (_, false, _) => "ApiUnavailable",
        _ => "WorkersUnavailable",
    };
    let availability = |ok| {
        if ok {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        }
    };
    let queue = match &seen.queue.figures {
        Ok(_) => make(
            QUEUE_READY,
            true,
            "Provisioned",
            "stream, bucket and consumers match the spec".into(),
        ),
        Err(err) => make(
            QUEUE_READY,
            false,
            err.category(),
            queue_message(err, seen.held),
        ),
    };
    vec![
        make(
            READY,
            queue_ok && api_ok && workers_ok,
            ready_reason,
            format!(
                "api {}/{}, workers {}/{}",
                api.ready, api.wanted, workers.ready, workers.wanted
            ),
        ),
        queue,
        make(
            API_AVAILABLE,
            api_ok,
            availability(api_ok),
            format!("{} of {} api pods ready", api.ready, api.wanted),
        ),
        make(
            WORKERS_AVAILABLE,
            workers_ok,
            availability(workers_ok),
            format!("{} of {} worker pods ready", workers.ready, workers.wanted),
        ),
    ]
}

/// A queue problem in words, with why the pods do not get the new settings, if they do
/// not (the QueueReady message and the Warning event's note).
pub fn queue_message(err: &Error, held: Option<&str>) -> String {
    match held {
        Some(note) => format!("{err}; {note}"),
        None => err.to_string(),
    }
}

/// The status of a pool that an error retrying cannot fix stopped before it reached
/// NATS: Ready and QueueReady say why; the rest stays as it was.
pub fn stuck_status(
    previous: &WorkPoolStatus,
    generation: Option<i64>,
    error: &Error,
) -> WorkPoolStatus {
    let make = |kind| {
        condition(
            kind,
            false,
            error.category(),
            error.to_string(),
            generation,
            &previous.conditions,
        )
    };
    WorkPoolStatus {
        observed_generation: generation,
        conditions: vec![make(READY), make(QUEUE_READY)],
        ..previous.clone()
    }
}

/// `status` with the [`DELETING`] condition set to say why a deletion waits.
pub fn deleting_status(
    mut status: WorkPoolStatus,
    generation: Option<i64>,
    error: &Error,
    message: String,
) -> WorkPoolStatus {
    let deleting = condition(
        DELETING,
        true,
        error.category(),
        message,
        generation,
        &status.conditions,
    );
    status.conditions.retain(|c| c.type_ != DELETING);
    status.conditions.push(deleting);
    status
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
    use crate::error::NatsError;
    use crate::fixtures::{refused, unreachable};
    use crate::queue::QueueFigures;
    use crate::rollout;
    use workpool_core::crd::AdoptedStatus;

    fn figures() -> QueueFigures {
        QueueFigures {
            pending: 5,
            in_flight: 2,
            dead_letters: 1,
            scheduled: 4,
            oldest_pending: "2026-12-07T10:00:00Z".parse().ok(),
            published: 100,
            stored: 12,
        }
    }

    fn accepted() -> QueueOutcome {
        QueueOutcome {
            accepted: true,
            figures: Ok(figures()),
            adopted: None,
            ticks: None,
        }
    }

    fn failed(err: Error) -> QueueOutcome {
        QueueOutcome::failed(err)
    }

    /// Generation 3 of `ns/demo` with `api` and `workers` as (ready, wanted).
    fn seen(queue: &QueueOutcome, api: (i32, i32), workers: (i32, i32)) -> Observed<'_> {
        Observed {
            namespace: "ns",
            name: "demo",
            generation: Some(3),
            queue,
            held: None,
            api: Pods {
                ready: api.0,
                wanted: api.1,
            },
            workers: Pods {
                ready: workers.0,
                wanted: workers.1,
            },
            rates: Some(crate::rates::Rates {
                in_per_second: 12.5,
                out_per_second: 10.0,
            }),
        }
    }

    /// A condition's status, reason and message.
    fn get<'a>(status: &'a WorkPoolStatus, kind: &str) -> (&'a str, &'a str, &'a str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind} condition in {:?}", status.conditions));
        (&c.status, &c.reason, &c.message)
    }

    fn transition(status: &WorkPoolStatus, kind: &str) -> Time {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.last_transition_time.clone())
            .expect("condition")
    }

    fn ready_pool() -> WorkPoolStatus {
        pool_status(
            &seen(&accepted(), (2, 2), (3, 3)),
            &WorkPoolStatus::default(),
        )
    }

    #[test]
    fn a_pool_with_its_queue_and_pods_up_is_ready() {
        let status = ready_pool();
        let kinds: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            kinds,
            [READY, QUEUE_READY, API_AVAILABLE, WORKERS_AVAILABLE]
        );
        assert_eq!(
            get(&status, READY),
            ("True", "Ready", "api 2/2, workers 3/3")
        );
        assert_eq!(
            get(&status, QUEUE_READY),
            (
                "True",
                "Provisioned",
                "stream, bucket and consumers match the spec"
            )
        );
        assert_eq!(
            get(&status, API_AVAILABLE),
            ("True", "MinimumReplicasAvailable", "2 of 2 api pods ready")
        );
        assert_eq!(
            get(&status, WORKERS_AVAILABLE),
            (
                "True",
                "MinimumReplicasAvailable",
                "3 of 3 worker pods ready"
            )
        );
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.provisioned_generation, Some(3));
        assert_eq!(
            status.api,
            Some(ReplicaStatus::new(
                2,
                2,
                "app.kubernetes.io/component=api,app.kubernetes.io/instance=demo".into()
            ))
        );
        assert_eq!(
            status.workers,
            Some(ReplicaStatus::new(
                3,
                3,
                "app.kubernetes.io/component=worker,app.kubernetes.io/instance=demo".into()
            ))
        );
        assert_eq!(
            status.queue,
            Some(QueueStatus {
                pending: 5,
                in_flight: 2,
                dead_letters: 1,
                scheduled: 4,
                oldest_pending: Some("2026-12-07T10:00:00+00:00".into()),
                in_per_second: Some(12.5),
                out_per_second: Some(10.0),
            })
        );
        assert_eq!(status.endpoint.as_deref(), Some("http://demo-api.ns.svc"));
    }

    #[test]
    fn a_pool_whose_pods_are_starting_is_not_ready_and_says_which() {
        let none_up = pool_status(
            &seen(&accepted(), (0, 2), (0, 3)),
            &WorkPoolStatus::default(),
        );
        assert_eq!(
            get(&none_up, READY),
            ("False", "ApiUnavailable", "api 0/2, workers 0/3")
        );
        assert_eq!(get(&none_up, QUEUE_READY).0, "True");
        assert_eq!(
            get(&none_up, API_AVAILABLE),
            (
                "False",
                "MinimumReplicasUnavailable",
                "0 of 2 api pods ready"
            )
        );
        assert_eq!(
            get(&none_up, WORKERS_AVAILABLE),
            (
                "False",
                "MinimumReplicasUnavailable",
                "0 of 3 worker pods ready"
            )
        );

        let one_api = pool_status(&seen(&accepted(), (1, 2), (0, 3)), &none_up);
        assert_eq!(
            get(&one_api, API_AVAILABLE).0,
            "True",
            "one ready pod is enough"
        );
        assert_eq!(get(&one_api, READY).1, "WorkersUnavailable");
        assert_eq!(
            transition(&one_api, READY),
            transition(&none_up, READY),
            "Ready stayed False"
        );
    }

    #[test]
    fn a_component_that_wants_no_pods_counts_as_available() {
        let status = pool_status(
            &seen(&accepted(), (2, 2), (0, 0)),
            &WorkPoolStatus::default(),
        );
        assert_eq!(get(&status, WORKERS_AVAILABLE).0, "True");
        assert_eq!(get(&status, READY).1, "Ready");
    }

    #[test]
    fn an_unreachable_nats_keeps_the_last_figures_and_says_the_pods_wait() {
        let previous = ready_pool();
        let down = failed(unreachable());
        let held = "the pods keep the settings NATS last accepted until NATS answers";
        let status = pool_status(
            &Observed {
                generation: Some(4),
                held: Some(held),
                ..seen(&down, (2, 2), (3, 3))
            },
            &previous,
        );
        assert_eq!(
            get(&status, QUEUE_READY),
            (
                "False",
                "NatsUnreachable",
                &*format!(
                    "NATS unreachable: nats://nats:4222: not connected (reconnecting); {held}"
                )
            )
        );
        assert_eq!(get(&status, READY).1, "QueueNotReady");
        assert_eq!(status.queue, previous.queue, "the last figures stay");
        assert_eq!(
            status.provisioned_generation,
            Some(3),
            "generation 4 is not provisioned"
        );
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(
            transition(&status, API_AVAILABLE),
            transition(&previous, API_AVAILABLE),
            "the pods stayed available"
        );
    }

    #[test]
    fn a_refused_spec_says_what_happens_to_the_deployments() {
        let rejected = failed(refused());
        let spec = workpool_core::PoolSpec::default();
        let held = rollout::held_back(&rejected, &spec, None);
        let status = pool_status(
            &Observed {
                held,
                ..seen(&rejected, (0, 2), (0, 2))
            },
            &WorkPoolStatus::default(),
        );
        let (ok, reason, message) = get(&status, QUEUE_READY);
        assert_eq!((ok, reason), ("False", "NatsConfigRejected"));
        assert!(message.starts_with("NATS refused the configuration: consumer p16"));
        assert!(
            message.contains("Deployments stay as they are"),
            "{message}"
        );
        assert_eq!(status.provisioned_generation, None);
        assert_eq!(status.queue, None);
    }

    #[test]
    fn what_a_first_provisioning_adopted_stays_in_the_status() {
        let adopted = AdoptedStatus {
            objects: vec!["stream".into(), "bucket".into()],
            messages: 2,
            records: 5,
            dead_letters: 0,
        };
        let first = QueueOutcome {
            adopted: Some(adopted.clone()),
            ..accepted()
        };
        let status = pool_status(&seen(&first, (1, 1), (1, 1)), &WorkPoolStatus::default());
        assert_eq!(status.adopted.as_ref(), Some(&adopted));
        // Later reconciles find nothing to adopt; the record of the first one stays.
        let later = pool_status(&seen(&accepted(), (1, 1), (1, 1)), &status);
        assert_eq!(later.adopted, Some(adopted));
    }

    #[test]
    fn figures_unreadable_after_nats_accepted_the_spec_still_count_as_provisioned() {
        let partly = QueueOutcome {
            accepted: true,
            figures: Err(Error::QueueFigures(NatsError::Reconnecting {
                server: "nats://nats:4222".into(),
            })),
            adopted: None,
            ticks: None,
        };
        let status = pool_status(&seen(&partly, (2, 2), (3, 3)), &WorkPoolStatus::default());
        assert_eq!(status.provisioned_generation, Some(3));
        assert_eq!(get(&status, QUEUE_READY).1, "QueueFigures");
        assert_eq!(get(&status, READY).1, "QueueNotReady");
    }

    #[test]
    fn a_stuck_pool_says_why_in_ready_and_queue_ready_and_keeps_the_rest() {
        let previous = ready_pool();
        let error = Error::InvalidSpec(workpool_core::crd::InvalidSpec {
            field: "resultTTL",
            message: "bad".into(),
        });
        let status = stuck_status(&previous, Some(4), &error);
        let expected = (
            "False",
            "InvalidSpec",
            "the spec cannot be used: resultTTL: bad",
        );
        assert_eq!(status.conditions.len(), 2);
        assert_eq!(get(&status, READY), expected);
        assert_eq!(get(&status, QUEUE_READY), expected);
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(
            (&status.api, &status.queue, status.provisioned_generation),
            (
                &previous.api,
                &previous.queue,
                previous.provisioned_generation
            )
        );
    }

    #[test]
    fn a_waiting_deletion_sets_one_deleting_condition_beside_the_others() {
        let error = unreachable();
        let once = deleting_status(ready_pool(), Some(3), &error, "waits".into());
        let twice = deleting_status(once.clone(), Some(3), &error, "still waits".into());
        assert_eq!(twice.conditions.len(), 5);
        assert_eq!(
            get(&twice, DELETING),
            ("True", "NatsUnreachable", "still waits")
        );
        assert_eq!(transition(&twice, DELETING), transition(&once, DELETING));
        assert_eq!(get(&twice, READY).1, "Ready");
    }

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
