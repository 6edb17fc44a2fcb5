//! The test harness of Workpool: the real api and worker binaries as child processes
//! against a real `nats-server` (or a 3-node cluster) per test, operators running
//! in-process, the fault-injecting checker ([`chaos`]), and helpers to talk to them. The
//! servers, control plane and node come from `workpool-local-cluster`.

pub mod browser;
pub mod certificates;
pub mod chaos;
pub mod http;
pub mod metrics;
pub mod nats_cluster;
pub mod operator;
pub mod otlp;
pub mod pods;
pub mod pool;

pub use workpool_local_cluster::{Error as HarnessError, Result, free_port, free_ports};
