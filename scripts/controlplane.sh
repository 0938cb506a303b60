#!/usr/bin/env bash
# Builds the real Kubernetes control plane the e2e controlplane suite runs
# (kube-apiserver, kube-controller-manager, etcd) from their published Go
# modules, pinned by the wrapper module scripts/controlplane/, into
#
#   .tools/controlplane/<sha256 of scripts/controlplane/go.sum, 16 hex>/bin/
#
# and prints that bin directory on stdout (everything else goes to stderr).
# A complete build for the same go.sum is reused: the script then prints one
# line, "controlplane: reusing ...", and exits. Binaries are built one at a
# time (2-core machines), with GOTOOLCHAIN=local and the version ldflags that
# make /version report the pinned release. The Go module and build caches are
# the standard ones (go env GOMODCACHE / GOCACHE), so a warm rebuild is quick.
#
# With --node it also builds, into the same directory, what a kind node image
# needs (kubelet, kubeadm, kubectl, kube-scheduler, kube-proxy; scripts/kind.sh):
# one wrapper module and one Go build cache serve both suites. Its own stamp
# (.complete-node) says those five are complete.
#
# Set RAFTLANE_TOOLS_DIR to install elsewhere than .tools/.
set -euo pipefail

NODE=0
case "${1:-}" in
--node) NODE=1 ;;
"") ;;
*) echo "usage: $0 [--node]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD="$ROOT/scripts/controlplane"
TOOLS="${RAFTLANE_TOOLS_DIR:-$ROOT/.tools}"

log() { echo "controlplane: $*" >&2; }

command -v go >/dev/null || { log "go not found (Go >= 1.25 is needed)"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

# The release, read from the wrapper's go.mod so the two never disagree.
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$MOD/go.mod")"
ETCD_VERSION="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ { print $2 }' "$MOD/go.mod")"
[[ "$K8S_VERSION" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || { log "cannot read k8s.io/kubernetes version from $MOD/go.mod"; exit 1; }
MAJOR="${BASH_REMATCH[1]}" MINOR="${BASH_REMATCH[2]}"

HASH="$(sha256sum "$MOD/go.sum" | cut -c1-16)"
OUT="$TOOLS/controlplane/$HASH"
BIN="$OUT/bin"
STAMP="$OUT/.complete"

NODE_BINS=(kubelet kubeadm kubectl kube-scheduler kube-proxy)
NODE_STAMP="$OUT/.complete-node"
node_complete() {
	[[ -f "$NODE_STAMP" ]] || return 1
	local b
	for b in "${NODE_BINS[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

if [[ -f "$STAMP" && -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/etcd" ]] &&
	{ ((NODE == 0)) || node_complete; }; then
	((NODE == 0)) || log "reusing kube-apiserver/kube-controller-manager/${NODE_BINS[*]} $K8S_VERSION, etcd $ETCD_VERSION in $BIN (built $(cat "$NODE_STAMP"))"
	((NODE == 1)) || log "reusing kube-apiserver/kube-controller-manager $K8S_VERSION, etcd $ETCD_VERSION in $BIN (built $(cat "$STAMP"))"
	echo "$BIN"
	exit 0
fi

mkdir -p "$BIN"
log "building kubernetes $K8S_VERSION and etcd $ETCD_VERSION into $BIN (cold: 7-10 min on 2 cores)"

pkg="k8s.io/component-base/version"
k8s_ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR \
-X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
etcd_ldflags="-s -w"

build() { # name package ldflags
	local name="$1" pkg="$2" flags="$3" t0
	t0=$(date +%s)
	log "go build $name ($pkg)"
	(cd "$MOD" && go build -trimpath -ldflags "$flags" -o "$BIN/$name.tmp" "$pkg")
	mv -f "$BIN/$name.tmp" "$BIN/$name"
	log "built $name in $(($(date +%s) - t0)) s"
}

start=$(date +%s)
if ! [[ -f "$STAMP" && -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/etcd" ]]; then
	build etcd go.etcd.io/etcd/server/v3 "$etcd_ldflags"
	build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
	build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
	v="$("$BIN/kube-apiserver" --version)"
	[[ "$v" == "Kubernetes $K8S_VERSION" ]] || { log "kube-apiserver --version says '$v', want 'Kubernetes $K8S_VERSION'"; exit 1; }
	echo "$(date -u +%FT%TZ) in $(($(date +%s) - start)) s, $v, etcd $ETCD_VERSION" >"$STAMP"
fi
if ((NODE == 1)) && ! node_complete; then
	t=$(date +%s)
	for b in "${NODE_BINS[@]}"; do
		build "$b" "k8s.io/kubernetes/cmd/$b" "$k8s_ldflags"
	done
	v="$("$BIN/kubelet" --version)"
	[[ "$v" == "Kubernetes $K8S_VERSION" ]] || { log "kubelet --version says '$v', want 'Kubernetes $K8S_VERSION'"; exit 1; }
	echo "$(date -u +%FT%TZ) in $(($(date +%s) - t)) s, $v" >"$NODE_STAMP"
fi
log "done in $(($(date +%s) - start)) s"
echo "$BIN"
