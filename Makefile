# Workpool: one command list. `make` (or `make help`) lists the targets.
SHELL := /usr/bin/env bash
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help tools deps build up down test lint static unit e2e generate bench chaos run-operator chart kind-up kind-e2e kind-down image

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

lint: ## cargo fmt --check and clippy with -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

deps: ## Debian packages the cluster and tests use (iproute2, openssl, chromium, containerd, runc, musl-tools, iptables), if missing
	@scripts/system-deps.sh

static: ## hadolint, yamllint and shellcheck; checks the kind path's files agree
	@scripts/static-checks.sh

unit: ## Unit tests only (no servers)
	$(CARGO) test --workspace --lib --bins

e2e: tools deps build ## Integration tests: real nats-server, real kube-apiserver, the real binaries
	$(CARGO) test -p workpool-e2e -p workpool-local-cluster

test: tools deps lint static build chart ## Everything CI runs: lint, unit, integration and drift checks
	$(CARGO) test --workspace

chart: ## helm lint and the rendered-template drift check of charts/workpool
	@scripts/chart.sh check

generate: ## Regenerate checked-in files (docs/openapi.json, crds/, the chart's CRD and charts/rendered/)
	WORKPOOL_UPDATE_GENERATED=1 $(CARGO) test -p workpool-api --test openapi
	$(CARGO) run -q -p workpool-operator --bin crdgen > crds/workpool.dev_workpools.yaml
	scripts/chart.sh generate

run-operator: tools ## Run the operator out of cluster against $$KUBECONFIG (or ~/.kube/config)
	$(CARGO) run -p workpool-operator --bin workpool-operator

bench: tools ## End-to-end jobs/s vs raw JetStream publish rate (see docs/BENCHMARKS.md)
	$(CARGO) build --release --workspace --bins
	./target/release/workpool-bench

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
