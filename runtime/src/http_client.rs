//! The HTTP client of the pool's processes (`http` handlers POST work with it, the api
//! fetches a JWKS with it): HTTP/1.1 and HTTP/2, and https verified
//! against the system's CA certificates (the image's bundle; `SSL_CERT_FILE` or
//! `SSL_CERT_DIR` name others), with rustls on ring, the crypto the kube client already
//! uses.

use std::sync::Arc;

use rustls_platform_verifier::BuilderVerifierExt;

/// Why the client could not be made (nothing a job can cause).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

pub fn http_client() -> Result<reqwest::Client, ClientError> {
    Ok(client_builder()?.build()?)
}

/// A builder with that TLS set up: a reqwest client built without it would panic (its
/// rustls comes without a crypto provider of its own).
pub fn client_builder() -> Result<reqwest::ClientBuilder, ClientError> {
    #[allow(clippy::disallowed_methods)] // built with its TLS preconfigured
    let builder = reqwest::Client::builder();
    Ok(builder.tls_backend_preconfigured(tls_config()?))
}

/// The same for a blocking client (the span exporter's, on a thread of its own). Build
/// it outside an async runtime: reqwest's blocking client runs one of its own.
pub fn blocking_client_builder() -> Result<reqwest::blocking::ClientBuilder, ClientError> {
    #[allow(clippy::disallowed_methods)] // built with its TLS preconfigured
    let builder = reqwest::blocking::Client::builder();
    Ok(builder.tls_backend_preconfigured(tls_config()?))
}

fn tls_config() -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    // A preconfigured config gets no ALPN from reqwest: offer HTTP/2 as it would.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}
