//! A fault-injecting checker in the spirit of Jepsen: a recorded workload against real
//! api and worker processes and a real nats-server, faults on a schedule drawn from a
//! seed, and the invariants of docs/reliability.md judged from the history and from a
//! ledger the handler writes outside Workpool.

pub mod check;
pub mod client;
pub mod faults;
pub mod history;
pub mod ledger;
pub mod pods;
pub mod run;
