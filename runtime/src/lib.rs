//! What Workpool's binaries share at run time, around the pure protocol of
//! `workpool-core`: settings and the NATS connection ([`config`]), a pool's NATS objects
//! ([`provision`]), record writes with their expiry ([`records`]), events ([`events`]), pool membership from
//! EndpointSlices ([`membership`]), logging and signals ([`telemetry`]), and metrics
//! with the health/metrics server ([`metrics`], [`admin`]), the retry delays while
//! NATS is away ([`retry`]), and the NATS users pools connect as ([`nats_auth`]).

pub mod admin;
pub mod config;
pub mod events;
pub mod http_client;
pub mod membership;
pub mod metrics;
pub mod nats_auth;
pub mod otel;
pub mod provision;
pub mod publish_errors;
pub mod queue_figures;
pub mod records;
pub mod retry;
pub mod telemetry;
