//! What a node leaves on the host, and how a later run (or `make down`) removes what a
//! killed one left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::machine::{SYSCTLS_FILE, parse_sysctls, restore_sysctls};
use super::{BRIDGE, CGROUP_PREFIX, DIR_PREFIX, OWNER_FILE, containerd, network};

/// Processes in the node's cgroup tree (its pods' containers).
pub(super) fn processes_in_cgroup(relative: &str) -> Vec<Pid> {
    fn collect(dir: &Path, pids: &mut Vec<Pid>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(
                procs
                    .lines()
                    .filter_map(|line| line.trim().parse::<i32>().ok())
                    .map(Pid::from_raw),
            );
        }
        for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if child.path().is_dir() {
                collect(&child.path(), pids);
            }
        }
    }
    let mut pids = Vec::new();
    collect(&Path::new("/sys/fs/cgroup/pids").join(relative), &mut pids);
    pids.sort();
    pids.dedup();
    pids
}

/// libcni's result cache (in the host's /var/lib/cni, which containerd 1.6 does not let
/// us move): the entries of our network.
pub(super) fn remove_cni_cache() {
    let results = Path::new(containerd::CNI_RESULTS);
    let prefix = format!("{}-", network::NETWORK_NAME);
    for entry in std::fs::read_dir(results).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // Made by the CNI plugins for us; removed when no one else keeps anything there.
    let _ = std::fs::remove_dir(results);
    let _ = std::fs::remove_dir("/var/lib/cni");
}

/// The node directories under /tmp, each with the pid of its owner (None when unreadable).
fn node_dirs() -> Vec<(PathBuf, Option<i32>)> {
    std::fs::read_dir("/tmp")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(DIR_PREFIX))
        .map(|entry| {
            let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE))
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok());
            (entry.path(), owner)
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The processes that own a node directory and still run.
pub(super) fn live_owners() -> Vec<i32> {
    node_dirs()
        .into_iter()
        .filter_map(|(_, owner)| owner)
        .filter(|pid| alive(*pid))
        .collect()
}

/// Removes what real nodes whose test process was killed left behind: their shims and
/// containers, host files, mounts, cgroups and directories, the bridge and the node's
/// iptables chains, and puts back the host sysctls. Does nothing while a node is alive.
/// Says what it removed. For `make down` after a crash.
pub fn remove_stale() -> Vec<String> {
    let mut removed = Vec::new();
    if !live_owners().is_empty() {
        // A live node's kubelet socket, chains and bridge look like a dead one's.
        return removed;
    }
    let mut saved_sysctls = Vec::new();
    for (dir, owner) in node_dirs() {
        if owner.is_some_and(alive) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(dir.join(SYSCTLS_FILE)) {
            saved_sysctls = parse_sysctls(&text);
        }
        for pid in containerd::processes_mentioning(&dir) {
            let _ = kill(pid, Signal::SIGKILL);
            removed.push(format!("process {pid}"));
        }
        if let Some(owner) = owner {
            let cgroup = format!("{CGROUP_PREFIX}{owner}");
            for pid in processes_in_cgroup(&cgroup) {
                let _ = kill(pid, Signal::SIGKILL);
                removed.push(format!("container process {pid}"));
            }
            std::thread::sleep(Duration::from_millis(300));
            containerd::remove_cgroup_tree(&cgroup);
        }
        let containerd_dir = dir.join("containerd");
        let files = containerd::host_files_of_tasks(
            &containerd_dir,
            &containerd::task_ids(&containerd_dir),
        )
        .into_iter()
        .chain(kubelet_host_files(&dir))
        .collect::<Vec<_>>();
        containerd::remove_host_files(&files);
        removed.extend(files.iter().map(|file| format!("file {}", file.display())));
        remove_kubelet_host_files(&dir);
        let mounts = containerd::mounts_under(&dir);
        removed.extend(
            mounts
                .iter()
                .map(|mount| format!("mount {}", mount.display())),
        );
        containerd::unmount_all_under(&dir);
        if containerd::mounts_under(&dir).is_empty() && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(format!("directory {}", dir.display()));
        }
    }
    if live_owners().is_empty() {
        let chains = network::chains_left();
        if !chains.is_empty() {
            network::remove_our_chains();
            removed.extend(chains.into_iter().map(|chain| format!("chain {chain}")));
        }
        if network::bridge_exists() {
            network::delete_bridge();
            removed.push(format!("the bridge {BRIDGE}"));
        }
        remove_cni_cache();
        if !saved_sysctls.is_empty() {
            restore_sysctls(&saved_sysctls);
            removed.push("the host sysctls it changed (restored)".into());
        }
    }
    removed
}

/// Where kubelet always puts its device-plugin socket, whatever its `--root-dir`.
const KUBELET_DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";
/// Where kubelet links every container's log, whatever its `podLogsDir`.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";

/// Files kubelet made on the host outside the node's directory `dir`: its device-plugin
/// socket and the links in /var/log/containers to logs under `dir`.
pub(super) fn kubelet_host_files(dir: &Path) -> Vec<PathBuf> {
    let socket = Path::new(KUBELET_DEVICE_PLUGINS).join("kubelet.sock");
    let links = std::fs::read_dir(CONTAINER_LOG_LINKS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|link| std::fs::read_link(link).is_ok_and(|target| target.starts_with(dir)));
    socket
        .exists()
        .then_some(socket)
        .into_iter()
        .chain(links)
        .collect()
}

/// Removes [`kubelet_host_files`], then the directories they were in when nothing else
/// is left there (kubelet made them; nothing else here uses them).
pub(super) fn remove_kubelet_host_files(dir: &Path) {
    containerd::remove_host_files(&kubelet_host_files(dir));
    for empty in [
        KUBELET_DEVICE_PLUGINS,
        "/var/lib/kubelet",
        CONTAINER_LOG_LINKS,
    ] {
        let _ = std::fs::remove_dir(empty);
    }
}
