//! A real Prometheus that finds pods through the Kubernetes API of a [`ControlPlane`] and
//! scrapes those with the `prometheus.io/scrape` annotation, the way annotation-based
//! scraping works on clusters without the Prometheus Operator.

use std::time::Duration;

use serde_json::Value;

use crate::control_plane::ControlPlane;
use crate::process::Process;
use crate::{Error, Result, paths};

#[derive(Debug)]
pub struct Prometheus {
    _process: Process,
    _dir: tempfile::TempDir,
    pub url: String,
    http: reqwest::Client,
}

/// The scrape configuration: Kubernetes pod discovery, annotations pick the targets.
fn config(plane: &ControlPlane, token_file: &str, interval: Duration) -> String {
    let ca = plane.ca_file();
    format!(
        r#"global:
  scrape_interval: {interval}s
  evaluation_interval: {interval}s
scrape_configs:
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
        api_server: {server}
        authorization: {{credentials_file: {token_file}}}
        tls_config: {{ca_file: {ca}}}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        regex: "true"
        action: keep
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        regex: (.+)
        target_label: __metrics_path__
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
        target_label: __address__
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: kubernetes_pod
      - source_labels: [__meta_kubernetes_namespace]
        target_label: kubernetes_namespace
"#,
        interval = interval.as_secs().max(1),
        server = plane.server,
        ca = ca.display(),
    )
}

impl Prometheus {
    /// Starts Prometheus on `listen` (for example `127.0.0.1:0` for any free port) and
    /// waits until it is ready.
    pub async fn start(plane: &ControlPlane, listen: &str, interval: Duration) -> Result<Self> {
        let binary = paths::tool("prometheus", "prometheus")?;
        let dir = tempfile::Builder::new()
            .prefix("workpool-prometheus-")
            .tempdir()
            .map_err(Error::io("creating a temp dir"))?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &plane.token).map_err(Error::io("token file"))?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(
            &config_file,
            config(plane, &token_file.display().to_string(), interval),
        )
        .map_err(Error::io("prometheus.yml"))?;
        let listen = if listen.ends_with(":0") {
            format!("127.0.0.1:{}", crate::free_port()?)
        } else {
            listen.to_owned()
        };
        let process = Process::spawn(
            "prometheus",
            &binary,
            &[
                format!("--config.file={}", config_file.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address={listen}"),
            ],
            &[],
            dir.path().join("prometheus.log"),
        )?;
        let prometheus = Self {
            _process: process,
            _dir: dir,
            url: format!("http://{listen}"),
            http: crate::http::client(),
        };
        for _ in 0..300 {
            if let Ok(answer) = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await
                && answer.status().is_success()
            {
                return Ok(prometheus);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout(format!(
            "Prometheus at {} to become ready: {}",
            prometheus.url,
            prometheus._process.log_text()
        )))
    }

    /// The result vector of an instant query: `[{metric: {...}, value: [t, "v"]}, ...]`.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            &[("query", promql)],
        )
        .map_err(Error::context("query URL"))?;
        let answer: Value = self
            .http
            .get(url)
            .send()
            .await
            .map_err(Error::context("querying Prometheus"))?
            .json()
            .await
            .map_err(Error::context("Prometheus answer"))?;
        if answer["status"] != "success" {
            return Err(Error::Other(format!("{promql}: {answer}")));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// The number in one result of [`Prometheus::query`].
pub fn sample_value(result: &Value) -> Option<f64> {
    result["value"][1].as_str()?.parse().ok()
}
