//! The cluster of one pool's workers: who the members are, which
//! keyed partitions each owns, and the messages peers exchange over NATS request/reply
//! on `wp.<ns>.<pool>.peer.<pod>`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::fnv1a;

/// Rendezvous ("highest random weight") score of `member` for `partition`: every process
/// computes the same owner from the same member list, and a member leaving moves only
/// its own partitions.
fn score(member: &str, partition: u32) -> u64 {
    let mut bytes = Vec::with_capacity(member.len() + 5);
    bytes.extend_from_slice(member.as_bytes());
    bytes.push(b'/');
    bytes.extend_from_slice(&partition.to_be_bytes());
    // FNV alone mixes the last bytes weakly; a splitmix64 finaliser spreads them.
    let mut x = fnv1a(&bytes);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The owner of `partition` among `members` (`None` when there are none).
pub fn owner<'a>(partition: u32, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members
        .into_iter()
        .max_by_key(|member| (score(member, partition), *member))
}

/// The partitions (of `0..partitions`) that `me` owns among `members`.
pub fn owned_partitions(me: &str, members: &BTreeSet<String>, partitions: u32) -> Vec<u32> {
    (0..partitions)
        .filter(|p| owner(*p, members.iter().map(String::as_str)) == Some(me))
        .collect()
}

/// A request from one pool process to a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerRequest {
    /// What the worker owns and runs now.
    View,
    /// Abort the running attempt of this work and record it `cancelled`.
    Cancel { id: String },
    /// The sender is stopping: stop counting it as a member now (its EndpointSlice
    /// entry goes only later), so its partitions move at once.
    Leaving { pod: String },
}

/// A worker's answer to a [`PeerRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerReply {
    View(WorkerView),
    /// `cancelled` is false when the work was not running on this worker.
    Cancel {
        cancelled: bool,
    },
    Ok,
    Error {
        message: String,
    },
}

/// One worker as it sees itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct WorkerView {
    pub pod: String,
    /// Pulling work (false while binding or stopping).
    pub ready: bool,
    /// Keyed partitions this worker pulls.
    pub partitions: Vec<u32>,
    /// Ids of the work running here now.
    pub in_flight: Vec<String>,
    /// The members this worker counts (itself included).
    pub members: Vec<String>,
    pub counts: WorkerCounts,
}

/// Work this worker has done since it started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, ToSchema)]
pub struct WorkerCounts {
    pub started: u64,
    pub worked: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// `GET /api/v1/cluster`: the pool's processes as the answering api pod sees them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct ClusterView {
    pub namespace: String,
    pub pool: String,
    /// The api pod that answered.
    pub answered_by: String,
    /// Keyed partitions of the pool.
    pub partitions: u32,
    pub api: Vec<ApiMember>,
    /// Every worker that answered, plus members that did not (with `answered: false`).
    pub workers: Vec<WorkerMember>,
    /// Partitions no answering worker pulls right now (moving, or no workers).
    pub unowned_partitions: Vec<u32>,
    /// Whether membership comes from the Kubernetes API (false: outside Kubernetes, only
    /// what answers is shown).
    pub from_kubernetes: bool,
}

/// An api pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct ApiMember {
    pub pod: String,
    /// A ready endpoint of the api Service.
    pub ready: bool,
}

/// A worker pod in the cluster view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct WorkerMember {
    /// A ready endpoint of the headless worker Service.
    pub member: bool,
    /// It answered the view request in time.
    pub answered: bool,
    #[serde(flatten)]
    pub view: WorkerView,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("demo-worker-{i:x}5f9c")).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        let members = members(3);
        let mut all: Vec<u32> = members
            .iter()
            .flat_map(|m| owned_partitions(m, &members, 16))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<_>>());
        assert!(owned_partitions("stranger", &members, 16).is_empty());
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_partitions() {
        let before = members(5);
        let mut after = before.clone();
        let gone = after.pop_first().expect("a member");
        for p in 0..64 {
            let was = owner(p, before.iter().map(String::as_str)).expect("owner");
            let now = owner(p, after.iter().map(String::as_str)).expect("owner");
            if was != gone {
                assert_eq!(was, now, "partition {p} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn partitions_spread_evenly_enough() {
        for n in 2..=6 {
            let members = members(n);
            let mean = 64.0 / n as f64;
            for member in &members {
                let owned = owned_partitions(member, &members, 64).len() as f64;
                assert!(owned <= 2.0 * mean, "{member} owns {owned} of 64 among {n}");
            }
        }
    }

    #[test]
    fn peer_messages_have_a_stable_wire_form() {
        let text = serde_json::to_string(&PeerRequest::Cancel { id: "ab".into() }).unwrap();
        assert_eq!(text, r#"{"type":"cancel","id":"ab"}"#);
        let reply: PeerReply =
            serde_json::from_str(r#"{"type":"cancel","cancelled":true}"#).unwrap();
        assert_eq!(reply, PeerReply::Cancel { cancelled: true });
    }
}
