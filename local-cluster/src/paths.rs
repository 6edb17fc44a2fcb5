//! Where the upstream tools and this workspace's binaries are.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The path of an upstream tool, built by `scripts/tools.sh` on first use.
pub fn tool(tool: &str, binary: &str) -> Result<PathBuf> {
    let output = Command::new(repo_root().join("scripts/tools.sh"))
        .arg("--print-bin")
        .arg(tool)
        .output()
        .map_err(Error::io("running scripts/tools.sh"))?;
    if !output.status.success() {
        return Err(Error::Missing(format!(
            "scripts/tools.sh {tool} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let path = Path::new(&dir).join(binary);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing(format!("{} was not built", path.display())))
    }
}

/// A binary of this workspace, next to the running executable's profile directory
/// (`target/<profile>/`). `make test` builds them before the tests run.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(Error::io("locating the test executable"))?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(name))
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            Error::Missing(format!(
                "{name} not found near {}; run `cargo build --workspace --bins` first",
                exe.display()
            ))
        })
}
