//! What a node needs of this machine, and the host-wide settings it changes and puts
//! back.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{containerd, network};
use crate::{Error, Result};

/// Host-wide sysctls the node changes and we put back on stop, as the machine is shared:
/// kubelet sets the first six when `protectKernelDefaults` is false (its default), and
/// the bridge plugin turns on IPv4 forwarding for its gateway (a ClusterIP that leads to
/// another pod on the bridge is routed through the host). They are also written to the
/// node's directory, so [`super::remove_stale`] can put them back after a killed run.
const HOST_SYSCTLS: [&str; 7] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
];
pub(super) const SYSCTLS_FILE: &str = "sysctls.before";

pub(super) fn read_sysctls() -> Vec<(String, String)> {
    HOST_SYSCTLS
        .iter()
        .filter_map(|key| {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok()?;
            Some(((*key).to_owned(), value.trim().to_owned()))
        })
        .collect()
}

pub(super) fn restore_sysctls(saved: &[(String, String)]) {
    for (key, value) in saved {
        if HOST_SYSCTLS.contains(&key.as_str()) {
            let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
        }
    }
}

pub(super) fn parse_sysctls(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Fails, naming what is missing, unless this machine can run a node.
pub(super) fn check_machine() -> Result<()> {
    // /proc/self belongs to the process's effective user.
    let effective_uid = std::fs::metadata("/proc/self").map(|meta| meta.uid()).ok();
    if effective_uid != Some(0) {
        return Err(Error::Missing(
            "a real node needs root (containerd, runc, network namespaces, iptables)".into(),
        ));
    }
    let missing = missing_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    if !missing.is_empty() {
        return Err(Error::Missing(format!(
            "cgroups: no {} hierarchy under /sys/fs/cgroup (kubelet and runc need cpu, \
             memory and pids)",
            missing.join(", ")
        )));
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !has_overlayfs(&filesystems) {
        return Err(Error::Missing(
            "overlayfs: the kernel has no overlay filesystem (containerd's snapshotter needs \
             it; try `modprobe overlay`)"
                .into(),
        ));
    }
    network::check_iptables()?;
    containerd::check_installed()?;
    if containerd::find_on_path("ip").is_none() {
        return Err(Error::Missing(
            "ip is not installed: run `make deps` (iproute2)".into(),
        ));
    }
    Ok(())
}

/// The cgroup controllers kubelet and runc need that `root` (normally /sys/fs/cgroup)
/// lacks: none on a cgroup v2 machine with them enabled, or v1 with their hierarchies.
fn missing_cgroup_controllers(root: &Path) -> Vec<&'static str> {
    let v2_controllers = std::fs::read_to_string(root.join("cgroup.controllers"));
    ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|controller| match &v2_controllers {
            Ok(enabled) => !enabled.split_whitespace().any(|c| c == *controller),
            Err(_) => !root.join(controller).join("tasks").is_file(),
        })
        .collect()
}

/// Whether `/proc/filesystems` lists overlayfs.
fn has_overlayfs(filesystems: &str) -> bool {
    filesystems
        .lines()
        .any(|line| line.split_whitespace().last() == Some("overlay"))
}

/// Makes the node's cgroup in every v1 hierarchy (kubelet requires its `cgroupRoot` to
/// exist); a new cpuset cgroup starts with no CPUs or memory nodes, so it gets the root's.
pub(super) fn make_cgroup_root(relative: &str) -> Result<()> {
    for hierarchy in containerd::cgroup_hierarchies() {
        let dir = hierarchy.join(relative);
        std::fs::create_dir_all(&dir)
            .map_err(Error::io(format!("creating the cgroup {}", dir.display())))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file))
                && std::fs::read_to_string(dir.join(file)).is_ok_and(|own| own.trim().is_empty())
            {
                std::fs::write(dir.join(file), value.trim())
                    .map_err(Error::io(format!("setting {file} of {}", dir.display())))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cgroup_controllers_are_named() {
        let root = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            missing_cgroup_controllers(root.path()),
            ["cpu", "memory", "pids"]
        );
        for controller in ["cpu", "memory"] {
            std::fs::create_dir(root.path().join(controller)).expect("mkdir");
            std::fs::write(root.path().join(controller).join("tasks"), "").expect("tasks");
        }
        assert_eq!(missing_cgroup_controllers(root.path()), ["pids"]);
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("controllers");
        assert!(missing_cgroup_controllers(root.path()).is_empty());
    }

    #[test]
    fn overlayfs_is_found_in_proc_filesystems() {
        assert!(has_overlayfs("nodev\tsysfs\n\text4\nnodev\toverlay\n"));
        assert!(!has_overlayfs("nodev\tsysfs\n\text4\n"));
    }

    #[test]
    fn saved_sysctls_read_back() {
        assert_eq!(
            parse_sysctls("kernel/panic=1\nnet/ipv4/ip_forward=0\n"),
            [
                ("kernel/panic".to_owned(), "1".to_owned()),
                ("net/ipv4/ip_forward".to_owned(), "0".to_owned())
            ]
        );
    }
}
