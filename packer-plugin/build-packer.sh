#!/usr/bin/env bash
# Builds Packer from the Go module proxy once, into a cache outside the clone, and prints the
# binary's path (the end-to-end tests use it). v1.9.4: the newest MPL release the proxy serves
# (it refuses v1.9.5); it speaks plugin API x5.0, as packer-plugin-sdk v0.4.0 (go.mod) does.
# usage: packer-plugin/build-packer.sh   (PACKER_VERSION, XHYVE_PACKER_CACHE override the defaults)
set -euo pipefail
VERSION=${PACKER_VERSION:-v1.9.4}
CACHE=${XHYVE_PACKER_CACHE:-/var/cache/xhyve-rs/packer}
out=$CACHE/$VERSION/packer
if [ -x "$out" ]; then
	echo "$out"
	exit 0
fi
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
mkdir -p "$CACHE/$VERSION"
T0=$SECONDS
# `go install packer@VERSION` asks the proxy for Packer's version list, which it refuses; building
# the downloaded module as the main module (with its own go.sum) does not need the list.
src=$(go mod download -json "github.com/hashicorp/packer@$VERSION" |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
tmp=$(mktemp "$CACHE/$VERSION/packer.XXXXXX")
trap 'rm -f "$tmp"' EXIT
(cd "$src" && go build -trimpath -o "$tmp" .) >&2
mv "$tmp" "$out"
echo "build-packer.sh: built $out in $((SECONDS - T0)) s" >&2
echo "$out"
