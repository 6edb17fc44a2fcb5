//! HTTP clients for the harness, the benchmarks and the local cluster.
//!
//! The worker's `https` handlers need reqwest's rustls without a built-in crypto
//! provider, and Cargo unifies that feature into every crate of a workspace build
//! (`cargo test --workspace`): a client built then with no process-wide provider panics.
//! So every client here is built after ring, the crypto the workspace already uses, is
//! installed as that provider. Build clients through these, never `reqwest::Client::new`
//! or `reqwest::get`.

/// A client builder, with the process's crypto provider installed.
#[allow(clippy::disallowed_methods)] // the one place that may call it
pub fn client_builder() -> reqwest::ClientBuilder {
    // Err only when a provider is installed already, which is all this needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A client with reqwest's defaults.
#[allow(clippy::expect_used)] // only TLS setup fails, and ring's is complete
pub fn client() -> reqwest::Client {
    client_builder()
        .build()
        .expect("an HTTP client with the ring provider")
}

/// `GET url` with a client of its own.
pub async fn get(url: &str) -> reqwest::Result<reqwest::Response> {
    client().get(url).send().await
}
