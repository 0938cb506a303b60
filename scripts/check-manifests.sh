#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests (`make manifests`, part of
# `make test`); needs no cluster and no Docker:
#   1. helm lint --strict of charts/raft-operator, with the default values and
#      each charts/raft-operator/ci/*-values.yaml;
#   2. helm template of each of those value sets, every object validated by
#      kubernetes-validate --strict at each Kubernetes version in KUBE_VERSIONS,
#      then cross-checked (selectors, named ports, bindings, service accounts)
#      and checked for what the values promise: the members' NetworkPolicy
#      (on by default; admin port 7002 from the operator pods and its backup
#      Jobs only, 7001 from clientFrom, 7003 from metricsFrom, the peer port
#      7000 left to the operator's per-cluster policy), Secrets granted to the
#      operator alone, the operator's ServiceAccount token mounted;
#   3. examples/*.yaml valid against the CRD's openAPIV3Schema, and every
#      examples/invalid/*.yaml rejected by it at the field it names;
#   4. every value in values.yaml commented and listed in the chart README.
# (That the chart's CRD is the generated one is a Rust test, operator/tests/crd.rs.)
# Tools come from scripts/tools.sh (pinned, installed into .tools/ once).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="${RAFTLANE_TOOLS_DIR:-$ROOT/.tools}"
CHART=charts/raft-operator
RELEASE=raft-operator
NAMESPACE=raft-system
# Oldest Kubernetes the chart supports, and the newest the validator knows.
KUBE_VERSIONS=(1.33 1.37)

bash scripts/tools.sh
HELM="$TOOLS/bin/helm"
PY="$TOOLS/venv/bin/python"
CHECK=(env PYTHONDONTWRITEBYTECODE=1 "$PY" scripts/check_manifests.py)

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
LOG="$out/checks.log"
failed=0
step() { echo "== $*"; }
good() { echo "  ok    $*" | tee -a "$LOG"; }
bad() {
	echo "  FAIL  $*" | tee -a "$LOG"
	failed=1
}
check() { "${CHECK[@]}" "$@" | tee -a "$LOG"; }

# Value sets: the defaults, the options named in the brief on the command
# line, and each ci/*-values.yaml file.
ALL_OPTIONS="watch.allNamespaces=true,serviceMonitor.enabled=true,networkPolicy.enabled=true"
labels=(default all-options-set)
for f in "$CHART"/ci/*-values.yaml; do
	labels+=("$(basename "$f" .yaml)")
done
args_for() {
	case "$1" in
	default) ;;
	all-options-set) printf '%s\n' --set "$ALL_OPTIONS" ;;
	*) printf '%s\n' -f "$CHART/ci/$1.yaml" ;;
	esac
}

for label in "${labels[@]}"; do
	mapfile -t args < <(args_for "$label")
	step "helm lint --strict ($label)"
	if "$HELM" lint --strict --quiet "$CHART" -n "$NAMESPACE" ${args[@]+"${args[@]}"} >"$out/lint.log" 2>&1; then
		good "helm lint --strict $CHART ${args[*]-}"
	else
		sed 's/^/        /' "$out/lint.log"
		bad "helm lint --strict $CHART ${args[*]-}"
	fi

	step "helm template + kubernetes-validate --strict ($label)"
	rendered="$out/$label.yaml"
	if ! "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" --include-crds \
		--kube-version "${KUBE_VERSIONS[0]}" ${args[@]+"${args[@]}"} >"$rendered" 2>"$out/template.log"; then
		sed 's/^/        /' "$out/template.log"
		bad "helm template $CHART ${args[*]-}"
		continue
	fi
	kv=()
	for v in "${KUBE_VERSIONS[@]}"; do kv+=(-k "$v"); done
	# The values the render was made with, for the security checks.
	vals=(--values "$CHART/values.yaml")
	case "$label" in
	default) ;;
	all-options-set) vals+=(--set "$ALL_OPTIONS") ;;
	*) vals+=(--values "$CHART/ci/$label.yaml") ;;
	esac
	check k8s --label "$label" "${kv[@]}" \
		--member-labels operator/src/naming.rs operator/src/k8s/resources.rs \
		--namespace "$NAMESPACE" "${vals[@]}" "$rendered" || failed=1
done

step "helm template refuses contradictory values"
for bad_set in "replicaCount=2,leaderElection.enabled=false" "watch.allNamespaces=true,watch.namespace=x"; do
	if "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" --set "$bad_set" >/dev/null 2>"$out/refused.log"; then
		bad "helm template accepted --set $bad_set"
	else
		good "--set $bad_set refused: $(grep -o 'execution error.*' "$out/refused.log" | sed 's/.*: //' | head -1)"
	fi
done

step "example RaftClusters against the CRD schema"
check crd crds/raftcluster.yaml examples examples/invalid || failed=1

step "chart values documented"
check values "$CHART/values.yaml" "$CHART/README.md" || failed=1

count() { grep -c "^  $1 " "$LOG" || true; }
fails="$(count FAIL)"
# A check that died without a FAIL line (e.g. a crash) still counts as one.
[[ $failed != 0 && $fails == 0 ]] && fails=1
echo "manifests: $(count ok) passed, $fails failed, $(count SKIP) skipped"
if [[ $failed != 0 ]]; then
	echo "manifests: FAILED (see the FAIL lines above)"
	exit 1
fi
