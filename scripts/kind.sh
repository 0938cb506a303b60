#!/usr/bin/env bash
# Everything the kind end-to-end suite needs, built on this machine without a
# container registry (see e2e/README.md). Subcommands, each idempotent:
#
#   docker        ensure a Docker engine: apt-get install docker.io when dockerd
#                 is missing, start dockerd (log .tools/docker/dockerd.log) when
#                 `docker info` does not answer; `stop-docker` stops it again,
#                 only if this script started it.
#   tools         kind (sigs.k8s.io/kind), the Kubernetes binaries (one wrapper
#                 module with the control-plane suite: scripts/controlplane.sh
#                 --node), coredns, local-path-provisioner, crictl, kubectl and
#                 helm (scripts/tools.sh) and a static pause, into .tools/.
#   node-image    the kind node image, offline: a debootstrap base with kind's
#                 own base files (read from its Go module), those binaries, and
#                 every image kubeadm and the add-ons run, preloaded into the
#                 node's containerd. Tagged by a hash of all its inputs.
#   up NAME       the above, then a cluster of one control-plane and
#                 RAFTLANE_KIND_WORKERS (default 2) workers: no default CNI, a
#                 bridge CNI config per node on its own podCIDR and routes
#                 between the nodes' pod CIDRs, installed here. Reuses NAME when
#                 it exists. Prints kind=, kubectl=, helm=, context= lines.
#   verify NAME   pods on two nodes reach each other, CoreDNS resolves a
#                 Service, a PVC binds on the `standard` class.
#   images        raftlane/raft-node:e2e and raftlane/raft-operator:e2e from
#                 the prebuilt binaries in target/$RAFTLANE_IMAGE_PROFILE
#                 (default debug) with images/*.Dockerfile (legacy builder).
#   netpol NAME   kube-network-policies as a DaemonSet, then a policy check.
#   down NAME     deletes the cluster.   paths   prints the tool lines only.
#
# Diagnostics go to stderr; a cached step prints one "kind: reusing ..." line.
# Each phase prints its wall time. Go binaries are built one at a time (2-core
# machines) with GOTOOLCHAIN=local CGO_ENABLED=0, in the standard Go caches.
#
# Where the engine refuses --privileged (a sandbox whose capability bounding
# set lacks CAP_SYS_RESOURCE), kind runs through a docker shim that replaces
# --privileged with every capability but that one; the node image's entrypoint
# then fixes what such a node lacks (images/kind/node-entrypoint). On a normal
# Docker host the probe passes and the stock path runs.
#
# Settings: RAFTLANE_TOOLS_DIR (instead of .tools/), RAFTLANE_DEBIAN_MIRROR,
# RAFTLANE_KIND_WORKERS (2; 3 also fit 2 cores), RAFTLANE_KIND_RETAIN=1 (keep
# the nodes of a failed create), RAFTLANE_IMAGE_PROFILE (debug|release),
# RAFTLANE_RUNTIME_IMAGE and RAFTLANE_PREBUILT_BUILDER_IMAGE (the images'
# bases where a registry answers).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${RAFTLANE_TOOLS_DIR:-$ROOT/.tools}"
KDIR="$TOOLS/kind"
[[ -x /usr/local/go/bin/go ]] && PATH="$PATH:/usr/local/go/bin"

KIND_VERSION=v0.30.0
COREDNS_VERSION=v1.13.1
LOCAL_PATH_VERSION=v0.0.30
CRICTL_VERSION=v1.34.0
KNP_VERSION=v0.8.0
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${RAFTLANE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORKERS="${RAFTLANE_KIND_WORKERS:-2}"
POD_SUBNET=10.244.0.0/16
# The node: what kind's base image installs that the cluster uses (jq: its
# containers' createContainer hook), with Debian's containerd, runc and CNI
# plugins in place of kind's own builds, and busybox for the volume helper and
# probe image.
NODE_PACKAGES=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,nftables,iproute2,ethtool,socat,conntrack,mount,util-linux,kmod,ca-certificates,procps,libseccomp2,pigz,jq,busybox-static
# The runtime base of raft-node, raft-operator and kube-proxy: glibc, libgcc
# and CA certificates (what distroless/cc has), plus a shell.
RUNTIME_PACKAGES=ca-certificates
# Image names inside the cluster for what has no registry.k8s.io name.
LOCAL_PATH_IMAGE=raftlane.local/local-path-provisioner:$LOCAL_PATH_VERSION
BUSYBOX_IMAGE=raftlane.local/busybox:e2e
KNP_IMAGE=raftlane.local/kube-network-policies:$KNP_VERSION

log() { echo "kind: $*" >&2; }
die() { log "$*"; exit 1; }
# Runs "$@" and prints its wall time under a phase name.
timed() {
	local what="$1" t0=$SECONDS rc=0
	shift
	# The command's failure is the caller's: a caller on the left of `||`
	# runs without errexit, and a failed step must not go on (a debootstrap
	# cut short once yielded a 15 kB "node base" under the good tag).
	"$@" || rc=$?
	log "$what: $((SECONDS - t0)) s"
	return "$rc"
}
sha() { sha256sum | cut -c1-16; }
# Waits up to $1 seconds for "${@:2}" to succeed.
wait_until() {
	local within="$1" t0=$SECONDS
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS - t0 < within)) || return 1
		sleep 1
	done
}

# ---------------------------------------------------------------- docker ----

docker_answers() { timeout 20 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

ensure_docker() {
	docker_answers && return 0
	if ! command -v dockerd >/dev/null; then
		[[ $(id -u) == 0 ]] || die "no Docker engine and not root to apt-get install docker.io"
		log "installing docker.io (apt-get)"
		timed "apt-get install docker.io" \
			env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >&2
	fi
	command -v docker >/dev/null || die "docker CLI missing after installing docker.io"
	mkdir -p "$TOOLS/docker"
	log "starting dockerd (log $TOOLS/docker/dockerd.log)"
	dockerd >"$TOOLS/docker/dockerd.log" 2>&1 &
	# Recorded so stop-docker stops only an engine this script started.
	echo $! >"$TOOLS/docker/dockerd.pid"
	wait_until 60 docker_answers || die "dockerd did not answer within 60 s; see $TOOLS/docker/dockerd.log"
	log "dockerd $(docker info --format '{{.ServerVersion}}') up"
}

stop_docker() {
	local pidfile="$TOOLS/docker/dockerd.pid" pid
	[[ -f "$pidfile" ]] || { log "dockerd was not started by this script: left alone"; return 0; }
	pid="$(cat "$pidfile")"
	if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]; then
		kill "$pid"
		wait_until 30 bash -c "! kill -0 $pid" || log "dockerd $pid still running after 30 s"
	fi
	rm -f "$pidfile"
}

# Whether this engine runs --privileged containers (cached per engine).
privileged_works() {
	local id cache
	id="$(docker info --format '{{.ID}}{{.ServerVersion}}' | sha)"
	cache="$KDIR/privileged-$id"
	if [[ ! -f "$cache" ]]; then
		if docker run --rm --privileged --entrypoint /bin/true "$1" >/dev/null 2>"$cache.err"; then
			echo yes >"$cache"
		else
			log "this engine refuses --privileged ($(grep -m1 -o 'unable to apply caps.*' "$cache.err" || head -1 "$cache.err")): kind runs through a docker shim"
			echo no >"$cache"
		fi
	fi
	[[ "$(cat "$cache")" == yes ]]
}

# Flags that stand in for --privileged where it is refused: every capability
# but CAP_SYS_RESOURCE, /sys and /proc unmasked, every device allowed.
UNPRIVILEGED_RUN=(--cap-add=ALL --cap-drop=SYS_RESOURCE --security-opt systempaths=unconfined
	"--device-cgroup-rule=a *:* rwm" --device /dev/kmsg --device /dev/fuse)

# A kind wrapper in $KDIR/bin: the kind binary, run with the docker shim first
# in PATH when the engine refuses --privileged.
write_kind_wrapper() { # kind-binary node-image
	local real_docker shim="$KDIR/shim"
	mkdir -p "$KDIR/bin" "$shim"
	real_docker="$(command -v docker)"
	if privileged_works "$2"; then
		printf '#!/usr/bin/env bash\nexec %q "$@"\n' "$1" >"$KDIR/bin/kind.tmp"
	else
		{
			echo '#!/usr/bin/env bash'
			echo "# docker for kind on an engine that refuses --privileged (scripts/kind.sh)."
			printf 'extra=(%s)\n' "$(printf '%q ' "${UNPRIVILEGED_RUN[@]}")"
			# shellcheck disable=SC2016
			echo 'args=(); sub=""
for a in "$@"; do
	if [[ -z "$sub" && "$a" != -* ]]; then sub="$a"; fi
	if [[ "$a" == --privileged ]]; then
		[[ "$sub" == run ]] && args+=("${extra[@]}")
		continue
	fi
	args+=("$a")
done'
			printf 'exec %q "${args[@]}"\n' "$real_docker"
		} >"$shim/docker"
		chmod +x "$shim/docker"
		printf '#!/usr/bin/env bash\nPATH=%q:"$PATH" exec %q "$@"\n' "$shim" "$1" >"$KDIR/bin/kind.tmp"
	fi
	chmod +x "$KDIR/bin/kind.tmp"
	mv -f "$KDIR/bin/kind.tmp" "$KDIR/bin/kind"
}

# ----------------------------------------------------------------- tools ----

GO_VERSION=""
go_version() {
	[[ -n "$GO_VERSION" ]] || GO_VERSION="$(GOTOOLCHAIN=local go env GOVERSION)"
	echo "$GO_VERSION"
}

# go_tool NAME MODULE VERSION PACKAGE [LDFLAGS]: `go install PACKAGE@VERSION`
# into $KDIR/go/NAME-VERSION-<hash>/, reused when complete. Prints the binary.
go_tool() {
	local name="$1" mod="$2" version="$3" pkg="$4" ldflags="${5:-}" h dir t0
	command -v go >/dev/null || die "go not found (Go >= 1.25 is needed)"
	h="$(echo "$mod $version $pkg $ldflags $(go_version)" | sha)"
	dir="$KDIR/go/$name-$version-$h"
	if [[ -f "$dir/.complete" && -x "$dir/$name" ]]; then
		log "reusing $name $version in $dir"
		echo "$dir/$name"
		return
	fi
	mkdir -p "$dir"
	log "go install $pkg@$version"
	t0=$SECONDS
	(cd "$dir" && GOBIN="$dir" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS= \
		go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$version") >&2
	local built="$dir/$(basename "$pkg")"
	[[ "$built" == "$dir/$name" ]] || mv -f "$built" "$dir/$name"
	echo "$(date -u +%FT%TZ) in $((SECONDS - t0)) s" >"$dir/.complete"
	log "built $name $version in $((SECONDS - t0)) s"
	echo "$dir/$name"
}

kind_src() { # kind's module source, for its base-image files and manifests
	local dir
	dir="$(cd "$KDIR" && GOFLAGS= GOTOOLCHAIN=local go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
		sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$dir/images/base/files" ]] || die "kind $KIND_VERSION module source not found (go mod download)"
	echo "$dir"
}

pause_bin() {
	local src="$ROOT/images/kind/pause.c" h dir
	h="$({ cat "$src"; gcc --version | head -1; } | sha)"
	dir="$KDIR/pause-$h"
	if [[ -x "$dir/pause" ]]; then
		log "reusing pause in $dir"
	else
		command -v gcc >/dev/null || die "gcc is needed for the static pause binary"
		mkdir -p "$dir"
		gcc -static -Os -s -o "$dir/pause.tmp" "$src" >&2
		mv -f "$dir/pause.tmp" "$dir/pause"
	fi
	echo "$dir/pause"
}

# Sets KIND_BIN K8S_BIN COREDNS_BIN LOCAL_PATH_BIN CRICTL_BIN PAUSE_BIN
# KUBECTL HELM, building what is missing, one Go build at a time.
tools() {
	local t0=$SECONDS
	mkdir -p "$KDIR"
	KIND_BIN="$(go_tool kind sigs.k8s.io/kind "$KIND_VERSION" sigs.k8s.io/kind)"
	K8S_BIN="$(bash "$ROOT/scripts/controlplane.sh" --node)"
	COREDNS_BIN="$(go_tool coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns)"
	LOCAL_PATH_BIN="$(go_tool local-path-provisioner github.com/rancher/local-path-provisioner \
		"$LOCAL_PATH_VERSION" github.com/rancher/local-path-provisioner "-X main.VERSION=$LOCAL_PATH_VERSION")"
	CRICTL_BIN="$(go_tool crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl \
		"-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION")"
	PAUSE_BIN="$(pause_bin)"
	bash "$ROOT/scripts/tools.sh" >&2
	KUBECTL="$TOOLS/bin/kubectl" HELM="$TOOLS/bin/helm"
	K8S_VERSION="$("$K8S_BIN/kubeadm" version -o short)"
	log "tools: $((SECONDS - t0)) s"
}

# ------------------------------------------------------------ base images ----

# debootstrap into $1 with packages $2 (minbase), then trims docs and caches.
debootstrap_rootfs() {
	local root="$1" packages="$2"
	command -v debootstrap >/dev/null || {
		log "installing debootstrap (apt-get)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
	}
	rm -rf "$root"
	mkdir -p "$root"
	timed "debootstrap $DEBIAN_SUITE ($packages)" \
		debootstrap --variant=minbase --include="$packages" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 ||
		die "debootstrap failed; see $root.log"
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
		"$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
}

# The kind base image's files and systemd clean-up (kind's images/base/
# Dockerfile), applied to a debootstrap root, with Debian's containerd, runc
# and CNI plugins where kind's files look for them.
kind_base_recipe() {
	local r="$1" f="$2/images/base/files"
	install -m 0755 "$f"/usr/local/bin/* "$r/usr/local/bin/"
	mkdir -p "$r/kind/bin" "$r/LICENSES" "$r/etc/containerd" "$r/etc/default" "$r/etc/sysctl.d" \
		"$r/etc/systemd/system/kubelet.service.d" "$r/etc/kubernetes/manifests"
	install -m 0644 "$f"/kind/README.txt "$r/kind/"
	install -m 0755 "$f"/kind/bin/* "$r/kind/bin/"
	install -m 0644 "$f"/LICENSES/* "$r/LICENSES/"
	install -m 0644 "$f"/etc/crictl.yaml "$r/etc/"
	install -m 0644 "$f"/etc/containerd/* "$r/etc/containerd/"
	install -m 0644 "$f"/etc/default/* "$r/etc/default/"
	install -m 0644 "$f"/etc/sysctl.d/* "$r/etc/sysctl.d/"
	install -m 0644 "$f"/etc/systemd/system/*.service "$f"/etc/systemd/system/*.slice "$r/etc/systemd/system/"
	install -m 0644 "$f"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
	find "$r/lib/systemd/system/sysinit.target.wants/" -name "systemd-tmpfiles-setup.service" -delete
	rm -f "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
		"$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
		"$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
	echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
	chroot "$r" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >&2
	chroot "$r" systemctl mask systemd-binfmt.service >&2
	ln -sf /usr/bin/containerd "$r/usr/local/bin/containerd"
	mkdir -p "$r/opt/cni"
	ln -sfn /usr/lib/cni "$r/opt/cni/bin"
	# kind's cri-base.json: the default OCI spec with its product-files hook
	# and without rlimits.
	chroot "$r" ctr oci spec | python3 -c '
import json, sys
s = json.load(sys.stdin)
s.setdefault("hooks", {}).setdefault("createContainer", []).append({"path": "/kind/bin/mount-product-files.sh"})
s["process"].pop("rlimits", None)
json.dump(s, sys.stdout, indent=4)' >"$r/etc/containerd/cri-base.json"
	install -m 0755 "$ROOT/images/kind/node-entrypoint" "$r/usr/local/bin/raftlane-node-entrypoint"
}

# import_rootfs DIR TAG [Dockerfile lines]: docker import, then a FROM build
# for what import cannot set (STOPSIGNAL).
import_rootfs() {
	local root="$1" tag="$2" extra="${3:-}"
	tar -C "$root" -c . | docker import - "$tag-import" >/dev/null
	printf 'FROM %s\n%s\n' "$tag-import" "$extra" | legacy_build -t "$tag" -
	docker rmi "$tag-import" >/dev/null
}

# docker build with the legacy builder (no BuildKit/buildx here): quiet, its
# output (and the builder's deprecation notice) shown only when it fails.
legacy_build() {
	local out
	out="$(DOCKER_BUILDKIT=0 docker build "$@" 2>&1)" || { echo "$out" >&2; die "docker build $* failed"; }
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The runtime base: RUNTIME_BASE is its tag.
runtime_base() {
	local h
	h="$({ echo "$DEBIAN_SUITE $RUNTIME_PACKAGES"; declare -f debootstrap_rootfs runtime_base; } | sha)"
	RUNTIME_BASE="raftlane/debian-base:$DEBIAN_SUITE-$h"
	if image_exists "$RUNTIME_BASE"; then
		log "reusing $RUNTIME_BASE"
		return
	fi
	local r="$KDIR/rootfs/runtime-$h"
	debootstrap_rootfs "$r" "$RUNTIME_PACKAGES"
	import_rootfs "$r" "$RUNTIME_BASE" 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
	rm -rf "$r"
	log "built $RUNTIME_BASE ($(docker image inspect -f '{{.Size}}' "$RUNTIME_BASE" | numfmt --to=iec))"
}

# The kind base: NODE_BASE is its tag, NODE_ROOTFS its root (kept: kube-proxy
# takes iptables from it). The debootstrap output is cached apart from it
# (keyed by the package list only), so a change of kind's files or of the
# recipe costs a copy, not a new debootstrap.
node_base() {
	local src dh h deb
	src="$(kind_src)"
	dh="$({ echo "$DEBIAN_SUITE $NODE_PACKAGES"; declare -f debootstrap_rootfs; } | sha)"
	deb="$KDIR/rootfs/debootstrap-$dh"
	h="$({
		echo "$dh $KIND_VERSION"
		find "$src/images/base/files" -type f -print0 | sort -z | xargs -0 sha256sum | sed "s#$src##"
		declare -f kind_base_recipe node_base
		cat "$ROOT/images/kind/node-entrypoint"
	} | sha)"
	NODE_BASE="raftlane/kind-base:$DEBIAN_SUITE-$h"
	NODE_ROOTFS="$KDIR/rootfs/node-$h"
	if image_exists "$NODE_BASE" && [[ -f "$NODE_ROOTFS/.complete" ]]; then
		log "reusing $NODE_BASE"
		return
	fi
	if [[ -f "$deb/.complete" ]]; then
		log "reusing debootstrap of $DEBIAN_SUITE in $deb"
	else
		debootstrap_rootfs "$deb" "$NODE_PACKAGES"
		touch "$deb/.complete"
	fi
	rm -rf "$NODE_ROOTFS"
	cp -a "$deb" "$NODE_ROOTFS"
	rm -f "$NODE_ROOTFS/.complete"
	kind_base_recipe "$NODE_ROOTFS" "$src"
	import_rootfs "$NODE_ROOTFS" "$NODE_BASE" 'ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/raftlane-node-entrypoint", "/sbin/init"]'
	touch "$NODE_ROOTFS/.complete"
	log "built $NODE_BASE ($(docker image inspect -f '{{.Size}}' "$NODE_BASE" | numfmt --to=iec))"
}

# ------------------------------------------------------------ node image ----

# build_image TAG CONTEXT: a Dockerfile in CONTEXT, legacy builder.
build_image() { legacy_build -t "$1" "$2"; }

# Files of Debian packages PKGS in NODE_ROOTFS, at their real paths (merged
# /usr), for copying into an image.
package_files() {
	local p f d
	for p in "$@"; do chroot "$NODE_ROOTFS" dpkg -L "$p"; done | sort -u | while read -r f; do
		[[ -L "$NODE_ROOTFS$f" || -f "$NODE_ROOTFS$f" ]] || continue
		d="$(cd "$NODE_ROOTFS$(dirname "$f")" && pwd -P)"
		echo "${d#"$NODE_ROOTFS"}/$(basename "$f")"
	done | sort -u
}

# The images kubeadm and the add-ons run, named as the cluster asks for them,
# saved to one tar: IMAGES_TAR.
component_images() {
	local work="$KDIR/work/images" names h
	mapfile -t names < <("$K8S_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION")
	h="$({
		printf '%s\n' "${names[@]}" "$LOCAL_PATH_IMAGE" "$BUSYBOX_IMAGE" "$RUNTIME_BASE" "$NODE_BASE"
		# Contents only: a clone elsewhere (CI) has other paths, same bytes.
		sha256sum "$K8S_BIN"/* "$COREDNS_BIN" "$LOCAL_PATH_BIN" "$PAUSE_BIN" | cut -d' ' -f1
		cat "$ROOT/images/kind/iptables-wrapper"
		declare -f component_images package_files
	} | sha)"
	IMAGES_TAR="$KDIR/images-$h.tar"
	PAUSE_IMAGE="$(printf '%s\n' "${names[@]}" | grep '/pause:')"
	if [[ -f "$IMAGES_TAR" ]]; then
		log "reusing component images $IMAGES_TAR"
		return
	fi
	rm -rf "$work"
	local name base tags=()
	for name in "${names[@]}"; do
		base="$(basename "${name%%:*}")"
		mkdir -p "$work/$base"
		case "$base" in
		kube-apiserver | kube-controller-manager | kube-scheduler | etcd)
			cp "$K8S_BIN/$base" "$work/$base/"
			printf 'FROM scratch\nENV PATH=/usr/local/bin\nCOPY %s /usr/local/bin/\nENTRYPOINT ["/usr/local/bin/%s"]\n' \
				"$base" "$base" >"$work/$base/Dockerfile"
			;;
		kube-proxy)
			# Debian's iptables (both backends) and the mode-picking wrapper.
			cp "$K8S_BIN/kube-proxy" "$ROOT/images/kind/iptables-wrapper" "$work/$base/"
			package_files iptables libip4tc2 libip6tc2 libxtables12 libnftnl11 libmnl0 \
				libnetfilter-conntrack3 libnfnetlink0 libnftables1 libjansson4 libedit2 libbsd0 libmd0 libgmp10 \
				| sed 's#^/##' >"$work/$base/files"
			tar -C "$NODE_ROOTFS" -cf "$work/$base/iptables.tar" --no-recursion -T "$work/$base/files"
			cat >"$work/$base/Dockerfile" <<-EOF
				FROM $RUNTIME_BASE
				ADD iptables.tar /
				COPY iptables-wrapper /usr/sbin/
				RUN for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
				      ln -sf iptables-wrapper /usr/sbin/\$c; done && /usr/sbin/xtables-nft-multi iptables --version
				COPY kube-proxy /usr/local/bin/
			EOF
			;;
		coredns)
			cp "$COREDNS_BIN" "$work/$base/"
			printf 'FROM scratch\nCOPY coredns /coredns\nEXPOSE 53 53/udp\nENTRYPOINT ["/coredns"]\n' >"$work/$base/Dockerfile"
			;;
		pause)
			cp "$PAUSE_BIN" "$work/$base/"
			printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$work/$base/Dockerfile"
			;;
		*) die "no recipe for kubeadm's image $name" ;;
		esac
		build_image "$name" "$work/$base"
		tags+=("$name")
	done
	mkdir -p "$work/local-path" "$work/busybox"
	cp "$LOCAL_PATH_BIN" "$work/local-path/"
	printf 'FROM scratch\nENV PATH=/usr/local/bin\nCOPY local-path-provisioner /usr/local/bin/\nENTRYPOINT ["/usr/local/bin/local-path-provisioner"]\n' \
		>"$work/local-path/Dockerfile"
	build_image "$LOCAL_PATH_IMAGE" "$work/local-path"
	# busybox: the local-path volume helper (sh, mkdir, rm) and the probe of
	# `verify`.
	cp "$NODE_ROOTFS/bin/busybox" "$work/busybox/"
	printf 'FROM scratch\nENV PATH=/bin\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' \
		>"$work/busybox/Dockerfile"
	build_image "$BUSYBOX_IMAGE" "$work/busybox"
	tags+=("$LOCAL_PATH_IMAGE" "$BUSYBOX_IMAGE")
	docker save -o "$IMAGES_TAR.tmp" "${tags[@]}"
	mv -f "$IMAGES_TAR.tmp" "$IMAGES_TAR"
	rm -rf "$work"
	log "component images: $(du -h "$IMAGES_TAR" | cut -f1) of tar"
}

# kind's default-storage manifest (its node-image build's), on our images.
storage_manifest() {
	local src
	src="$(kind_src)/pkg/build/nodeimage/const_storage.go"
	awk '/^const defaultStorageManifest = `/ { on = 1; next } on && /^`/ { exit } on' "$src" |
		sed -e "s#\` + storageProvisionerImage + \`#$LOCAL_PATH_IMAGE#" \
			-e "s#\` + storageHelperImage + \`#$BUSYBOX_IMAGE#"
}

# The node image: NODE_IMAGE is its tag.
node_image() {
	tools
	runtime_base
	node_base
	component_images
	local h
	h="$({
		echo "$NODE_BASE $K8S_VERSION"
		sha256sum "$IMAGES_TAR" "$K8S_BIN/kubelet" "$K8S_BIN/kubeadm" "$K8S_BIN/kubectl" "$CRICTL_BIN" |
			cut -d' ' -f1
		storage_manifest
		declare -f node_image storage_manifest
	} | sha)"
	NODE_IMAGE="raftlane/kind-node:$K8S_VERSION-$h"
	if image_exists "$NODE_IMAGE"; then
		log "reusing $NODE_IMAGE"
		return
	fi
	local t0=$SECONDS cid
	# kind's own flow: a container of the base, the binaries and manifests
	# added, its containerd started to import the images, then committed.
	cid="$(docker run -d --entrypoint sleep -v "$IMAGES_TAR:/kind/images.tar:ro" "$NODE_BASE" infinity)"
	# shellcheck disable=SC2064
	trap "docker rm -f $cid >/dev/null 2>&1 || true" EXIT
	docker cp "$K8S_BIN/kubelet" "$cid:/usr/bin/kubelet"
	docker cp "$K8S_BIN/kubeadm" "$cid:/usr/bin/kubeadm"
	docker cp "$K8S_BIN/kubectl" "$cid:/usr/bin/kubectl"
	docker cp "$CRICTL_BIN" "$cid:/usr/local/bin/crictl"
	storage_manifest >"$KDIR/default-storage.yaml"
	docker exec "$cid" mkdir -p /kind/manifests
	docker cp "$KDIR/default-storage.yaml" "$cid:/kind/manifests/default-storage.yaml"
	# No default CNI: the cluster config disables it and `up` writes each
	# node's own bridge config.
	echo "# none: scripts/kind.sh configures a bridge CNI per node" |
		docker exec -i "$cid" sh -c 'cat >/kind/manifests/default-cni.yaml'
	docker exec "$cid" sh -euc "
		echo -n $K8S_VERSION >/kind/version
		sed -i 's#sandbox_image = .*#sandbox_image = \"$PAUSE_IMAGE\"#' /etc/containerd/config.toml
		containerd >/tmp/containerd.log 2>&1 & pid=\$!
		for i in \$(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
		ctr -n k8s.io images import --no-unpack --digests --compress-blobs /kind/images.tar >/dev/null
		for i in \$(ctr -n k8s.io images ls -q); do ctr -n k8s.io images label \$i io.cri-containerd.pinned=pinned >/dev/null; done
		kill \$pid; wait \$pid || true
		rm -rf /tmp/* /var/log/*" >&2
	docker commit --change 'ENTRYPOINT ["/usr/local/bin/raftlane-node-entrypoint", "/sbin/init"]' \
		--change 'CMD []' "$cid" "$NODE_IMAGE" >/dev/null
	docker rm -f "$cid" >/dev/null
	trap - EXIT
	log "built $NODE_IMAGE ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | numfmt --to=iec)) in $((SECONDS - t0)) s"
}

# --------------------------------------------------------------- cluster ----

kubectl_ctx() { "$KUBECTL" --context "kind-$CLUSTER" "$@"; }

cluster_exists() { "$KDIR/bin/kind" get clusters 2>/dev/null | grep -qx "$1"; }

# One bridge per node on that node's podCIDR; traffic between pods keeps
# its addresses (no masquerade inside the pod range), so a policy agent sees
# real source IPs; traffic leaving the pod range is masqueraded.
configure_network() {
	local nodes name cidr ip other ocidr oip
	mapfile -t nodes < <(kubectl_ctx get nodes -o \
		jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
	for name in "${nodes[@]}"; do
		read -r name cidr ip <<<"$name"
		[[ -n "$cidr" ]] || die "node $name has no podCIDR yet"
		docker exec -i "$name" sh -c 'mkdir -p /etc/cni/net.d && cat >/etc/cni/net.d/10-raftlane.conflist.tmp &&
			mv /etc/cni/net.d/10-raftlane.conflist.tmp /etc/cni/net.d/10-raftlane.conflist' <<-EOF
			{
			  "cniVersion": "0.4.0",
			  "name": "raftlane",
			  "plugins": [
			    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
			     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
			    {"type": "portmap", "capabilities": {"portMappings": true}}
			  ]
			}
		EOF
		docker exec "$name" sh -c "iptables -t nat -C POSTROUTING -s $POD_SUBNET ! -d $POD_SUBNET -j MASQUERADE 2>/dev/null ||
			iptables -t nat -A POSTROUTING -s $POD_SUBNET ! -d $POD_SUBNET -j MASQUERADE"
		for other in "${nodes[@]}"; do
			read -r other ocidr oip <<<"$other"
			[[ "$other" == "$name" ]] && continue
			docker exec "$name" ip route replace "$ocidr" via "$oip"
		done
		log "node $name: pods on $cidr (node $ip)"
	done
}

# Every node registered, with its podCIDR (kube-controller-manager's).
all_nodes_have_cidr() {
	local lines
	lines="$(kubectl_ctx get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.spec.podCIDR}{"\n"}{end}')" || return 1
	(($(grep -c . <<<"$lines") >= NODE_COUNT)) && ! grep -q '=$' <<<"$lines"
}

cluster_up() {
	CLUSTER="$1"
	node_image
	write_kind_wrapper "$KIND_BIN" "$NODE_IMAGE"
	local t0=$SECONDS
	if cluster_exists "$CLUSTER"; then
		log "reusing cluster $CLUSTER"
	else
		local cfg="$KDIR/cluster-$CLUSTER.yaml" i
		{
			cat <<-EOF
				kind: Cluster
				apiVersion: kind.x-k8s.io/v1alpha4
				networking:
				  disableDefaultCNI: true
				  podSubnet: $POD_SUBNET
				kubeadmConfigPatches:
				- |
				  kind: KubeletConfiguration
				  failCgroupV1: false
				nodes:
				- role: control-plane
			EOF
			for ((i = 0; i < WORKERS; i++)); do echo "- role: worker"; done
		} >"$cfg"
		# RAFTLANE_KIND_RETAIN=1 keeps the nodes of a failed create to inspect.
		timed "kind create cluster $CLUSTER (1 control-plane, $WORKERS workers)" \
			"$KDIR/bin/kind" create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config "$cfg" \
			${RAFTLANE_KIND_RETAIN:+--retain} >&2
	fi
	NODE_COUNT="$(docker ps -q --filter "label=io.x-k8s.kind.cluster=$CLUSTER" | wc -l)"
	wait_until 120 all_nodes_have_cidr || die "nodes of $CLUSTER got no podCIDR within 120 s"
	configure_network
	kubectl_ctx wait --for=condition=Ready nodes --all --timeout=180s >&2
	log "nodes Ready: $((SECONDS - t0)) s"
	kubectl_ctx -n kube-system rollout status deployment/coredns --timeout=180s >&2
	kubectl_ctx -n local-path-storage rollout status deployment/local-path-provisioner --timeout=180s >&2
	log "cluster $CLUSTER up (CoreDNS and local-path available): $((SECONDS - t0)) s"
	paths
	echo "context=kind-$CLUSTER"
}

paths() {
	echo "kind=$KDIR/bin/kind"
	echo "kubectl=$KUBECTL"
	echo "helm=$HELM"
}

# (busybox 1.35's static wget crashes with -q or -T: timeout and 2>/dev/null.)
# Pods on two different nodes reach each other by pod IP, a Service name
# resolves through CoreDNS and answers through its ClusterIP, a PVC binds.
verify() {
	CLUSTER="$1"
	local ns=kind-verify t0=$SECONDS nodes
	mapfile -t nodes < <(kubectl_ctx get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
	((${#nodes[@]} >= 2)) || die "verify needs two nodes"
	kubectl_ctx delete namespace "$ns" --ignore-not-found --wait=true --timeout=60s >/dev/null
	kubectl_ctx create namespace "$ns" >/dev/null
	kubectl_ctx -n "$ns" apply -f - >/dev/null <<-EOF
		apiVersion: v1
		kind: Pod
		metadata: {name: web, labels: {app: web}}
		spec:
		  nodeSelector: {kubernetes.io/hostname: ${nodes[-1]}}
		  containers:
		  - name: web
		    image: $BUSYBOX_IMAGE
		    imagePullPolicy: Never
		    command: [sh, -c, 'mkdir -p /www && echo hello-from-web >/www/index.html && exec httpd -f -p 8080 -h /www']
		---
		apiVersion: v1
		kind: Service
		metadata: {name: web}
		spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
		---
		apiVersion: v1
		kind: PersistentVolumeClaim
		metadata: {name: data}
		spec: {accessModes: [ReadWriteOnce], storageClassName: standard, resources: {requests: {storage: 16Mi}}}
		---
		apiVersion: v1
		kind: Pod
		metadata: {name: client}
		spec:
		  nodeSelector: {kubernetes.io/hostname: ${nodes[-2]}}
		  containers:
		  - name: client
		    image: $BUSYBOX_IMAGE
		    imagePullPolicy: Never
		    command: [sh, -c, 'echo ok >/data/ok && exec sleep 3600']
		    volumeMounts: [{name: data, mountPath: /data}]
		  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
	EOF
	# The scheduler (not nodeName) places them: the PVC waits for it.
	kubectl_ctx -n "$ns" wait --for=condition=Ready pod/web pod/client --timeout=120s >&2
	local ip out
	ip="$(kubectl_ctx -n "$ns" get pod web -o jsonpath='{.status.podIP}')"
	out="$(kubectl_ctx -n "$ns" exec client -- sh -c "timeout 5 wget -O- http://$ip:8080/ 2>/dev/null")"
	[[ "$out" == hello-from-web ]] || die "pod on ${nodes[-2]} could not reach pod $ip on ${nodes[-1]}: $out"
	log "verify: pod on ${nodes[-2]} reached pod $ip on ${nodes[-1]}"
	out="$(kubectl_ctx -n "$ns" exec client -- nslookup "web.$ns.svc.cluster.local")"
	grep -q "$(kubectl_ctx -n "$ns" get svc web -o jsonpath='{.spec.clusterIP}')" <<<"$out" ||
		die "CoreDNS did not resolve web.$ns.svc.cluster.local: $out"
	out="$(kubectl_ctx -n "$ns" exec client -- sh -c "timeout 5 wget -O- http://web.$ns.svc.cluster.local/ 2>/dev/null")"
	[[ "$out" == hello-from-web ]] || die "Service web did not answer through its ClusterIP: $out"
	log "verify: CoreDNS resolved web.$ns.svc.cluster.local, reached through its ClusterIP"
	[[ "$(kubectl_ctx -n "$ns" get pvc data -o jsonpath='{.status.phase}')" == Bound ]] || die "PVC data not Bound"
	log "verify: PVC bound on StorageClass standard ($(kubectl_ctx -n "$ns" get pvc data -o jsonpath='{.spec.volumeName}'))"
	kubectl_ctx delete namespace "$ns" --wait=false >/dev/null
	log "verify: $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- images ----

# raft-node and raft-operator images from prebuilt binaries (images/*.Dockerfile
# with PREBUILT_PROFILE): the runtime stage is the shipped one. Where the public
# base images cannot be pulled, the local Debian base stands in for both.
project_images() {
	local profile="${RAFTLANE_IMAGE_PROFILE:-debug}" b builder runtime
	for b in raft-node raftctl raft-operator; do
		[[ -x "$ROOT/target/$profile/$b" ]] ||
			die "target/$profile/$b missing: cargo build$([[ $profile == release ]] && echo " --release") -p raft-node -p raft-operator"
	done
	runtime="${RAFTLANE_RUNTIME_IMAGE:-gcr.io/distroless/cc-debian12:nonroot}"
	builder="${RAFTLANE_PREBUILT_BUILDER_IMAGE:-debian:bookworm-slim}"
	if ! { image_exists "$runtime" || timeout 60 docker pull -q "$runtime" >/dev/null 2>&1; } ||
		! { image_exists "$builder" || timeout 60 docker pull -q "$builder" >/dev/null 2>&1; }; then
		runtime_base
		log "no registry: $RUNTIME_BASE stands in for $runtime and $builder"
		runtime="$RUNTIME_BASE" builder="$RUNTIME_BASE"
	fi
	local image file t0
	for image in raft-node raft-operator; do
		t0=$SECONDS
		file="$ROOT/images/$image.Dockerfile"
		legacy_build --build-arg "PREBUILT_PROFILE=$profile" \
			--build-arg "BUILDER_IMAGE=$builder" --build-arg "RUNTIME_IMAGE=$runtime" \
			-f "$file" -t "raftlane/$image:e2e" "$ROOT"
		# The build stage's image (labelled in the Dockerfile) only serves the
		# legacy builder's cache, which new binaries invalidate anyway.
		docker image prune -f --filter label=io.raftlane.stage=build >/dev/null
		log "raftlane/$image:e2e ($profile binaries, $(docker image inspect -f '{{.Size}}' "raftlane/$image:e2e" | numfmt --to=iec)): $(docker run --rm "raftlane/$image:e2e" --version) in $((SECONDS - t0)) s"
	done
}

# --------------------------------------------------------------- netpol ----

# kube-network-policies (nftables + nfqueue) built from its Go module into an
# image on the runtime base, deployed as a DaemonSet; then a deny-all policy
# must stop a request that got through before it.
netpol() {
	CLUSTER="$1"
	tools
	runtime_base
	local bin work="$KDIR/work/knp" t0=$SECONDS err
	# It queues packets to userspace with nftables' `queue` statement: a
	# kernel without nft_queue (CONFIG_NFT_QUEUE) cannot enforce anything.
	if ! err="$(docker exec "$CLUSTER-control-plane" sh -c "nft add table inet raftlane-probe &&
		nft add chain inet raftlane-probe c '{ type filter hook forward priority 0; }' &&
		nft add rule inet raftlane-probe c queue num 98 bypass" 2>&1)"; then
		docker exec "$CLUSTER-control-plane" nft delete table inet raftlane-probe 2>/dev/null || true
		die "netpol: this kernel has no nftables queue (CONFIG_NFT_QUEUE), kube-network-policies cannot work here: $(head -1 <<<"$err")"
	fi
	docker exec "$CLUSTER-control-plane" nft delete table inet raftlane-probe
	bin="$(go_tool kube-network-policies sigs.k8s.io/kube-network-policies "$KNP_VERSION" \
		sigs.k8s.io/kube-network-policies/cmd)"
	mkdir -p "$work"
	cp "$bin" "$work/"
	printf 'FROM %s\nCOPY kube-network-policies /bin/netpol\nENTRYPOINT ["/bin/netpol"]\n' "$RUNTIME_BASE" >"$work/Dockerfile"
	build_image "$KNP_IMAGE" "$work"
	"$KDIR/bin/kind" load docker-image "$KNP_IMAGE" --name "$CLUSTER" >&2
	kubectl_ctx apply -f - >&2 <<-EOF
		apiVersion: v1
		kind: ServiceAccount
		metadata: {name: kube-network-policies, namespace: kube-system}
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRole
		metadata: {name: kube-network-policies}
		rules:
		- apiGroups: [""]
		  resources: [pods, namespaces, nodes]
		  verbs: [list, watch]
		- apiGroups: [networking.k8s.io]
		  resources: [networkpolicies]
		  verbs: [list, watch]
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRoleBinding
		metadata: {name: kube-network-policies}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kube-network-policies}
		subjects: [{kind: ServiceAccount, name: kube-network-policies, namespace: kube-system}]
		---
		apiVersion: apps/v1
		kind: DaemonSet
		metadata: {name: kube-network-policies, namespace: kube-system}
		spec:
		  selector: {matchLabels: {app: kube-network-policies}}
		  template:
		    metadata: {labels: {app: kube-network-policies}}
		    spec:
		      hostNetwork: true
		      serviceAccountName: kube-network-policies
		      tolerations: [{operator: Exists, effect: NoSchedule}]
		      containers:
		      - name: kube-network-policies
		        image: $KNP_IMAGE
		        imagePullPolicy: Never
		        # Debian's containerd 1.6 has no NRI.
		        args: [--hostname-override=\$(MY_NODE_NAME), --v=2, --nfqueue-id=98, --disable-nri]
		        env: [{name: MY_NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
		        securityContext: {privileged: true, capabilities: {add: [NET_ADMIN]}}
		        volumeMounts: [{name: lib-modules, mountPath: /lib/modules, readOnly: true}]
		      volumes: [{name: lib-modules, hostPath: {path: /lib/modules}}]
	EOF
	if ! kubectl_ctx -n kube-system rollout status daemonset/kube-network-policies --timeout=90s >&2; then
		kubectl_ctx -n kube-system logs daemonset/kube-network-policies --tail=30 >&2 || true
		die "kube-network-policies did not become ready"
	fi
	log "netpol: kube-network-policies running ($((SECONDS - t0)) s); checking a deny-all policy"
	verify_netpol
}

verify_netpol() {
	local ns=kind-netpol ip
	kubectl_ctx delete namespace "$ns" --ignore-not-found --wait=true --timeout=60s >/dev/null
	kubectl_ctx create namespace "$ns" >/dev/null
	kubectl_ctx -n "$ns" run web --image="$BUSYBOX_IMAGE" --image-pull-policy=Never --labels=app=web -- \
		sh -c 'mkdir -p /www && echo hi >/www/index.html && exec httpd -f -p 8080 -h /www' >/dev/null
	kubectl_ctx -n "$ns" run client --image="$BUSYBOX_IMAGE" --image-pull-policy=Never -- sleep 3600 >/dev/null
	kubectl_ctx -n "$ns" wait --for=condition=Ready pod/web pod/client --timeout=120s >&2
	ip="$(kubectl_ctx -n "$ns" get pod web -o jsonpath='{.status.podIP}')"
	kubectl_ctx -n "$ns" exec client -- sh -c "timeout 5 wget -O- http://$ip:8080/ 2>/dev/null" >/dev/null || die "netpol: no traffic even without a policy"
	kubectl_ctx -n "$ns" apply -f - >/dev/null <<-EOF
		apiVersion: networking.k8s.io/v1
		kind: NetworkPolicy
		metadata: {name: deny-web}
		spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}
	EOF
	sleep 5
	if kubectl_ctx -n "$ns" exec client -- sh -c "timeout 5 wget -O- http://$ip:8080/ 2>/dev/null" >/dev/null 2>&1; then
		die "netpol: a deny-all NetworkPolicy is not enforced"
	fi
	log "netpol: deny-all NetworkPolicy enforced"
	kubectl_ctx delete namespace "$ns" --wait=false >/dev/null
}

# ------------------------------------------------------------------ main ----

# Sourced (to call one function while working on this script): no main.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

cmd="${1:-}"
case "$cmd" in
docker) ensure_docker ;;
stop-docker) stop_docker ;;
tools) ensure_docker && tools && paths ;;
node-image) ensure_docker && node_image && echo "$NODE_IMAGE" ;;
up)
	[[ -n "${2:-}" ]] || die "usage: $0 up NAME"
	ensure_docker
	cluster_up "$2"
	;;
verify)
	[[ -n "${2:-}" ]] || die "usage: $0 verify NAME"
	KUBECTL="$TOOLS/bin/kubectl"
	verify "$2"
	;;
netpol)
	[[ -n "${2:-}" ]] || die "usage: $0 netpol NAME"
	netpol "$2"
	;;
images) ensure_docker && project_images ;;
down)
	[[ -n "${2:-}" ]] || die "usage: $0 down NAME"
	"$KDIR/bin/kind" delete cluster --name "$2" >&2
	;;
paths)
	KUBECTL="$TOOLS/bin/kubectl" HELM="$TOOLS/bin/helm"
	paths
	;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
