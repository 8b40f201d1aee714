#!/usr/bin/env bash
# UEFI firmware against kexec, same kernel and initramfs (the tiny box's kernel with the EFI stub,
# boxes/tiny/build.sh --efi): seconds from process start to the kernel's first console line
# ("Linux version"), the box's "ready" and its SSH server answering through the forwarded port,
# booted with -f kexec and through Debian's OVMF (-f bootrom) from the small EFI disk
# (boxes/tiny/efi-disk.sh), then the ratio EFI/kexec of each. Where the firmware's time goes and
# why: vmm/src/firmware/mod.rs.
# usage: vmm/benches/firmware.sh [RUNS]   (default 1: an EFI boot takes minutes on the nested
# PVM host; needs target/release/xhyve and target/boxes/tiny-efi)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
RUNS=${1:-1}
BOX=${XHYVE_TINY_EFI:-target/boxes/tiny-efi}
XHYVE=${XHYVE_BIN:-target/release/xhyve}
TIMEOUT=${BENCH_TIMEOUT:-2700}
CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
MARKS=("Linux version" "XHYVE-TINY: ready" "XHYVE-TINY: ssh-ready")
for f in "$XHYVE" "$BOX/vmlinuz" "$BOX/initrd.img" "$CODE" "$VARS"; do
	[ -f "$f" ] || { echo "firmware.sh: $f missing (cargo build --release; boxes/tiny/build.sh --efi $BOX; apt install ovmf)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The kernel's own command line on both paths: -f kexec adds the host's guest_kernel_params
# itself, the boot entry must carry them.
params=$("$XHYVE" --features | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["guest_kernel_params"]))')
boxes/tiny/efi-disk.sh "$BOX" "$work/disk.img" "bench=console=ttyS0 $params" >/dev/null 2>&1 ||
	{ echo "firmware.sh: boxes/tiny/efi-disk.sh failed" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Whether the guest's SSH server sends its banner through the forwarded port.
ssh_answers() {
	python3 - "$1" <<'EOF'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
        sys.exit(0 if s.recv(8).startswith(b"SSH-") else 1)
except OSError:
    sys.exit(1)
EOF
}

# One boot: "$1" names it, the rest is xhyve's boot flags. Prints one line: the seconds after
# start of each mark, then of the SSH banner ("-" for one never seen).
boot() {
	local name=$1 port console start pid
	shift
	port=$(free_port)
	console=$work/$name.console
	: >"$console"
	start=$(date +%s.%N)
	"$XHYVE" -A -m 256M -s 0,hostbridge -s 31,lpc -s "2,virtio-net,user,hostfwd=tcp:127.0.0.1:$port-:22" \
		-l "com1,log=$console" "$@" </dev/null >/dev/null 2>"$work/$name.stderr" &
	pid=$!
	declare -A seen=()
	local ssh=-
	while kill -0 $pid 2>/dev/null; do
		local now
		now=$(echo "$(date +%s.%N) - $start" | bc)
		for m in "${MARKS[@]}"; do
			[ -z "${seen[$m]:-}" ] && grep -qa "$m" "$console" && seen[$m]=$(printf %.0f "$now")
		done
		if [ -n "${seen[XHYVE-TINY: ssh-ready]:-}" ] && ssh_answers "$port"; then
			ssh=$(printf %.0f "$(echo "$(date +%s.%N) - $start" | bc)")
			break
		fi
		[ "$(printf %.0f "$now")" -ge "$TIMEOUT" ] && break
		sleep 1
	done
	kill $pid 2>/dev/null
	wait $pid 2>/dev/null
	for m in "${MARKS[@]}"; do printf '%s ' "${seen[$m]:--}"; done
	echo "$ssh"
	[ "$ssh" != - ] || { echo "  ($name: no SSH; console ends:)" >&2; tail -n 5 "$console" >&2; tail -n 3 "$work/$name.stderr" >&2; }
}

ratio() { [ "$1" != - ] && [ "$2" != - ] && [ "$2" != 0 ] && echo "scale=1; $1 / $2" | bc || echo -; }

printf '%-6s %-4s %14s %10s %10s %6s\n' path run "Linux version" ready ssh-ready ssh
for run in $(seq 1 "$RUNS"); do
	read -r k1 k2 k3 k4 < <(boot kexec -f "kexec,$BOX/vmlinuz,$BOX/initrd.img,console=ttyS0")
	printf '%-6s %-4s %14s %10s %10s %6s\n' kexec "$run" "$k1" "$k2" "$k3" "$k4"
	cp "$VARS" "$work/vars.fd"
	read -r e1 e2 e3 e4 < <(boot efi -s "3,virtio-blk,$work/disk.img" -f "bootrom,$CODE,$work/vars.fd")
	printf '%-6s %-4s %14s %10s %10s %6s\n' efi "$run" "$e1" "$e2" "$e3" "$e4"
	printf '%-6s %-4s %14s %10s %10s %6s\n' ratio "$run" "$(ratio "$e1" "$k1")" "$(ratio "$e2" "$k2")" \
		"$(ratio "$e3" "$k3")" "$(ratio "$e4" "$k4")"
done
