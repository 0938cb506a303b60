#!/usr/bin/env bash
# Makes the toolchain rust-toolchain.toml pins available to rustup without a
# download when the machine's stable is that very version (a CI image, this
# repository's build machines): `rustup toolchain link` to stable's sysroot.
# Else installs it (needs the Rust distribution server). Prints what it did.
set -euo pipefail
cd "$(dirname "$0")/.."

want="$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)"
if rustup run "$want" rustc --version >/dev/null 2>&1; then
	echo "toolchain: $want present"
	exit 0
fi
stable="$(rustup run stable rustc --version 2>/dev/null | cut -d' ' -f2 || true)"
if [ "$stable" = "$want" ]; then
	rustup toolchain link "$want" "$(rustup run stable rustc --print sysroot)"
	echo "toolchain: $want linked to the installed stable ($stable)"
else
	rustup toolchain install "$want" --profile minimal -c rustfmt -c clippy
	echo "toolchain: $want installed"
fi
