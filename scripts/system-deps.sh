#!/usr/bin/env bash
# The Debian packages the local cluster and the tests use, installed when missing:
# iproute2 (pod network namespaces), openssl (control-plane keys), chromium (the console's
# browser test). Idempotent; a second run installs nothing.
set -euo pipefail
declare -A package_of=([ip]=iproute2 [openssl]=openssl [chromium]=chromium)
missing=()
for command in "${!package_of[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${package_of[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]} (Debian packages)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
