# raftlane build, test and run targets. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo
STATE ?= .raftlane

.PHONY: all build release test lint fmt unit bench cluster cluster-down crds chart e2e-kind run clean

all: build

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --workspace --release

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit and integration tests: real processes, sockets and fsync on loopback.
unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

test: lint unit

# Benchmark programs (release build): each prints figures measured side by side.
# RAFTLANE_BENCH_SECS shortens the 60 s RTT-tolerance runs.
bench:
	$(CARGO) bench -p raft-node --bench transport
	$(CARGO) bench -p raft-node --bench cluster

# Regenerate the CRD manifest from the Rust types (a test fails when it is stale).
crds:
	$(CARGO) run -q -p raft-operator -- crdgen --out crds/raftcluster.yaml

# A 3-member cluster of local processes under $(STATE)/cluster (PID files, logs).
cluster: release
	scripts/cluster.sh up

cluster-down:
	scripts/cluster.sh down

clean:
	$(CARGO) clean
	rm -rf $(STATE)
