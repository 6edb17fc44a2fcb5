//! The Helm chart installed on a [`ControlPlane`] the way users install it: `helm install`,
//! `helm test`, `helm uninstall`, with the helm binary from the tools script.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{ListParams, LogParams};

use crate::control_plane::ControlPlane;
use crate::{Error, Result, paths};

/// One release of `charts/workpool`.
#[derive(Debug, Clone)]
pub struct Release {
    helm: PathBuf,
    kubeconfig: PathBuf,
    pub name: String,
    pub namespace: String,
}

impl Release {
    pub fn new(plane: &ControlPlane, name: &str, namespace: &str) -> Result<Self> {
        Ok(Self {
            helm: paths::tool("helm", "helm")?,
            kubeconfig: plane.kubeconfig.clone(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// Runs helm for this release; returns stdout, or an error carrying helm's output.
    /// Async, so an in-process load balancer keeps serving while helm waits (a `helm test`
    /// pod may be talking to it).
    async fn helm(&self, args: &[&str]) -> Result<String> {
        let output = tokio::process::Command::new(&self.helm)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", &self.namespace])
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(Error::io("running helm"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(Error::Other(format!(
                "helm {}: {}{stdout}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }

    /// `helm install --wait` of the chart in this repository, with `--set` values.
    pub async fn install(&self, values: &[(&str, &str)]) -> Result<String> {
        let chart = paths::repo_root().join("charts/workpool");
        let chart = chart.display().to_string();
        let mut args = vec![
            "install",
            &self.name,
            &chart,
            "--create-namespace",
            "--wait",
            "--timeout",
            "300s",
        ];
        let sets: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for set in &sets {
            args.extend(["--set", set]);
        }
        self.helm(&args).await
    }

    /// `helm test`: runs the chart's test pod and fails when it fails, with its logs.
    /// (Not `helm test --logs`: the hook deletes a passing test pod before helm reads it.)
    pub async fn test(&self, client: &kube::Client) -> Result<String> {
        let result = self.helm(&["test", &self.name, "--timeout", "120s"]).await;
        let Err(err) = result else { return result };
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &self.namespace);
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=test",
            self.name
        );
        let mut logs = String::new();
        if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
            for pod in list {
                let text = pods
                    .logs(&pod.name_any(), &LogParams::default())
                    .await
                    .unwrap_or_else(|err| format!("(no logs: {err})"));
                logs.push_str(&format!("\n--- {} ---\n{text}", pod.name_any()));
            }
        }
        Err(Error::Other(format!("{err}{logs}")))
    }

    /// `helm uninstall --wait`.
    pub async fn uninstall(&self) -> Result<String> {
        self.helm(&["uninstall", &self.name, "--wait", "--timeout", "120s"])
            .await
    }
}
