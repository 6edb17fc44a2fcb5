//! Group limits (docs/worker.md, "Group limits"): how many jobs of one group may run at
//! once across the pool, and how many may start per interval. The state of a group is
//! one small value in the results bucket; admitting a job is one compare-and-set of it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The limits every group of a pool has (`spec.groups`).
#[derive(kube::KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupLimits {
    /// Most jobs of one group running at once, across every worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: Option<u32>,
    /// Most jobs of one group started per interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
}

/// `jobs` starts per `per`, over a sliding window.
#[derive(kube::KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[schemars(range(min = 1, max = 1000))]
    pub jobs: u32,
    /// The interval, such as `1s` or `1m` (at most a day).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub per: Duration,
}

impl GroupLimits {
    /// Whether any limit applies; without one, groups cost nothing.
    pub fn any(&self) -> bool {
        self.concurrency.is_some() || self.rate.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency.is_some_and(|n| !(1..=10_000).contains(&n)) {
            return Err("concurrency must be between 1 and 10000".into());
        }
        if let Some(rate) = &self.rate {
            if !(1..=1000).contains(&rate.jobs) {
                return Err("rate.jobs must be between 1 and 1000".into());
            }
            let day = Duration::from_secs(24 * 3600);
            if rate.per < Duration::from_millis(100) || rate.per > day {
                return Err("rate.per must be between 100ms and 24h".into());
            }
        }
        Ok(())
    }

    /// How long a group's state must outlive its last write: the longest a running job
    /// holds its slot (`hold`), or the rate window, whichever is longer.
    pub fn state_ttl(&self, hold: Duration) -> Duration {
        let window = self.rate.as_ref().map_or(Duration::ZERO, |rate| rate.per);
        hold.max(window) + Duration::from_secs(1)
    }
}

/// The bucket key of a group's state: `group.` and a digest of its name, since a name is
/// any 1-256 bytes and a key is not.
pub fn state_key(group: &str) -> String {
    let digest = Sha256::digest(group.as_bytes());
    format!("group.{}", hex::encode(&digest[..16]))
}

/// The state of one group: who holds its slots, until when, and its recent starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Work id to the time its slot frees even if its worker never says so.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holders: BTreeMap<String, DateTime<Utc>>,
    /// Starts within the rate window, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub starts: Vec<DateTime<Utc>>,
}

/// Why a job may not start yet, and about when it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is held; the earliest frees by `until` at the latest.
    Full { until: DateTime<Utc> },
    /// The rate window is used up until `until`.
    Rate { until: DateTime<Utc> },
}

impl GroupState {
    /// Admits work `id` at `now` if the limits allow, holding a slot until `hold` from now.
    /// Admitting work that already holds a slot (a redelivery) renews its slot.
    pub fn admit(
        &mut self,
        id: &str,
        now: DateTime<Utc>,
        limits: &GroupLimits,
        hold: Duration,
    ) -> Result<(), Refused> {
        self.holders.retain(|_, until| *until > now);
        if let Some(rate) = &limits.rate {
            let window = chrono::Duration::from_std(rate.per).unwrap_or_default();
            self.starts.retain(|start| *start + window > now);
            let full = self.starts.len() >= rate.jobs as usize;
            if let (true, Some(oldest)) = (full, self.starts.first()) {
                return Err(Refused::Rate {
                    until: *oldest + window,
                });
            }
        }
        let renewing = self.holders.contains_key(id);
        if let Some(most) = limits.concurrency
            && !renewing
            && self.holders.len() >= most as usize
        {
            let until = self.holders.values().min().copied().unwrap_or(now);
            return Err(Refused::Full { until });
        }
        let hold = chrono::Duration::from_std(hold).unwrap_or_default();
        if limits.concurrency.is_some() {
            self.holders.insert(id.to_owned(), now + hold);
        }
        if limits.rate.is_some() {
            self.starts.push(now);
        }
        Ok(())
    }

    /// Frees the slot of `id`; whether it held one.
    pub fn release(&mut self, id: &str) -> bool {
        self.holders.remove(id).is_some()
    }
}

/// How long parked work waits before it is tried again after being refused `parked`
/// times before: a quarter second doubling to at most 5 s for a full group (a slot
/// frees when a job ends, which no one announces), and until the window opens for a
/// rate.
pub fn park_for(refused: Refused, parked: u32, now: DateTime<Utc>) -> Duration {
    match refused {
        Refused::Rate { until } => (until - now)
            .to_std()
            .unwrap_or_default()
            .max(Duration::from_millis(50)),
        Refused::Full { until } => {
            let backoff = Duration::from_millis(250)
                .saturating_mul(1u32.checked_shl(parked.min(8)).unwrap_or(u32::MAX))
                .min(Duration::from_secs(5));
            let at_latest = (until - now).to_std().unwrap_or_default();
            backoff.min(at_latest.max(Duration::from_millis(50)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: Option<u32>, rate: Option<(u32, u64)>) -> GroupLimits {
        GroupLimits {
            concurrency,
            rate: rate.map(|(jobs, secs)| RateLimit {
                jobs,
                per: Duration::from_secs(secs),
            }),
        }
    }

    #[test]
    fn concurrency_admits_up_to_the_limit_and_frees_on_release_or_expiry() {
        let limits = limits(Some(2), None);
        let now = Utc::now();
        let hold = Duration::from_secs(60);
        let mut state = GroupState::default();
        assert_eq!(state.admit("a", now, &limits, hold), Ok(()));
        assert_eq!(state.admit("b", now, &limits, hold), Ok(()));
        let until = now + chrono::Duration::seconds(60);
        assert_eq!(
            state.admit("c", now, &limits, hold),
            Err(Refused::Full { until })
        );
        // A redelivery of a holder renews its own slot.
        assert_eq!(state.admit("a", now, &limits, hold), Ok(()));
        assert!(state.release("a"));
        assert!(!state.release("a"));
        assert_eq!(state.admit("c", now, &limits, hold), Ok(()));
        // A holder whose worker died frees its slot when its hold ends.
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(state.admit("d", later, &limits, hold), Ok(()));
        assert_eq!(state.holders.len(), 1);
    }

    #[test]
    fn rate_admits_jobs_per_sliding_window() {
        let limits = limits(None, Some((3, 10)));
        let start = Utc::now();
        let hold = Duration::from_secs(60);
        let mut state = GroupState::default();
        for n in 0..3 {
            let at = start + chrono::Duration::seconds(n);
            assert_eq!(state.admit(&format!("{n}"), at, &limits, hold), Ok(()));
        }
        let refused = state.admit("x", start + chrono::Duration::seconds(5), &limits, hold);
        let opens = start + chrono::Duration::seconds(10);
        assert_eq!(refused, Err(Refused::Rate { until: opens }));
        assert_eq!(
            park_for(
                refused.unwrap_err(),
                0,
                start + chrono::Duration::seconds(5)
            ),
            Duration::from_secs(5)
        );
        assert_eq!(state.admit("x", opens, &limits, hold), Ok(()));
        assert!(state.holders.is_empty(), "no concurrency limit, no slots");
    }

    #[test]
    fn a_full_group_is_tried_again_soon_and_then_less_often() {
        let now = Utc::now();
        let far = Refused::Full {
            until: now + chrono::Duration::seconds(60),
        };
        assert_eq!(park_for(far, 0, now), Duration::from_millis(250));
        assert_eq!(park_for(far, 2, now), Duration::from_secs(1));
        assert_eq!(park_for(far, 30, now), Duration::from_secs(5));
        let near = Refused::Full {
            until: now + chrono::Duration::milliseconds(100),
        };
        assert_eq!(park_for(near, 3, now), Duration::from_millis(100));
    }

    #[test]
    fn state_keys_are_bucket_keys_whatever_the_name() {
        let key = state_key("customer 42 / ä");
        assert!(key.starts_with("group.") && key.len() == 6 + 32, "{key}");
        assert_ne!(state_key("a"), state_key("b"));
        assert!(limits(None, None).validate().is_ok() && !limits(None, None).any());
        assert!(limits(Some(0), None).validate().is_err());
        assert!(limits(None, Some((5, 0))).validate().is_err());
    }
}
