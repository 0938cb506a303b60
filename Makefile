# raftlane build, test and run targets. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo
STATE ?= .raftlane

.PHONY: all build release test lint fmt unit bench crds run down clean

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

# The embedded default: the cluster of examples/raftcluster.yaml as local
# processes, reconciled until Ctrl-C (edit `replicas` in the file to scale).
run: release
	target/release/raft-operator local -f examples/raftcluster.yaml --state-dir $(STATE)

# Stops a cluster `make run` left running.
down:
	target/release/raft-operator local down -f examples/raftcluster.yaml --state-dir $(STATE)

clean:
	$(CARGO) clean
	rm -rf $(STATE)
