//! Pod networking with iproute2: a host bridge, and per pod a network namespace joined
//! to it by a veth pair, with an address from the pod subnet.

use std::process::Command;

use crate::{HarnessError, Result};

/// The pod network: a /24 whose `.1` is the bridge (the host side).
#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub bridge: String,
    /// First three octets, e.g. `10.88.0`.
    pub prefix: String,
}

/// Prefix of every namespace and host-side veth this agent creates, so a restart can
/// find and remove what a crashed run left behind.
const NETNS_PREFIX: &str = "wp-";
const VETH_PREFIX: &str = "wpv";

fn ip(args: &[&str]) -> Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(HarnessError::io("running ip (install iproute2)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(HarnessError::Other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

impl PodNetwork {
    pub fn host_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn pod_ip(&self, index: u8) -> String {
        format!("{}.{index}", self.prefix)
    }

    /// Creates the bridge with the host address (idempotent).
    pub fn create_bridge(&self) -> Result<()> {
        if ip(&["link", "show", &self.bridge]).is_err() {
            ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        }
        let cidr = format!("{}/24", self.host_ip());
        if !ip(&["addr", "show", "dev", &self.bridge])?.contains(&cidr) {
            ip(&["addr", "add", &cidr, "dev", &self.bridge])?;
        }
        ip(&["link", "set", &self.bridge, "up"])?;
        Ok(())
    }

    /// Removes the bridge (whoever set up the pod network does this, last).
    pub fn remove_bridge(&self) {
        let _ = ip(&["link", "delete", &self.bridge]);
    }

    /// Removes every pod namespace and veth of ours. The bridge stays: the control plane
    /// and NATS listen on its address.
    pub fn remove_all(&self) {
        if let Ok(list) = ip(&["netns", "list"]) {
            for name in list
                .lines()
                .filter_map(|line| line.split_whitespace().next())
            {
                if name.starts_with(NETNS_PREFIX) {
                    let _ = ip(&["netns", "delete", name]);
                }
            }
        }
        if let Ok(links) = ip(&["-o", "link", "show"]) {
            for name in links
                .lines()
                .filter_map(|line| line.split(':').nth(1))
                .map(|n| n.trim().split('@').next().unwrap_or(""))
            {
                if name.starts_with(VETH_PREFIX) {
                    let _ = ip(&["link", "delete", name]);
                }
            }
        }
    }

    pub fn namespace_name(index: u8) -> String {
        format!("{NETNS_PREFIX}{index}")
    }

    /// A namespace with `eth0` at the pod address, `lo` up and a default route via the
    /// bridge.
    pub fn create_pod(&self, index: u8) -> Result<String> {
        let netns = Self::namespace_name(index);
        let host = format!("{VETH_PREFIX}{index}");
        let peer = format!("wpc{index}");
        self.delete_pod(index);
        ip(&["netns", "add", &netns])?;
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &netns])?;
        ip(&["link", "set", &host, "master", &self.bridge, "up"])?;
        ip(&["-n", &netns, "link", "set", &peer, "name", "eth0"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{}/24", self.pod_ip(index)),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &self.host_ip(),
        ])?;
        Ok(netns)
    }

    pub fn delete_pod(&self, index: u8) {
        let _ = ip(&["netns", "delete", &Self::namespace_name(index)]);
        let _ = ip(&["link", "delete", &format!("{VETH_PREFIX}{index}")]);
    }
}
