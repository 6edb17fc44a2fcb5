//! Schedules of a pool (`spec.schedules`): cron patterns read in a time zone, whose ticks
//! become delayed work (docs/operator.md, "Schedules"). Everything about a tick is
//! derived from the pool, the schedule and the tick's time, so whoever queues it, and
//! however often, queues the same work: once per tick.

use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::ids::{IdScope, WorkId};
use crate::message::{WorkMessage, WorkSubmission};
use crate::names::{PoolNames, is_dns_label};

/// One schedule of `spec.schedules`.
#[derive(kube::KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// Names the schedule in the status and in its work's `accepted_by`; a DNS label,
    /// unique in the pool.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// When: five fields (minute, hour, day of month, month, day of week), six with
    /// seconds first, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    #[schemars(length(min = 1, max = 256))]
    pub cron: String,
    /// The IANA time zone the pattern is read in, such as `Europe/Berlin`; default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The task of the work each tick submits; default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The data of the work each tick submits.
    #[serde(default)]
    #[schemars(schema_with = "any_json")]
    pub data: serde_json::Value,
    /// The key of the work each tick submits, if it is keyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The priority of the work each tick submits (unkeyed work only); default normal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::priority::Priority>,
    /// The group whose limits the work each tick submits runs within (unkeyed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub group: Option<String>,
}

/// `time` without its fraction of a second: ticks fall on whole seconds.
fn whole_second(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(0)
}

fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// What is wrong with a schedule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("schedule name {0:?} is not a DNS label")]
    Name(String),
    #[error("schedule {name}: two schedules have this name")]
    Duplicate { name: String },
    #[error("schedule {name}: cron {cron:?}: {message}")]
    Cron {
        name: String,
        cron: String,
        message: String,
    },
    #[error("schedule {name}: unknown time zone {zone:?} (an IANA name such as Europe/Berlin)")]
    TimeZone { name: String, zone: String },
    #[error("schedule {name}: {message}")]
    Work { name: String, message: String },
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    spec: ScheduleSpec,
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    pub fn new(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        let name = spec.name.clone();
        if !is_dns_label(&name) {
            return Err(ScheduleError::Name(name));
        }
        let cron = Cron::from_str(&spec.cron).map_err(|err| ScheduleError::Cron {
            name: name.clone(),
            cron: spec.cron.clone(),
            message: err.to_string(),
        })?;
        let zone = match &spec.time_zone {
            None => Tz::UTC,
            Some(zone) => zone.parse().map_err(|_| ScheduleError::TimeZone {
                name: name.clone(),
                zone: zone.clone(),
            })?,
        };
        let submission = WorkSubmission {
            data: spec.data.clone(),
            task: spec.task.clone(),
            key: spec.key.clone(),
            ttl: None,
            run_at: None,
            delay: None,
            priority: spec.priority,
            callback_url: None,
            group: spec.group.clone(),
        };
        submission.validate().map_err(|err| ScheduleError::Work {
            name,
            message: err.to_string(),
        })?;
        Ok(Self {
            spec: spec.clone(),
            cron,
            zone,
        })
    }

    /// Checks every schedule of a pool, names unique.
    pub fn all(specs: &[ScheduleSpec]) -> Result<Vec<Self>, ScheduleError> {
        let mut seen = std::collections::HashSet::new();
        specs
            .iter()
            .map(|spec| {
                if !seen.insert(spec.name.as_str()) {
                    return Err(ScheduleError::Duplicate {
                        name: spec.name.clone(),
                    });
                }
                Self::new(spec)
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The ticks after `after` and up to `until`, at most `most` of them.
    pub fn ticks(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        most: usize,
    ) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next(after), |tick| self.next(*tick))
            .take_while(|tick| *tick <= until)
            .take(most)
            .collect()
    }

    /// The first tick after `after`, however far. (croner's own iterator skipped every
    /// other tick of a pattern with seconds, so each tick is found from the one before.)
    pub fn next(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = whole_second(after).with_timezone(&self.zone);
        let tick = self.cron.find_next_occurrence(&after, false).ok()?;
        Some(tick.with_timezone(&Utc))
    }

    /// The work id of a tick: from the pool (its UID too, so a pool made again under the
    /// same name does not meet its predecessor's ids), the schedule and the tick.
    pub fn tick_id(&self, names: &PoolNames, pool_uid: &str, tick: DateTime<Utc>) -> WorkId {
        let key = format!(
            "schedule/{}/{}/{pool_uid}/{}/{}",
            names.namespace,
            names.pool,
            self.spec.name,
            tick.timestamp_millis()
        );
        WorkId::idempotency_in(IdScope::default(), &key)
    }

    /// The delayed work of a tick: accepted (`created_at`) and due (`run_at`) at the
    /// tick, so that every message of it is the same submission.
    pub fn tick_message(
        &self,
        names: &PoolNames,
        pool_uid: &str,
        tick: DateTime<Utc>,
    ) -> WorkMessage {
        WorkMessage {
            id: self.tick_id(names, pool_uid, tick),
            task: self
                .spec
                .task
                .clone()
                .unwrap_or_else(|| crate::message::DEFAULT_TASK.to_owned()),
            key: self.spec.key.clone(),
            data: self.spec.data.clone(),
            accepted_by: format!("schedule/{}", self.spec.name),
            created_at: tick,
            tenant: None,
            ttl: None,
            run_at: Some(tick),
            priority: self.spec.priority.unwrap_or_default(),
            callback_url: None,
            group: self.spec.group.clone(),
            parked: 0,
            trace: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn spec(cron: &str, zone: Option<&str>) -> ScheduleSpec {
        ScheduleSpec {
            name: "nightly".into(),
            cron: cron.into(),
            time_zone: zone.map(str::to_owned),
            task: Some("reports.nightly.build".into()),
            data: serde_json::json!({"n": 1}),
            key: None,
            priority: None,
            group: None,
        }
    }

    #[test]
    fn ticks_follow_the_pattern_in_its_time_zone() {
        let berlin = Schedule::new(&spec("0 3 * * *", Some("Europe/Berlin"))).expect("valid");
        let from = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        let ticks = berlin.ticks(from, from + chrono::Duration::days(2), 10);
        // 03:00 in Berlin is 01:00 UTC in summer.
        assert_eq!(
            ticks,
            [
                Utc.with_ymd_and_hms(2026, 7, 1, 1, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 7, 2, 1, 0, 0).unwrap()
            ]
        );
        let seconds = Schedule::new(&spec("*/10 * * * * *", None)).expect("valid");
        assert_eq!(
            seconds
                .ticks(from, from + chrono::Duration::minutes(1), 3)
                .len(),
            3
        );
    }

    #[test]
    fn a_tick_is_the_same_work_whoever_queues_it() {
        let schedule = Schedule::new(&spec("@hourly", None)).expect("valid");
        let names = PoolNames::new("default", "demo").expect("names");
        let tick = Utc.with_ymd_and_hms(2026, 7, 1, 1, 0, 0).unwrap();
        let a = schedule.tick_message(&names, "uid-1", tick);
        assert_eq!(a, schedule.tick_message(&names, "uid-1", tick));
        assert_eq!((a.created_at, a.run_at), (tick, Some(tick)));
        assert_ne!(a.id, schedule.tick_message(&names, "uid-2", tick).id);
        let later = tick + chrono::Duration::hours(1);
        assert_ne!(a.id, schedule.tick_message(&names, "uid-1", later).id);

        // A tick's work carries the schedule's priority and group.
        let mut low = spec("@hourly", None);
        low.priority = Some(crate::priority::Priority::Low);
        low.group = Some("reports".into());
        let work = Schedule::new(&low)
            .expect("valid")
            .tick_message(&names, "uid-1", tick);
        assert_eq!(
            (work.priority, work.group.as_deref()),
            (crate::priority::Priority::Low, Some("reports"))
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        assert!(matches!(
            Schedule::new(&spec("every day", None)),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::new(&spec("@daily", Some("Mars/Olympus"))),
            Err(ScheduleError::TimeZone { .. })
        ));
        let mut bad_task = spec("@daily", None);
        bad_task.task = Some("a..b".into());
        assert!(matches!(
            Schedule::new(&bad_task),
            Err(ScheduleError::Work { .. })
        ));
        let mut keyed_high = spec("@daily", None);
        keyed_high.key = Some("k".into());
        keyed_high.priority = Some(crate::priority::Priority::High);
        assert!(matches!(
            Schedule::new(&keyed_high),
            Err(ScheduleError::Work { .. })
        ));
        let twice = [spec("@daily", None), spec("@hourly", None)];
        assert!(matches!(
            Schedule::all(&twice),
            Err(ScheduleError::Duplicate { .. })
        ));
    }
}
