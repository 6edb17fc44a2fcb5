#!/usr/bin/env bash
# Builds the pinned upstream tools from the Go module proxy (and cargo-deny from crates.io)
# into .tools/ (git-ignored).
# Idempotent: a tool whose binary is already present is not rebuilt.
# Usage: scripts/tools.sh [--print-bin] [tool...]   (default: all tools)
#   --print-bin: print each tool's bin directory on stdout (for scripts and tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
. "$root/scripts/versions.env"
tools_dir="$root/.tools"
mkdir -p "$tools_dir"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

need_go() {
  command -v go >/dev/null || { echo "tools.sh: Go is required (https://go.dev/dl); none found on PATH" >&2; exit 1; }
}

# already_built BIN_DIR BINARY LABEL: true (after saying so) when the binary is there.
already_built() {
  [ -x "$1/$2" ] || return 1
  $print_bin || echo "tools: $3 already built ($1/$2)" >&2
  $print_bin && echo "$1"
  return 0
}

# go_install NAME VERSION PACKAGE BINARY: plain `go install` into .tools/NAME-VERSION/bin.
go_install() {
  local name=$1 version=$2 package=$3 binary=$4
  local bin_dir="$tools_dir/$name-$version/bin"
  already_built "$bin_dir" "$binary" "$name $version" && return 0
  need_go
  echo "tools: building $name $version (first time takes a minute or two)" >&2
  mkdir -p "$bin_dir"
  GOBIN="$bin_dir.partial" go install -trimpath -ldflags "-s -w ${GO_LDFLAGS:-}" "$package@$version"
  mv "$bin_dir.partial/$binary" "$bin_dir/$binary"
  rmdir "$bin_dir.partial" 2>/dev/null || true
  $print_bin && echo "$bin_dir"
  return 0
}

# go_build_in_module NAME VERSION MODULE@VERSION PACKAGE BINARY [LDFLAGS]: for modules
# that `go install` refuses (replace directives): a throwaway module requires them.
go_build_in_module() {
  local name=$1 version=$2 requirement=$3 package=$4 binary=$5 ldflags=${6:-}
  local bin_dir="$tools_dir/$name-$version/bin"
  already_built "$bin_dir" "$binary" "$name $version" && return 0
  need_go
  echo "tools: building $name $version (first time takes a few minutes)" >&2
  local work="$tools_dir/build/$name-$version"
  mkdir -p "$work" "$bin_dir"
  (
    cd "$work"
    [ -f go.mod ] || go mod init "workpool.local/build/$name" >/dev/null 2>&1
    printf 'package tools\n\nimport _ "%s"\n' "$package" > tools.go
    sed -i '1i //go:build tools' tools.go
    go mod edit -require="$requirement"
    go mod tidy >/dev/null 2>&1 || go mod tidy
    go build -trimpath -ldflags "-s -w $ldflags" -o "$bin_dir/$binary.partial" "$package"
  )
  mv "$bin_dir/$binary.partial" "$bin_dir/$binary"
  $print_bin && echo "$bin_dir"
  return 0
}

# The commands built from the throwaway Kubernetes module (its tools.go imports each, so
# `go mod tidy` records every dependency they need).
kubernetes_commands=(kube-apiserver kube-controller-manager kubectl kubelet kube-proxy kube-scheduler)

# Kubernetes' go.mod replaces its ~30 staging modules with local paths, so a throwaway
# module requires k8s.io/kubernetes and points each staging module at its published tag.
# The .prepared marker holds the command list it was prepared for: adding a command
# prepares the module again (quick once the module cache is warm).
kubernetes_module() {
  local work="$tools_dir/build/kubernetes-$KUBERNETES_VERSION"
  local prepared_for="${kubernetes_commands[*]}"
  if [ -f "$work/.prepared" ] && [ "$(cat "$work/.prepared")" = "$prepared_for" ]; then
    echo "$work"
    return 0
  fi
  need_go
  mkdir -p "$work"
  (
    cd "$work"
    rm -f go.mod go.sum .prepared
    go mod init workpool.local/build/kubernetes >/dev/null 2>&1
    local download gomod staging command
    download=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION")
    gomod=$(printf '%s\n' "$download" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*#\1#p' "$gomod")
    [ -n "$staging" ] || { echo "tools: no staging modules found in $gomod" >&2; exit 1; }
    go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
    for module in $staging; do go mod edit -replace="$module=$module@v0.${KUBERNETES_VERSION#v1.}"; done
    {
      printf '%s\n' '//go:build tools' '' 'package tools' '' 'import ('
      for command in "${kubernetes_commands[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$command"; done
      printf ')\n'
    } > tools.go
    go mod tidy
    # Go 1.26 links protobuf < v1.36.12 without dead-code elimination (much larger binaries).
    local protobuf
    protobuf=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)
    if [ "$(printf '%s\n' "$protobuf" v1.36.12 | sort -V | head -1)" != v1.36.12 ]; then
      go get google.golang.org/protobuf@v1.36.12 && go mod tidy
    fi
    printf '%s\n' "$download" | sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]\{40\}\)".*/\1/p' | head -1 > .commit
    printf '%s\n' "$prepared_for" > .prepared
  ) >&2
  echo "$work"
}

build_kubernetes_command() {
  local command=$1
  local bin_dir="$tools_dir/kubernetes-$KUBERNETES_VERSION/bin"
  already_built "$bin_dir" "$command" "$command $KUBERNETES_VERSION" && return 0
  echo "tools: building $command $KUBERNETES_VERSION (first time: 5-10 minutes each, ~1 GB of modules)" >&2
  local work commit minor stamp="" package
  work=$(kubernetes_module)
  commit=$(cat "$work/.commit")
  minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
  # Without the stamp clients see v0.0.0-master and refuse or misbehave.
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $package.gitVersion=$KUBERNETES_VERSION -X $package.gitMajor=1 -X $package.gitMinor=$minor"
    stamp+=" -X $package.gitCommit=$commit -X $package.gitTreeState=clean -X $package.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$bin_dir"
  (cd "$work" && go build -trimpath -ldflags "-s -w$stamp" -o "$bin_dir/$command.partial" "k8s.io/kubernetes/cmd/$command")
  mv "$bin_dir/$command.partial" "$bin_dir/$command"
  $print_bin && echo "$bin_dir"
  return 0
}

build_etcd() { go_build_in_module etcd "$ETCD_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3 etcd; }

# Helm's version variables are stamped, or it reports v3.x-dev and renders charts for an
# old default Kubernetes.
build_helm() {
  local minor
  minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
  GO_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm helm
}

build_nats_server() { go_install nats-server "$NATS_SERVER_VERSION" github.com/nats-io/nats-server/v2 nats-server; }
build_natscli() { go_install natscli "$NATSCLI_VERSION" github.com/nats-io/natscli/nats nats; }
# Without the web UI's assets (they are built with npm, outside the Go module): the HTTP
# API that tests and dashboards use is all there.
build_prometheus() { go_install prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/prometheus prometheus; }
build_kind() { go_install kind "$KIND_VERSION" sigs.k8s.io/kind kind; }

# The Prometheus Operator's PodMonitor and PrometheusRule CRDs (from its Go module), so
# tests can check the chart's monitors and rules against the real schemas.
build_prometheus_operator_crds() {
  local dir="$tools_dir/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION/bin"
  local files=(monitoring.coreos.com_podmonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
  already_built "$dir" "${files[-1]}" "prometheus-operator CRDs $PROMETHEUS_OPERATOR_VERSION" && return 0
  need_go
  local module file
  module=$(cd "$tools_dir" && GOFLAGS=-mod=mod go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  mkdir -p "$dir"
  for file in "${files[@]}"; do
    cp "$module/example/prometheus-operator-crd/$file" "$dir/$file.partial"
    mv "$dir/$file.partial" "$dir/$file"
  done
  $print_bin && echo "$dir"
  return 0
}

# promtool, to check the alert rules the chart ships.
build_promtool() { go_install promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool promtool; }

# The CNI plugins a node's bridge network uses, one module and one `go install` for all
# four; their version string is stamped or they report "version unknown".
cni_plugins=(main/bridge ipam/host-local main/loopback meta/portmap)
build_cni_plugins() {
  local bin_dir="$tools_dir/cni-plugins-$CNI_PLUGINS_VERSION/bin" plugin packages=() complete=true
  for plugin in "${cni_plugins[@]}"; do
    [ -x "$bin_dir/${plugin#*/}" ] || complete=false
    packages+=("github.com/containernetworking/plugins/plugins/$plugin@$CNI_PLUGINS_VERSION")
  done
  if $complete; then
    already_built "$bin_dir" "${cni_plugins[-1]#*/}" "CNI plugins $CNI_PLUGINS_VERSION" && return 0
  fi
  need_go
  echo "tools: building CNI plugins $CNI_PLUGINS_VERSION (${cni_plugins[*]#*/}; first time takes a minute or two)" >&2
  mkdir -p "$bin_dir"
  rm -rf "$bin_dir.partial"
  GOBIN="$bin_dir.partial" go install -trimpath \
    -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    "${packages[@]}"
  for plugin in "${cni_plugins[@]}"; do mv "$bin_dir.partial/${plugin#*/}" "$bin_dir/${plugin#*/}"; done
  rmdir "$bin_dir.partial" 2>/dev/null || true
  $print_bin && echo "$bin_dir"
  return 0
}

# CoreDNS's own version is in its source; only the commit would be stamped, and it is
# not needed.
build_coredns() { go_install coredns "$COREDNS_VERSION" github.com/coredns/coredns coredns; }
# crictl reports "unknown" unless its version is stamped.
build_crictl() {
  GO_LDFLAGS="-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    go_install crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl crictl
}

# cargo-deny (`make deny`), from crates.io with the workspace's toolchain.
build_cargo_deny() {
  local root="$tools_dir/cargo-deny-$CARGO_DENY_VERSION"
  already_built "$root/bin" cargo-deny "cargo-deny $CARGO_DENY_VERSION" && return 0
  echo "tools: building cargo-deny $CARGO_DENY_VERSION (first time takes a few minutes)" >&2
  rm -rf "$root.partial"
  cargo install --quiet --locked --root "$root.partial" "cargo-deny@$CARGO_DENY_VERSION" >&2
  rm -rf "$root" && mv "$root.partial" "$root"
  $print_bin && echo "$root/bin"
  return 0
}

print_bin=false
if [ "${1:-}" = --print-bin ]; then print_bin=true; shift; fi

wanted=("$@")
all_tools=(nats-server natscli etcd kube-apiserver kube-controller-manager kubectl helm prometheus promtool
  prometheus-operator-crds kubelet kube-proxy kube-scheduler cni-plugins coredns crictl)
# Built only when asked for by name: kind is for machines with Docker (scripts/kind.sh),
# cargo-deny for `make deny`.
optional_tools=(kind cargo-deny)
[ ${#wanted[@]} -gt 0 ] || wanted=("${all_tools[@]}")
for tool in "${wanted[@]}"; do
  case "$tool" in
    nats-server) build_nats_server ;;
    natscli) build_natscli ;;
    etcd) build_etcd ;;
    helm) build_helm ;;
    kind) build_kind ;;
    prometheus) build_prometheus ;;
    promtool) build_promtool ;;
    prometheus-operator-crds) build_prometheus_operator_crds ;;
    cni-plugins) build_cni_plugins ;;
    coredns) build_coredns ;;
    crictl) build_crictl ;;
    cargo-deny) build_cargo_deny ;;
    kube-apiserver | kube-controller-manager | kubectl | kubelet | kube-proxy | kube-scheduler)
      build_kubernetes_command "$tool" ;;
    *) echo "tools.sh: unknown tool '$tool' (known: ${all_tools[*]} ${optional_tools[*]})" >&2; exit 2 ;;
  esac
done
