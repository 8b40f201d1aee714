#!/usr/bin/env bash
# Builds the Debian 12 box (build.sh) and packs it as an xhyve .box (../package.sh): the box
# kernel (vmlinux, no initrd), the GPT disk, the kernel command line build.sh wrote, 1 CPU, 512M,
# fast start (xhyve-identity.service runs the identity step: ../README.md, "Fast start").
# The packed box is cached too ($XHYVE_BOX_CACHE/debian12/box/<key>.box): packing ~700 MB
# with gzip takes a minute, so a rebuild with nothing changed copies it.
# usage: boxes/debian12/box.sh OUT.box [BUILDDIR]   (BUILDDIR default: <repo>/target/boxes/debian12)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[ $# -ge 1 ] || { echo "usage: boxes/debian12/box.sh OUT.box [BUILDDIR]" >&2; exit 2; }
out=$1 build=${2:-$REPO/target/boxes/debian12}
BOX_TAG=debian12-box
# shellcheck source=../lib/common.sh
. "$HERE/../lib/common.sh"
"$HERE/build.sh" "$build"
args=(--kernel vmlinux --no-initrd --disk disk.img --cmdline "$(cat "$build/cmdline")" --cpus 1 --memory 512M --fast-start)
key=$({ cat "$build/build-key"; sha256sum "$REPO/boxes/package.sh" | cut -c1-64; printf '%s\n' "${args[@]}"; } |
	sha256sum | cut -c1-64)
cached=$CACHE/debian12/box/$key.box
if [ -f "$cached" ]; then
	log "box cache hit $key"
else
	cache_dirs debian12/box
	log "packing the box (gzip, about a minute)"
	"$REPO/boxes/package.sh" "$cached.tmp.$$" "$build" "${args[@]}"
	mv -f "$cached.tmp.$$" "$cached"
fi
mkdir -p "$(dirname "$out")"
cp -f "$cached" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
log "$out: $(du -h "$out" | cut -f1)"
