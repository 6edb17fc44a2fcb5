//! `http` handlers over https: a worker POSTs work to a sidecar that serves TLS with a
//! certificate of a CA made here, trusted through `SSL_CERT_FILE`; a worker that does
//! not trust that CA refuses the sidecar, so the certificate is really checked. Before,
//! the worker's client had no TLS and every https job failed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use workpool_core::PoolSpec;
use workpool_e2e::certificates::signed_by_a_new_ca;
use workpool_e2e::pool::TestPool;

const WAIT: Duration = Duration::from_secs(30);

/// A CA's PEM, and a TLS acceptor for `localhost` with a certificate it signed.
fn certificates() -> (String, tokio_rustls::TlsAcceptor) {
    let signed = signed_by_a_new_ca(&["localhost"]).unwrap();
    let (certificate, key) = (signed.certificate, signed.key);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(certificate.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (
        signed.ca_pem,
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    )
}

/// Serves `POST /run` over TLS: answers each request with `{"over": "tls", "got": <body>}`.
async fn https_sidecar(acceptor: tokio_rustls::TlsAcceptor) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/run",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to do.
                if let Ok(stream) = acceptor.accept(socket).await {
                    let _ = answer(stream).await;
                }
            });
        }
    });
    url
}

async fn answer(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    let got: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let result = json!({"over": "tls", "got": got["data"]}).to_string();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        result.len()
    );
    let mut stream = stream.into_inner();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(result.as_bytes()).await?;
    stream.shutdown().await
}

#[tokio::test]
async fn an_http_handler_is_reached_over_https_and_its_certificate_is_checked() {
    let (ca_pem, acceptor) = certificates();
    let url = https_sidecar(acceptor).await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca_pem).unwrap();
    let spec = PoolSpec::from_json(&format!(
        r#"{{"worker": {{"handler": {{"http": {{"url": "{url}"}}}}, "maxAttempts": 1}}}}"#
    ))
    .unwrap();

    // A worker that trusts only the system's CAs refuses the sidecar's certificate.
    let mut pool = TestPool::start(spec, 1, 0).await.expect("pool");
    let untrusting = pool.add_worker_with_env(&[]).await.expect("worker");
    let refused = pool.submit(&json!({"data": {"n": 1}})).await.unwrap();
    let failed = pool.wait_status(&refused, "failed", WAIT).await.unwrap();
    let error = failed.str("error").to_owned();
    eprintln!("refused: {error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    pool.workers[untrusting].process.terminate();

    // One that trusts the CA gets the sidecar's answer as the result.
    let ca = ca_file.path().display().to_string();
    pool.add_worker_with_env(&[("SSL_CERT_FILE".to_owned(), ca)])
        .await
        .expect("worker");
    let id = pool.submit(&json!({"data": {"n": 2}})).await.unwrap();
    let worked = pool.wait_status(&id, "worked", WAIT).await.unwrap();
    assert_eq!(
        worked.body["result"],
        json!({"over": "tls", "got": {"n": 2}})
    );
}
