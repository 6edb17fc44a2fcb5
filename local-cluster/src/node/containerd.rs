//! A private containerd (Debian's, from `make deps`): its root, state and sockets in a
//! directory of its own, so it never meets the host's containerd or another test's. Also
//! the process, mount and cgroup helpers that make sure nothing it ran is left behind.
//! Used by [`super::RealNode`] and by `e2e/tests/image.rs`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::image::PAUSE_REFERENCE;
use crate::{Error, Result};

/// The containerd namespace the CRI plugin (and so kubelet) uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Where a private containerd keeps its CNI setup, when it has one.
#[derive(Debug, Clone)]
pub struct CniDirs {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
}

/// containerd's socket in `dir` (unix socket paths are limited to 108 bytes, so `dir`
/// should be short, e.g. under `/tmp`).
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("containerd.sock")
}

/// A containerd config whose root, state and sockets are all under `dir`, with the CRI
/// plugin set up for this machine kind (see the comments in the text).
pub fn config(dir: &Path, cni: Option<&CniDirs>) -> String {
    let cni_section = cni
        .map(|cni| {
            format!(
                r#"  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{}"
    conf_dir = "{}"
    max_conf_num = 1
"#,
                cni.bin_dir.display(),
                cni.conf_dir.display()
            )
        })
        .unwrap_or_default();
    format!(
        r#"version = 2
root = "{root}/root"
state = "{root}/state"
# Only overlayfs is used; the others only log that they cannot start.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{root}/containerd.ttrpc.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  # Root here lacks CAP_SYS_RESOURCE, so nothing may lower oom_score_adj: without this
  # the CRI gives a sandbox -998 and runc fails ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  # There is no registry: the pause image is built here and imported.
  sandbox_image = "{pause}"
  # Pod network namespaces under our state directory, not the host's /var/run/netns, so
  # stopping finds (and unmounts) exactly ours.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    # runc's state under ours too, not the host's /run/containerd/runc.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{root}/runc"
{cni_section}"#,
        root = dir.display(),
        socket = socket_path(dir).display(),
        pause = PAUSE_REFERENCE,
    )
}

/// Checks that containerd, ctr and runc are installed.
pub fn check_installed() -> Result<()> {
    for command in ["containerd", "ctr", "runc"] {
        if find_on_path(command).is_none() {
            return Err(Error::Missing(format!(
                "{command} is not installed: run `make deps` (Debian's containerd and runc)"
            )));
        }
    }
    Ok(())
}

/// `ctr` against the containerd whose socket is `socket`, in the CRI namespace.
pub fn ctr(socket: &Path, arguments: &[&str], timeout: Duration) -> Result<Output> {
    let mut command = Command::new("ctr");
    command
        .arg("--address")
        .arg(socket)
        .arg("--namespace")
        .arg(CRI_NAMESPACE)
        .args(arguments);
    run_with_timeout(command, timeout)
}

/// Polls `ctr version` until containerd answers.
pub fn wait_answering(socket: &Path, timeout: Duration, log: &Path) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if socket.exists()
            && ctr(socket, &["version"], Duration::from_secs(5))
                .map(|output| output.status.success())
                .unwrap_or(false)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "containerd at {} to answer; its log:\n{}",
                socket.display(),
                log_tail(log, 20)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

pub fn find_on_path(command: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(command))
            .find(|candidate| candidate.is_file())
    })
}

/// Runs `command`, killing it after `timeout`; its output either way (a hung runtime
/// must fail a test, not stall it).
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Result<Output> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("starting {program}")))?;
    let readers = [
        child
            .stdout
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    ]
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(Error::io(format!("waiting for {program}")))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child
                .wait()
                .map_err(Error::io(format!("waiting for {program}")))?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [stdout, stderr] = readers.map(|reader| reader.join().unwrap_or_default());
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Processes (other than this one) whose command line mentions `dir`: a private
/// containerd's shims name its socket there, and outlive containerd.
pub fn processes_mentioning(dir: &Path) -> Vec<nix::unistd::Pid> {
    let needle = dir.to_string_lossy().into_owned();
    let own = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
                .unwrap_or(false)
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// Mount points at or below `dir`, outermost first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|mount| mount.starts_with(dir))
        .collect()
}

/// Unmounts everything at or below `dir`, innermost first (lazily: a busy mount goes as
/// soon as its last user does).
pub fn unmount_all_under(dir: &Path) {
    for mount in mounts_under(dir).into_iter().rev() {
        let _ = Command::new("umount").arg("--lazy").arg(&mount).status();
    }
}

/// The mounted cgroup hierarchies (v1 controllers and, on a hybrid machine, the unified
/// one).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && !path.is_symlink())
        .collect()
}

/// Removes the cgroup `relative` (e.g. `workpool-node`) and every cgroup below it in
/// every hierarchy, deepest first; cgroups still holding processes stay.
pub fn remove_cgroup_tree(relative: &str) {
    fn remove(dir: &Path) {
        if let Ok(children) = std::fs::read_dir(dir) {
            for child in children.flatten() {
                let path = child.path();
                if path.is_dir() && !path.is_symlink() {
                    remove(&path);
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for hierarchy in cgroup_hierarchies() {
        let root = hierarchy.join(relative);
        if root.is_dir() {
            remove(&root);
        }
    }
}

/// The cgroups named `relative` that still exist, for "left behind" reports.
pub fn cgroups_left(relative: &str) -> Vec<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .map(|hierarchy| hierarchy.join(relative))
        .filter(|path| path.exists())
        .collect()
}

/// Where containerd 1.6 always puts its shims' sockets, whatever its own address.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// runc's state of containers run by `ctr` (the CRI's go to our own `Root`).
const HOST_RUNC_STATE: &str = "/run/containerd/runc";
/// libcni's result cache; containerd 1.6 does not let us move it.
pub const CNI_RESULTS: &str = "/var/lib/cni/results";

/// The ids of the tasks (containers and pod sandboxes) the containerd in `dir` runs or
/// ran without deleting them: what a killed run leaves host state for.
pub fn task_ids(dir: &Path) -> Vec<String> {
    std::fs::read_dir(
        dir.join("state/io.containerd.runtime.v2.task")
            .join(CRI_NAMESPACE),
    )
    .into_iter()
    .flatten()
    .flatten()
    .map(|entry| entry.file_name().to_string_lossy().into_owned())
    .collect()
}

/// The files on the host (outside `dir`) that a task of the containerd in `dir` keeps
/// while it runs and a killed shim never removes: its shim's socket (named by the SHA-256
/// of containerd's address, namespace and task id), runc's state of a `ctr` task, and the
/// loopback's CNI result.
pub fn host_files_of_tasks(dir: &Path, ids: &[String]) -> Vec<PathBuf> {
    let address = socket_path(dir);
    ids.iter()
        .flat_map(|id| {
            let key = format!("{}/{CRI_NAMESPACE}/{id}", address.display());
            let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
            let hex: String = digest
                .as_ref()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            [
                Path::new(SHIM_SOCKET_DIR).join(hex),
                Path::new(HOST_RUNC_STATE).join(CRI_NAMESPACE).join(id),
                Path::new(CNI_RESULTS).join(format!("cni-loopback-{id}-lo")),
            ]
        })
        .filter(|path| path.exists())
        .collect()
}

/// Removes [`host_files_of_tasks`].
pub fn remove_host_files(files: &[PathBuf]) {
    for file in files {
        if file.is_dir() {
            let _ = std::fs::remove_dir_all(file);
        } else {
            let _ = std::fs::remove_file(file);
        }
    }
}
