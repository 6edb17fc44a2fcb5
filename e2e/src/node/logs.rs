//! The kubelet's container-log endpoint, so `kubectl logs` and `helm test --logs` work:
//! the apiserver proxies those requests over HTTPS to the node's InternalIP and the port
//! the Node reports in `status.daemonEndpoints.kubeletEndpoint`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum_server::tls_rustls::RustlsConfig;
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{HarnessError, Result};

/// The query parameters of kubelet's `/containerLogs` that the apiserver passes on.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

/// Where the node agent keeps one pod's files (its kubeconfig and container logs).
pub fn pod_dir(pods_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    pods_dir.join(format!("{namespace}_{pod}"))
}

/// Where the node agent writes a container's output.
pub fn log_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.log"))
}

/// Serves `/containerLogs/{namespace}/{pod}/{container}` over HTTPS with a self-signed
/// certificate (the apiserver does not verify kubelet certificates unless it is given
/// `--kubelet-certificate-authority`) until the task is aborted.
pub async fn serve(pods_dir: PathBuf, listener: std::net::TcpListener, host: &str) -> Result<()> {
    let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()])
        .map_err(|err| HarnessError::Other(format!("kubelet certificate: {err}")))?;
    let tls = RustlsConfig::from_pem(
        certified.cert.pem().into_bytes(),
        certified.signing_key.serialize_pem().into_bytes(),
    )
    .await
    .map_err(HarnessError::io("kubelet TLS config"))?;
    let app = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(pods_dir);
    axum_server::from_tcp_rustls(listener, tls)
        .map_err(HarnessError::io("kubelet listener"))?
        .serve(app.into_make_service())
        .await
        .map_err(HarnessError::io("kubelet endpoint"))
}

async fn container_logs(
    State(pods_dir): State<PathBuf>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    let names_are_plain = [&namespace, &pod, &container]
        .iter()
        .all(|name| !name.is_empty() && !name.contains(['/', '.']));
    if !names_are_plain {
        return (StatusCode::BAD_REQUEST, "bad pod or container name").into_response();
    }
    let path = log_path(&pod_dir(&pods_dir, &namespace, &pod), &container);
    let Ok(text) = tokio::fs::read(&path).await else {
        return (
            StatusCode::NOT_FOUND,
            format!("no logs for container {container} of pod {namespace}/{pod}"),
        )
            .into_response();
    };
    let mut start = query
        .tail_lines
        .map_or(0, |lines| tail_offset(&text, lines));
    if let Some(limit) = query.limit_bytes {
        start = start.max(text.len().saturating_sub(limit));
    }
    let head = Bytes::copy_from_slice(&text[start..]);
    if !query.follow {
        return head.into_response();
    }
    // Following: what is there, then whatever is appended, until the file goes away
    // (the pod is removed) or the client hangs up.
    let offset = text.len() as u64;
    let more = futures::stream::unfold((path, offset), |(path, offset)| async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut file = tokio::fs::File::open(&path).await.ok()?;
            file.seek(std::io::SeekFrom::Start(offset)).await.ok()?;
            let mut chunk = Vec::new();
            file.read_to_end(&mut chunk).await.ok()?;
            if !chunk.is_empty() {
                let next = offset + chunk.len() as u64;
                return Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (path, next)));
            }
        }
    });
    let stream = futures::StreamExt::chain(futures::stream::once(async { Ok(head) }), more);
    Body::from_stream(stream).into_response()
}

/// The byte offset where the last `lines` lines of `text` begin.
fn tail_offset(text: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, byte)| **byte == b'\n')
        .nth(lines - 1)
        .map_or(0, |(at, _)| at + 1)
}

#[cfg(test)]
mod tests {
    use super::tail_offset;

    #[test]
    fn tail_lines_count_from_the_end() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(&text[tail_offset(text, 1)..], b"three\n");
        assert_eq!(&text[tail_offset(text, 2)..], b"two\nthree\n");
        assert_eq!(&text[tail_offset(text, 9)..], text);
        assert_eq!(&text[tail_offset(text, 0)..], b"");
        let unterminated = b"one\ntwo";
        assert_eq!(&unterminated[tail_offset(unterminated, 1)..], b"two");
    }
}
