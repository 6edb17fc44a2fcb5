//! The metrics registry every component's series live in, and its text exposition.

use prometheus::{Registry, TextEncoder};

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A metrics registry whose series all carry the pool's `namespace` and `pool` labels,
/// with the process collector (CPU, memory, open files) registered.
pub fn pool_registry(namespace: &str, pool: &str) -> Result<Registry, prometheus::Error> {
    let labels = [
        ("namespace".to_owned(), namespace.to_owned()),
        ("pool".to_owned(), pool.to_owned()),
    ];
    let registry = Registry::new_custom(None, Some(labels.into()))?;
    register_process_collector(&registry)?;
    Ok(registry)
}

/// Registers the process collector (CPU, memory, open files) in `registry`.
pub fn register_process_collector(registry: &Registry) -> Result<(), prometheus::Error> {
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
}

/// The registry's series in the text format.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    TextEncoder::new().encode_to_string(&registry.gather())
}
