# Workpool: one command list. `make` (or `make help`) lists the targets.
SHELL := /usr/bin/env bash
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help tools deps build up down test fmt lint deny static unit e2e generate drift bench chaos run-operator chart kind-up kind-e2e kind-down image

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

tools: ## Build the pinned upstream tools (nats-server, etcd, kube-apiserver, kubelet, CNI plugins, CoreDNS, ...) into .tools/
	@scripts/tools.sh

build: ## Build every binary of the workspace (debug)
	$(CARGO) build --workspace --bins

up: ## Start a local Workpool on http://127.0.0.1:8080 and print the curl demo
	@scripts/up.sh

down: ## Stop everything `make up` started
	@scripts/down.sh

fmt: ## Format the workspace
	$(CARGO) fmt --all

lint: deny ## cargo fmt --check, clippy and rustdoc with warnings denied, cargo deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

deny: ## cargo deny: licenses, duplicate versions and sources of every dependency (deny.toml)
	"$$(scripts/tools.sh --print-bin cargo-deny)/cargo-deny" --workspace check licenses bans sources

deps: ## Debian packages the cluster and tests use (iproute2, openssl, chromium, containerd, runc, musl-tools, iptables), if missing
	@scripts/system-deps.sh

static: ## hadolint, yamllint and shellcheck; checks the kind path's files agree
	@scripts/static-checks.sh

unit: ## Unit tests only (no servers)
	$(CARGO) test --workspace --lib --bins

e2e: tools deps build ## Integration tests: real nats-server, real kube-apiserver, the real binaries
	$(CARGO) test -p workpool-e2e -p workpool-local-cluster

test: tools deps lint static build chart drift ## Everything CI runs: lint, unit, integration and drift checks
	$(CARGO) test --workspace

chart: ## helm lint of charts/workpool, with and without its options
	@scripts/chart.sh check

generate: ## Regenerate checked-in files (docs/openapi.json, crds/, the chart's CRD and charts/rendered/)
	$(CARGO) run -q -p workpool-api --bin openapi > docs/openapi.json
	$(CARGO) run -q -p workpool-operator --bin crdgen > crds/workpool.dev_workpools.yaml
	scripts/chart.sh generate

drift: generate ## Fails when a checked-in generated file differs from its generator's output
	@git diff --exit-code --stat -- docs/openapi.json crds charts \
	  || { echo "drift: generated files changed; review them, commit, and run again" >&2; git diff -- docs/openapi.json crds charts | head -40 >&2; exit 1; }

run-operator: tools ## Run the operator out of cluster against $$KUBECONFIG (or ~/.kube/config)
	$(CARGO) run -p workpool-operator --bin workpool-operator

bench: tools ## The benchmark suite: figures beside same-run baselines, medians, table into docs/BENCHMARKS.md
	$(CARGO) build --release -p workpool-api -p workpool-worker -p workpool-operator -p workpool-bench --bins
	./target/release/workpool-bench --write docs/BENCHMARKS.md

chaos: tools build ## The fault-injecting checker, full run (CHAOS_SEED, CHAOS_JOBS; see docs/reliability.md)
	./target/debug/workpool-chaos

image: deps ## The Workpool image and the node's pause image as OCI layout tars in target/image/ (no Docker, no registry)
	@rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
	$(CARGO) build --release --locked --target x86_64-unknown-linux-musl \
	  -p workpool-operator --bin workpool-operator -p workpool-api --bin workpool-api \
	  -p workpool-worker --bin workpool-worker --bin workpool-smoke -p workpool-local-cluster --bin workpool-pause
	$(CARGO) run -q -p workpool-local-cluster --bin workpool-image -- \
	  --binaries target/x86_64-unknown-linux-musl/release --out-dir target/image
	@echo "import into a node's containerd: ctr -n k8s.io images import target/image/workpool.oci.tar (and pause.oci.tar)"

kind-up: ## With Docker: build the image, create a kind cluster, helm install, demo on :8080
	@scripts/kind.sh up

kind-e2e: kind-up ## With Docker: the end-to-end scenarios against the kind cluster
	@scripts/kind.sh e2e

kind-down: ## With Docker: delete the kind cluster
	@scripts/kind.sh down
