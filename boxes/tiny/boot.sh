#!/usr/bin/env bash
# Builds xhyve and the tiny box, then boots it with its console on this terminal.
# Extra arguments go to xhyve (e.g. -v).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../../scripts/packages.sh
. scripts/packages.sh
need_packages build box
cargo build --release -p xhyve
boxes/tiny/build.sh target/boxes/tiny
box=target/boxes/tiny
exec target/release/xhyve -A -c 2 -m 256M -U 8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01 \
  -s 0,hostbridge -s 31,lpc -l com1,stdio "$@" \
  -f "kexec,$box/vmlinux,$box/initrd.img,console=ttyS0"
