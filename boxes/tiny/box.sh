#!/usr/bin/env bash
# Builds the tiny box (build.sh) and packs it as an xhyve .box (../package.sh): vmlinux (boots on
# normal and nested kvm_pvm hosts), the initramfs with dropbear, cmdline console=ttyS0, fast start
# (its init runs the identity step: ../README.md, "Fast start").
# usage: boxes/tiny/box.sh OUT.box [BUILDDIR]   (BUILDDIR default: <repo>/target/boxes/tiny)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[ $# -ge 1 ] || { echo "usage: boxes/tiny/box.sh OUT.box [BUILDDIR]" >&2; exit 2; }
out=$1 build=${2:-$REPO/target/boxes/tiny}
"$HERE/build.sh" "$build"
exec "$REPO/boxes/package.sh" "$out" "$build" --kernel vmlinux --initrd initrd.img \
	--cmdline console=ttyS0 --cpus 1 --memory 256M --fast-start
