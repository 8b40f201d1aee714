#!/usr/bin/env bash
# CPU cost of a tiny box boot: xhyve's CPU seconds (user + system, /proc/PID/stat) from exec to
# the guest's "XHYVE-TINY: ready", for a baseline box and a candidate booted side by side (same
# host load), and the candidate's ratio. On the nested PVM host guest time is host CPU time, so
# this is what a box's kernel or initramfs change saves every test and every machine.
# usage: boxes/benches/tiny-boot-cpu.sh BASE_BOX_DIR NEW_BOX_DIR   (each: vmlinux, initrd.img)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# = 2 ] || { echo "usage: $0 BASE_BOX_DIR NEW_BOX_DIR" >&2; exit 2; }
XHYVE=${XHYVE_BIN:-target/release/xhyve}
TIMEOUT=${BENCH_TIMEOUT:-1800}
[ -x "$XHYVE" ] || { echo "$XHYVE missing: cargo build --release --workspace" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# cpu_to_ready BOX OUT: writes the CPU seconds (or "fail: ...") to OUT.
cpu_to_ready() {
	local box=$1 out=$2 con pid cpu=
	con=$(mktemp -p "$work")
	"$XHYVE" -A -c 1 -m 256M -l "com1,log=$con" -f "kexec,$box/vmlinux,$box/initrd.img,console=ttyS0" \
		2>"$con.err" </dev/null &
	pid=$!
	for ((i = 0; i < TIMEOUT * 2; i++)); do
		kill -0 $pid 2>/dev/null || break
		if grep -q "XHYVE-TINY: ready" "$con"; then
			cpu=$(awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$pid/stat")
			break
		fi
		sleep 0.5
	done
	kill $pid 2>/dev/null || :
	wait $pid 2>/dev/null || :
	echo "${cpu:-fail: no ready marker: $(tail -qn 2 "$con" "$con.err" | tr '\n' ' ' | cut -c1-200)}" >"$out"
}

cpu_to_ready "$1" "$work/base" & cpu_to_ready "$2" "$work/new" & wait
base=$(cat "$work/base") new=$(cat "$work/new")
echo "baseline $1: $base CPU s to ready (initrd $(stat -c %s "$1/initrd.img") bytes)"
echo "candidate $2: $new CPU s to ready (initrd $(stat -c %s "$2/initrd.img") bytes)"
case "$base$new" in *fail*) exit 1 ;; esac
echo "ratio candidate/baseline: $(echo "scale=2; $new / $base" | bc)"
