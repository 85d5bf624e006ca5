# Entry points of AI-First Runtime. `make` creates .venv and installs everything it needs by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AIRUN_STATE_DIR ?= $(CURDIR)/.airun

.PHONY: help venv binaries node-binaries tools postgres inspector node-packages up down test test-unit test-integration e2e e2e-down kind-e2e demo bench bench-peers bench-shards bench-faults lint clean
help:
	@echo "make demo    start everything and run the examples end to end"
	@echo "make test    the whole test suite (starts a private control plane)"
	@echo "make up      start the local control plane and the operator;  make down  stops them"
	@echo "make lint    ruff, mypy, import-linter;  make bench  benchmarks"
	@echo "make bench-peers  the same chain on this operator and on a Temporal dev server (builds it once)"
	@echo "make bench-shards the same chain run by 1, 2 and 3 operator replicas sharing shard Leases"
	@echo "make bench-faults 50 workflows of idempotent POSTs, the operator SIGKILLed 20 times: lost/doubled/orphaned"
	@echo "make e2e     the operator image and the chart on a node of this machine (kubelet, containerd; root)"
	@echo "make kind-e2e  the same on a kind cluster (needs Docker and kind)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl built from tools/k8s (cached in
# ~/.cache/airun/k8s, built once); node-binaries adds kubelet and kube-proxy (make e2e).
binaries:
	@bash tools/k8s/build.sh

node-binaries:
	@bash tools/k8s/build.sh --node >/dev/null

# Checking tools (helm, promtool, a Lua interpreter) built from the Go modules under tools/ (cached by go.sum).
GO_TOOLS := helm promtool lua
tools:
	@for module in $(GO_TOOLS); do bash tools/build-go-tools.sh $$module >/dev/null || exit 1; done

# Debian's PostgreSQL server, for the audit store's tests (installed when missing).
postgres:
	@bash tools/ensure-postgres.sh

# Debian's containerd, runc, CNI plugins, iptables, conntrack, docker.io and mmdebstrap, for make e2e.
node-packages:
	@bash tools/e2e/ensure-packages.sh

up: venv binaries
	$(BIN)/airun up

down: venv
	$(BIN)/airun down

# The MCP Inspector (its CLI mode), a client nobody here wrote, for tests/integration/test_mcp_inspector.py: npm ci
# from tools/mcp-inspector/package-lock.json (npm's cache keeps the tarballs), again only when the lockfile changes.
INSPECTOR := tools/mcp-inspector/node_modules/.installed
$(INSPECTOR): tools/mcp-inspector/package.json tools/mcp-inspector/package-lock.json
	npm ci --prefix tools/mcp-inspector --no-audit --no-fund --loglevel=error
	touch $@
inspector: $(INSPECTOR)

test: venv binaries tools postgres inspector
	$(BIN)/pytest tests

test-unit: venv
	$(BIN)/pytest tests/unit

test-integration: venv binaries tools postgres inspector
	$(BIN)/pytest tests/integration

# The operator image (Dockerfile) and the chart (helm install) on a cluster with a kubelet, the operator as a
# Pod, tests/e2e against it (tools/e2e/run.sh). make e2e: a single node on this machine (state in .airun/e2e/,
# removed afterwards, also on failure; KEEP_CLUSTER=1 keeps it, make e2e-down removes it).
e2e: venv node-binaries tools node-packages
	bash tools/e2e/run.sh node

e2e-down: venv
	$(BIN)/python tools/e2e/node.py down $(AIRUN_STATE_DIR)/e2e

# The same on kind (users with Docker and kind; fails at once without them).
kind-e2e:
	@bash tools/e2e/run.sh kind --check
	@$(MAKE) --no-print-directory venv binaries tools
	bash tools/e2e/run.sh kind

demo: up
	$(BIN)/python examples/demo.py

bench: venv binaries
	$(BIN)/python -m bench

# The same chain run by 1, 2 and 3 operator replicas sharing the workflows through shard Leases (--shards).
bench-shards: venv binaries
	$(BIN)/python -m bench.shards

# Issue 14's fault run: idempotent HTTP steps, the operator SIGKILLed at random (FAULTS_ARGS=--replicas 3).
bench-faults: venv binaries
	$(BIN)/python -m bench.faults $(FAULTS_ARGS)

# The same N x M chain on this operator and on Temporal (its CLI's dev server built from the Go module proxy
# into the tools cache, about 4 min once; the temporalio SDK into .venv). A benchmark: never run by `make test`.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench-peers: venv binaries $(BENCH_STAMP)
	@bash tools/build-go-tools.sh temporal >/dev/null
	$(BIN)/python -m bench.peers

lint: venv
	$(BIN)/ruff check controller tests bench examples
	$(BIN)/ruff format --check controller tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

clean: down e2e-down  # a node first: .airun/e2e holds its mounts while it runs
	rm -rf .airun
