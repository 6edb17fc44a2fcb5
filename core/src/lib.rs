//! The Workpool protocol: the `WorkPool` resource and its spec, the work protocol
//! (records and their transition rule, status, ids, messages, events, expiry), NATS
//! names, the peer protocol of a pool's members, and the JetStream objects a pool needs,
//! as values. Nothing here does I/O: connecting, provisioning and serving live in
//! `workpool-runtime`.

pub mod cluster;
pub mod crd;
pub mod events;
pub mod expiry;
pub mod group;
pub mod ids;
pub mod message;
pub mod metric_labels;
pub mod names;
pub mod nats_permissions;
pub mod peer_auth;
pub mod priority;
pub mod progress;
pub mod record;
pub mod schedule;
pub mod spec;
pub mod streams;
pub mod unrecorded;
pub mod webhook;

pub use ids::WorkId;
pub use names::PoolNames;
pub use record::{WorkRecord, WorkStatus};
pub use spec::PoolSpec;
