#!/usr/bin/env bash
# The Debian packages the local cluster and the tests use, installed when missing:
# iproute2 (pod network namespaces), openssl (control-plane keys), chromium (the console's
# browser test), containerd and runc (the node's container runtime; ctr comes with
# containerd), musl-tools (musl-gcc, for the C parts of `make image`'s static musl build),
# iptables and conntrack (kube-proxy's iptables mode on the real node).
# Idempotent; a second run installs nothing.
#
# containerd and runc are Debian's (1.6.20 and 1.1.5 on bookworm) rather than built like
# the Go tools in scripts/tools.sh: they are packaged, they are the versions a kubelet
# v1.35 node was checked with by hand here, and neither fits tools.sh's CGO_ENABLED=0
# builds: runc's nsenter (libcontainer/nsenter) is C compiled through cgo, and its
# default seccomp tag needs libseccomp headers; containerd's default build includes the
# btrfs snapshotter only with cgo and btrfs headers (without cgo it is left out).
set -euo pipefail
declare -A package_of=([ip]=iproute2 [openssl]=openssl [chromium]=chromium
  [containerd]=containerd [ctr]=containerd [runc]=runc [musl-gcc]=musl-tools
  [iptables]=iptables [conntrack]=conntrack)
missing=()
for command in "${!package_of[@]}"; do
  package=${package_of[$command]}
  command -v "$command" >/dev/null 2>&1 || [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]} (Debian packages)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
