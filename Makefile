# raftlane build, test and run targets. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo
STATE ?= .raftlane

.PHONY: all build release test lint deny deny-advisories fuzz fmt unit bench soak crds manifests images e2e-kind e2e-controlplane controlplane run down clean

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
	$(MAKE) --no-print-directory deny

# Licenses, banned crates, duplicate versions (warnings) and sources of the
# dependency graph, as deny.toml says; cargo-deny is built from crates.io by
# scripts/tools.sh into .tools/ (cold ~8 min on 2 cores, reused after).
deny:
	"$$(bash scripts/tools.sh cargo-deny)" --workspace check --hide-inclusion-graph licenses bans sources

# RustSec advisories: needs github.com (the database is a git repository), so
# it is not part of `make test` (see deny.toml).
deny-advisories:
	"$$(bash scripts/tools.sh cargo-deny)" --workspace check --hide-inclusion-graph advisories

# Unit and integration tests: real processes, sockets and fsync on loopback.
unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

# Every phase prints its wall time (scripts/phase.sh); the kind suite runs
# wherever a Docker engine can be started (it prints one skip line elsewhere).
PHASE := bash scripts/phase.sh
test: # lint, unit, manifests, e2e-controlplane, e2e-kind; each phase timed
	$(PHASE) lint $(MAKE) --no-print-directory lint
	$(PHASE) unit $(MAKE) --no-print-directory unit
	$(PHASE) manifests $(MAKE) --no-print-directory manifests
	$(PHASE) e2e-controlplane $(MAKE) --no-print-directory e2e-controlplane
	$(PHASE) e2e-kind $(MAKE) --no-print-directory e2e-kind

# Benchmark programs (release build): each prints figures measured side by side.
# RAFTLANE_BENCH_SECS shortens the 60 s RTT-tolerance runs.
bench:
	$(CARGO) bench -p raft-node --bench transport
	$(CARGO) bench -p raft-node --bench cluster
	$(CARGO) bench -p raft-node --bench scan

# Many seeded nemesis runs with release binaries; prints each run and the totals.
# SOAK_SEEDS is a count of fresh seeds or a list to replay; SOAK_SECS per run.
SOAK_SEEDS ?= 20
SOAK_SECS ?= 60
soak:
	RAFTLANE_NEMESIS_SEEDS=$(SOAK_SEEDS) RAFTLANE_NEMESIS_SECS=$(SOAK_SECS) \
		$(CARGO) test --release -p raft-node --test nemesis -- --nocapture seeded_nemesis_runs

# Fuzzing of what raft-node reads from outside (node/tests/fuzz/targets.rs:
# the raft message guard, the peer envelope, the snapshot chunk stream, a
# backup file, a peer or admin address). `make unit` runs each target's
# arbitrary and structure-aware inputs for RAFTLANE_FUZZ_CASES (8192) cases;
# this runs each of them for FUZZ_SECS seconds instead (proptest, 2 at a time),
# then, where a nightly toolchain is installed, each libFuzzer target of fuzz/
# for FUZZ_SECS (cargo-fuzz from scripts/tools.sh; the first sanitizer build
# of raft-node took 37 min here on 2 loaded cores). Every run prints its executions and a seed that replays it.
FUZZ_SECS ?= 30
FUZZ_TARGETS := raft_message peer_envelope snapshot_chunks backup_file peer_address
fuzz:
	RAFTLANE_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test -p raft-node --test fuzz -- --nocapture
	@if rustup run nightly rustc --version >/dev/null 2>&1; then \
		bin="$$(dirname "$$(bash scripts/tools.sh cargo-fuzz)")" && \
		for t in $(FUZZ_TARGETS); do \
			(cd fuzz && PATH="$$bin:$$PATH" cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECS) -rss_limit_mb=1024) || exit 1; \
		done; \
	else \
		echo "fuzz: no nightly toolchain (rustup toolchain install nightly): libFuzzer targets skipped"; \
	fi

# Regenerate the CRD manifest from the Rust types, and its copy in the Helm chart
# (tests fail when either is stale).
crds:
	$(CARGO) run -q -p raft-operator -- crdgen --out-dir crds
	cp crds/raftcluster.yaml crds/raftclusterbackup.yaml charts/raft-operator/crds/

# Offline checks of the chart, the CRD and the examples (helm lint, helm
# template + kubernetes-validate, CRD schema); tools pinned in scripts/tools.sh,
# installed once into .tools/.
manifests:
	bash scripts/check-manifests.sh

# Container images of raft-node and raft-operator, tagged as the kind suite
# loads them: the workspace's binaries (target/debug, or target/release with
# RAFTLANE_IMAGE_PROFILE=release) copied into the shipped runtime stage of
# images/*.Dockerfile (legacy builder; a local Debian base where no registry
# answers). The release path, a build inside Docker, is a plain
# `docker build -f images/raft-node.Dockerfile .` (see the Dockerfiles).
images:
	$(CARGO) build $(if $(filter release,$(RAFTLANE_IMAGE_PROFILE)),--release) -p raft-node -p raft-operator
	bash scripts/kind.sh images

# The operator scenarios on a kind cluster (1 control-plane, 2 workers) built
# offline by scripts/kind.sh: Docker engine (started if needed), kind and the
# Kubernetes binaries from Go modules, the node image, both images from the
# debug (or RAFTLANE_IMAGE_PROFILE=release) binaries, the chart installed (see e2e/README.md for RAFTLANE_KIND_*
# settings). Tools and node image are built here first, outside the suite's
# time limit (cold ~25 min on 2 cores, cached after); where no Docker engine
# can be started, the suite prints one skip line and passes.
e2e-kind:
	if bash scripts/kind.sh docker; then bash scripts/kind.sh node-image >/dev/null; fi
	$(CARGO) build $(if $(filter release,$(RAFTLANE_IMAGE_PROFILE)),--release) -p raft-node -p raft-operator
	RAFTLANE_E2E_KIND=1 $(CARGO) test -p raftlane-e2e --test kind -- --nocapture

# kube-apiserver, kube-controller-manager and etcd built from their Go modules
# (scripts/controlplane/go.mod) into .tools/controlplane/<go.sum hash>/bin;
# reused when already built. Cold: 7-10 min on 2 cores, warm Go caches 40 s.
controlplane:
	bash scripts/controlplane.sh >/dev/null

# The operator scenarios against that real control plane on this machine,
# pods run as local processes by the suite's process kubelet, the operator
# installed with kubectl and helm (see e2e/README.md). No Docker needed; part
# of `make test` (~1.5 min, plus the Go build the first time).
e2e-controlplane: controlplane
	bash scripts/tools.sh
	$(CARGO) build -p raft-node -p raft-operator
	RAFTLANE_E2E_CONTROLPLANE=1 $(CARGO) test -p raftlane-e2e --test controlplane -- --nocapture

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
