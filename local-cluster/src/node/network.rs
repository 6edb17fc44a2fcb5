//! The real node's pod network: a CNI bridge of its own (`wpk0`, 10.89.0.0/24), made
//! before anything starts so the control plane and CoreDNS can listen on its host address,
//! and the iptables cleanup that removes exactly what this node's kube-proxy, kubelet and
//! CNI plugins added.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::containerd::run_with_timeout;
use crate::{Error, Result};

/// The node's bridge.
pub const BRIDGE: &str = "wpk0";
/// The pod subnet (and kube-proxy's cluster CIDR).
pub const POD_SUBNET: &str = "10.89.0.0/24";
/// The bridge's host address: the pods' gateway, the node IP, and where the control plane,
/// CoreDNS and test fixtures listen for pods.
pub const HOST_IP: &str = "10.89.0.1";
/// The CNI network's name, which the bridge plugin writes into the comments of the
/// iptables rules it makes (so cleanup finds only ours).
pub const NETWORK_NAME: &str = "workpool-node";

fn ip(arguments: &[&str]) -> Result<String> {
    let mut command = Command::new("ip");
    command.args(arguments);
    let output = run_with_timeout(command, Duration::from_secs(10))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Other(format!(
            "ip {}: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

pub fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// Creates the bridge with the host address, up. An existing one is an error: it is
/// another node's (or a crashed run's, which `make down`-style cleanup must remove).
pub fn create_bridge() -> Result<()> {
    if bridge_exists() {
        return Err(Error::Other(format!(
            "the bridge {BRIDGE} already exists: another real node runs, or one was not \
             stopped (remove it with `ip link delete {BRIDGE}`)"
        )));
    }
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Deletes the bridge (its veths went with their pods' network namespaces).
pub fn delete_bridge() {
    if bridge_exists() {
        let _ = ip(&["link", "delete", BRIDGE]);
    }
}

/// The veths still attached to the bridge (none once every pod is gone).
pub fn bridge_ports() -> Vec<String> {
    std::fs::read_dir(Path::new("/sys/class/net").join(BRIDGE).join("brif"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The CNI conflist: the bridge plugin with host-local addresses (its allocations kept
/// in `ipam_dir`, not the host's /var/lib/cni), masquerading traffic that leaves the
/// subnet, then portmap for `hostPort`s. containerd's CRI sets up each pod's loopback
/// itself with the `loopback` plugin from the same bin dir, so it is not in the chain.
pub fn conflist(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                // A pod reaching itself through its own Service's ClusterIP.
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": HOST_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir.display().to_string(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// The iptables binaries whose rules a node makes (IPv4 and IPv6: kubelet and kube-proxy
/// set up both families).
pub const IPTABLES: [&str; 2] = ["iptables", "ip6tables"];
const TABLES: [&str; 4] = ["filter", "nat", "mangle", "raw"];

/// Checks that iptables works here (kube-proxy's iptables mode needs it).
pub fn check_iptables() -> Result<()> {
    let mut command = Command::new("iptables");
    command.args(["-w", "5", "-t", "nat", "-S"]);
    match run_with_timeout(command, Duration::from_secs(10)) {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(Error::Missing(format!(
            "iptables cannot list the nat table (kube-proxy needs it): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
        Err(_) => Err(Error::Missing(
            "iptables is not installed (kube-proxy's iptables mode needs it): \
             apt-get install iptables conntrack"
                .into(),
        )),
    }
}

/// Whether kube-proxy has written the ClusterIP rules of every `namespace/service:port`.
pub fn services_proxied(services: &[&str]) -> bool {
    let nat = save("iptables", "nat");
    services
        .iter()
        .all(|service| nat.contains(&format!("{service} cluster IP")))
}

fn save(binary: &str, table: &str) -> String {
    let mut command = Command::new(format!("{binary}-save"));
    command.args(["-t", table]);
    run_with_timeout(command, Duration::from_secs(10))
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// Splits an `iptables-save` rule into arguments, honouring its double quotes (comments
/// are the only quoted parts).
fn split_rule(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Whether a chain is this node's: kube-proxy's and kubelet's `KUBE-` chains (nothing
/// else on these machines runs kube-proxy or kubelet) and the bridge plugin's `CNI-`
/// chains whose rules name our network.
fn ours(chain: &str, cni_chains: &[String]) -> bool {
    chain.starts_with("KUBE-") || cni_chains.iter().any(|ours| ours == chain)
}

/// The node's chains still present, as `iptables/nat/KUBE-SERVICES`.
pub fn chains_left() -> Vec<String> {
    let mut left = Vec::new();
    for binary in IPTABLES {
        for table in TABLES {
            let text = save(binary, table);
            let cni_chains = cni_chains_of_ours(&text);
            for line in text.lines() {
                if let Some(chain) = line.strip_prefix(':').and_then(|l| l.split(' ').next())
                    && ours(chain, &cni_chains)
                {
                    left.push(format!("{binary}/{table}/{chain}"));
                }
            }
        }
    }
    left
}

fn cni_chains_of_ours(text: &str) -> Vec<String> {
    let marker = format!("name: \\\"{NETWORK_NAME}\\\"");
    text.lines()
        .filter(|line| line.starts_with("-A ") && line.contains(&marker))
        .filter_map(|line| {
            let words = split_rule(line);
            let jump = words.iter().position(|word| word == "-j")?;
            let target = words.get(jump + 1)?;
            target.starts_with("CNI-").then(|| target.clone())
        })
        .collect()
}

/// Removes this node's chains: first every rule that jumps to one of them (from the
/// built-in chains or anyone's), then the chains themselves. Rules of others stay.
pub fn remove_our_chains() {
    for binary in IPTABLES {
        for table in TABLES {
            let text = save(binary, table);
            let cni_chains = cni_chains_of_ours(&text);
            let mut chains = Vec::new();
            for line in text.lines() {
                if let Some(chain) = line.strip_prefix(':').and_then(|l| l.split(' ').next())
                    && ours(chain, &cni_chains)
                {
                    chains.push(chain.to_owned());
                    continue;
                }
                let Some(rule) = line.strip_prefix("-A ") else {
                    continue;
                };
                let words = split_rule(rule);
                let from = words.first().map(String::as_str).unwrap_or_default();
                let jumps_to_ours = words
                    .iter()
                    .position(|word| word == "-j" || word == "-g")
                    .and_then(|at| words.get(at + 1))
                    .is_some_and(|target| ours(target, &cni_chains));
                if jumps_to_ours && !ours(from, &cni_chains) {
                    let mut command = Command::new(binary);
                    command.args(["-w", "5", "-t", table, "-D"]).args(&words);
                    let _ = run_with_timeout(command, Duration::from_secs(10));
                }
            }
            for flag in ["-F", "-X"] {
                for chain in &chains {
                    let mut command = Command::new(binary);
                    command.args(["-w", "5", "-t", table, flag, chain]);
                    let _ = run_with_timeout(command, Duration::from_secs(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_rule_splits_at_spaces_outside_quotes() {
        let rule = r#"POSTROUTING -s 10.89.0.2/32 -m comment --comment "name: \"workpool-node\" id: \"ab\"" -j CNI-1f2e"#;
        assert_eq!(
            split_rule(rule),
            [
                "POSTROUTING",
                "-s",
                "10.89.0.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "workpool-node" id: "ab""#,
                "-j",
                "CNI-1f2e"
            ]
        );
    }

    #[test]
    fn only_our_cni_chains_are_ours() {
        let saved = "-A POSTROUTING -s 10.89.0.2/32 -m comment --comment \"name: \\\"workpool-node\\\" id: \\\"ab\\\"\" -j CNI-1f2e\n\
                     -A POSTROUTING -s 10.88.0.2/32 -m comment --comment \"name: \\\"other\\\" id: \\\"cd\\\"\" -j CNI-9999\n";
        assert_eq!(cni_chains_of_ours(saved), ["CNI-1f2e"]);
    }
}
