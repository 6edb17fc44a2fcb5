//! Headless Chromium (Debian's `chromium`, installed by `scripts/system-deps.sh`) driving a
//! page for tests: the DOM after the page's scripts ran, and screenshots.

use std::path::{Path, PathBuf};

use crate::{HarnessError, Result};

#[derive(Debug, Clone)]
pub struct Browser {
    program: PathBuf,
}

impl Browser {
    /// Finds Chromium on the PATH.
    pub fn find() -> Result<Self> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|candidate| candidate.is_file())
            .map(|program| Self { program })
            .ok_or_else(|| {
                HarnessError::Missing(
                    "no chromium on PATH; run scripts/system-deps.sh (apt-get install chromium)"
                        .into(),
                )
            })
    }

    /// Loads `url`, lets its scripts run for `budget_ms` of virtual time (fetches
    /// included) and gives back the DOM, or writes a screenshot to `screenshot`.
    async fn run(&self, url: &str, budget_ms: u32, screenshot: Option<&Path>) -> Result<String> {
        let mut command = tokio::process::Command::new(&self.program);
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,900",
            &format!("--virtual-time-budget={budget_ms}"),
        ]);
        match screenshot {
            Some(path) => command.arg(format!("--screenshot={}", path.display())),
            None => command.arg("--dump-dom"),
        };
        let output = command
            .arg(url)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(HarnessError::io("running chromium"))?;
        if !output.status.success() {
            return Err(HarnessError::Other(format!(
                "chromium {url}: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub async fn dom(&self, url: &str, budget_ms: u32) -> Result<String> {
        self.run(url, budget_ms, None).await
    }

    pub async fn screenshot(&self, url: &str, budget_ms: u32, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(HarnessError::io("screenshot dir"))?;
        }
        self.run(url, budget_ms, Some(path)).await?;
        if path.is_file() {
            Ok(())
        } else {
            Err(HarnessError::Other(format!(
                "no screenshot at {}",
                path.display()
            )))
        }
    }
}
