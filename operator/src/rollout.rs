//! What a reconcile rolls out, decided from what NATS said about the pool's spec: the
//! settings the api and worker pods get, why they do not get new ones, and how many
//! workers run. No API calls: the controller does the talking.

use workpool_core::PoolSpec;
use workpool_core::crd::{AdoptedStatus, ScheduleStatus, WorkerSpec};

use crate::error::Error;
use crate::queue::{self, QueueFigures};
use crate::schedules::TickNotQueued;

/// What NATS said about a pool's spec, and the queue figures when it answered.
#[derive(Debug)]
pub struct QueueOutcome {
    /// NATS accepted the stream, bucket and consumers of this spec.
    pub accepted: bool,
    pub figures: Result<QueueFigures, Error>,
    /// Objects of the pool's names that existed before its first provisioning and that
    /// NATS now accepted as the pool's.
    pub adopted: Option<AdoptedStatus>,
    /// How queuing the schedules' next ticks went; `None` when not tried (no schedules,
    /// or NATS did not accept the spec).
    pub ticks: Option<Result<Vec<ScheduleStatus>, TickNotQueued>>,
}

impl QueueOutcome {
    /// NATS did not get as far as accepting the spec.
    pub fn failed(err: Error) -> Self {
        Self {
            accepted: false,
            figures: Err(err),
            adopted: None,
            ticks: None,
        }
    }

    /// NATS answered and refused the spec (as opposed to not answering).
    pub fn refused(&self) -> bool {
        matches!(self.figures, Err(Error::NatsConfigRejected(_)))
    }
}

/// The settings the api and worker Deployments get: the new ones once NATS accepted
/// them; none while NATS refuses them (the Deployments stay as they are, so no pod ever
/// runs a refused spec); while NATS does not answer, the settings the pods already run
/// (only replicas, image and resources follow the WorkPool), or the new ones for a pool
/// that has no pods yet.
pub fn rollout_spec(
    outcome: &QueueOutcome,
    spec: &PoolSpec,
    deployed: Option<PoolSpec>,
) -> Option<PoolSpec> {
    if outcome.accepted {
        Some(spec.clone())
    } else if outcome.refused() {
        None
    } else {
        Some(deployed.unwrap_or_else(|| spec.clone()))
    }
}

/// Why the pods do not get the new settings, if they do not.
pub fn held_back(
    outcome: &QueueOutcome,
    spec: &PoolSpec,
    rollout: Option<&PoolSpec>,
) -> Option<&'static str> {
    match rollout {
        _ if outcome.accepted => None,
        None => Some("the api and worker Deployments stay as they are until NATS accepts the spec"),
        Some(rolled) if rolled != spec => {
            Some("the pods keep the settings NATS last accepted until NATS answers")
        }
        Some(_) => None,
    }
}

/// Workers wanted: the autoscaler's choice from the backlog while `autoscale` is set,
/// else the spec's replicas. Without a backlog reading, an autoscaled pool keeps the
/// `current` worker count (its minimum when it has no worker Deployment yet): never guess.
pub fn desired_workers(
    worker: &WorkerSpec,
    figures: &Result<QueueFigures, Error>,
    current: Option<i32>,
) -> i32 {
    match (&worker.autoscale, figures) {
        // Delayed work is queued by a worker when it is due: with any waiting, one worker
        // stays, even where `min` would allow none.
        (Some(scale), Ok(figures)) if figures.scheduled > 0 && figures.backlog() == 0 => {
            scale.min.max(1).min(scale.max)
        }
        (Some(scale), Ok(figures)) => queue::autoscaled_replicas(
            figures.backlog(),
            scale.target_backlog_per_replica,
            scale.min,
            scale.max,
        ),
        (Some(scale), Err(_)) => current.unwrap_or(scale.min),
        (None, _) => worker.replicas,
    }
}

#[cfg(test)]
mod tests {
    use workpool_core::crd::AutoscaleSpec;

    use super::*;
    use crate::error::NatsError;
    use crate::fixtures::{refused, unreachable};

    fn outcome(figures: Result<QueueFigures, Error>) -> QueueOutcome {
        QueueOutcome {
            accepted: figures.is_ok(),
            figures,
            adopted: None,
            ticks: None,
        }
    }

    fn figures(pending: u64, in_flight: u64) -> Result<QueueFigures, Error> {
        Ok(QueueFigures {
            pending,
            in_flight,
            ..QueueFigures::default()
        })
    }

    fn worker(replicas: i32, autoscale: Option<(i32, i32, i64)>) -> WorkerSpec {
        WorkerSpec {
            replicas,
            autoscale: autoscale.map(|(min, max, target)| AutoscaleSpec {
                min,
                max,
                target_backlog_per_replica: target,
            }),
            ..WorkerSpec::default()
        }
    }

    #[test]
    fn without_autoscale_the_spec_replicas_are_wanted_whatever_the_queue_says() {
        let fixed = worker(3, None);
        assert_eq!(desired_workers(&fixed, &figures(1000, 0), Some(7)), 3);
        assert_eq!(desired_workers(&fixed, &Err(unreachable()), Some(7)), 3);
        assert_eq!(desired_workers(&worker(0, None), &figures(5, 5), None), 0);
    }

    #[test]
    fn autoscaling_follows_pending_plus_in_flight_within_the_bounds() {
        let scaled = worker(1, Some((2, 10, 100)));
        assert_eq!(desired_workers(&scaled, &figures(0, 0), Some(5)), 2, "min");
        assert_eq!(desired_workers(&scaled, &figures(250, 100), Some(5)), 4);
        assert_eq!(desired_workers(&scaled, &figures(5000, 0), None), 10, "max");
        assert_eq!(
            desired_workers(&worker(1, Some((0, 10, 100))), &figures(0, 0), Some(3)),
            0,
            "scales to zero when min allows it"
        );
        let delayed = Ok(QueueFigures {
            scheduled: 3,
            ..QueueFigures::default()
        });
        assert_eq!(
            desired_workers(&worker(1, Some((0, 10, 100))), &delayed, Some(0)),
            1,
            "never to zero while delayed work waits: a worker queues it when due"
        );
    }

    #[test]
    fn autoscaling_without_a_backlog_reading_keeps_the_current_count() {
        let scaled = worker(1, Some((2, 10, 100)));
        assert_eq!(desired_workers(&scaled, &Err(unreachable()), Some(7)), 7);
        let missing = Error::QueueFigures(NatsError::Reconnecting {
            server: "nats://nats:4222".into(),
        });
        assert_eq!(desired_workers(&scaled, &Err(missing), Some(7)), 7);
        assert_eq!(
            desired_workers(&scaled, &Err(refused()), None),
            2,
            "a pool without workers starts at its minimum"
        );
    }

    #[test]
    fn only_settings_nats_accepted_reach_the_pods() {
        let old = PoolSpec::from_json(r#"{"worker": {"concurrency": 2}}"#).expect("old");
        let new = PoolSpec::from_json(r#"{"worker": {"concurrency": 8}}"#).expect("new");
        let accepted = outcome(Ok(QueueFigures::default()));
        assert_eq!(
            rollout_spec(&accepted, &new, Some(old.clone())),
            Some(new.clone())
        );
        assert_eq!(held_back(&accepted, &new, Some(&new)), None);

        let rejected = outcome(Err(refused()));
        assert!(rejected.refused());
        assert_eq!(rollout_spec(&rejected, &new, Some(old.clone())), None);
        assert_eq!(
            rollout_spec(&rejected, &new, None),
            None,
            "no pods for a refused spec"
        );
        assert!(held_back(&rejected, &new, None).is_some());

        let down = outcome(Err(unreachable()));
        assert!(!down.refused());
        let kept = rollout_spec(&down, &new, Some(old.clone()));
        assert_eq!(kept, Some(old), "pods keep what NATS last accepted");
        assert!(held_back(&down, &new, kept.as_ref()).is_some());
        let fresh = rollout_spec(&down, &new, None);
        assert_eq!(fresh, Some(new.clone()), "a pool without pods gets them");
        assert_eq!(held_back(&down, &new, fresh.as_ref()), None);
    }

    #[test]
    fn accepted_settings_with_unreadable_figures_still_roll_out() {
        // NATS took the spec, then a figure read failed: the pods get the new settings.
        let new = PoolSpec::from_json(r#"{"worker": {"concurrency": 8}}"#).expect("new");
        let partly = QueueOutcome {
            accepted: true,
            figures: Err(unreachable()),
            adopted: None,
            ticks: None,
        };
        assert_eq!(rollout_spec(&partly, &new, None), Some(new.clone()));
        assert_eq!(held_back(&partly, &new, Some(&new)), None);
    }
}
