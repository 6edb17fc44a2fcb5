//! Shared parts of Workpool: the pool spec, the work protocol (records, status, ids,
//! messages, events), NATS names, and the JetStream objects a pool needs.
//!
//! Everything here is pure and unit-tested, except [`provision`], the one function that
//! creates or updates a pool's NATS objects on a server, and [`repair`], which writes the
//! api's `pending` records and repairs those whose work was never queued.

pub mod cluster;
pub mod config;
pub mod crd;
pub mod events;
pub mod expiry;
pub mod ids;
pub mod labels;
pub mod membership;
pub mod message;
pub mod names;
pub mod provision;
pub mod record;
pub mod repair;
pub mod spec;
pub mod streams;
pub mod telemetry;

pub use ids::WorkId;
pub use names::PoolNames;
pub use record::{WorkRecord, WorkStatus};
pub use spec::PoolSpec;
