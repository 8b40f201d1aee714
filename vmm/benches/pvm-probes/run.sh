#!/usr/bin/env bash
# Guest probes for the nested-PVM host defect in vmm/src/pvm/mod.rs (a diagnostic, not a test):
# regs (r8-r10, r12-r15, xmm0-15 across SYSCALLs and preemption), fsbase (%fs:0 == FS base), pages
# (anonymous zero-page and fork copy-on-write contents). Boots the tiny guest with the probes in
# its initramfs, streams TCP into it through user-mode networking meanwhile, and prints the
# probes' lines and any guest process crash. usage: vmm/benches/pvm-probes/run.sh [ITERATIONS]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
n=${1:-20000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$REPO"
cargo build --release -p xhyve -q
boxes/tiny/build.sh target/boxes/tiny >/dev/null
mkdir -p "$work/root/bin"
for p in regs fsbase pages; do gcc -O2 -static -o "$work/root/bin/probe-$p" "$HERE/$p.c"; done
(cd "$work/root" && find . | cpio -o -H newc --quiet) >"$work/probes.cpio"
cat target/boxes/tiny/initrd.img "$work/probes.cpio" >"$work/initrd.img"
cat >"$work/script.sh" <<SCRIPT
ip link set lo up; ip link set eth0 up
udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 20 -T 1 >/dev/null 2>&1 || echo "PROBE dhcp failed"
(while :; do nc -l -p 5000 >/dev/null; done) &
echo "PROBE listening"
probe-regs $n 0 & probe-fsbase $n 0 & probe-regs $((n / 10)) 1 & probe-pages $((n / 200)) &
wait %2 %3 %4 %5
echo "PROBE done"
dmesg | grep -E "segfault|traps:" || true
SCRIPT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$work/console.log
k=target/boxes/tiny/vmlinux
target/release/xhyve -A -m 256M -s 0,hostbridge -s 31,lpc \
	-s 2,virtio-net,user,hostfwd=tcp:127.0.0.1:$port-:5000 -l com1,log="$log" \
	-f "kexec,$k,$work/initrd.img,console=ttyS0 xhyve.cmd=$(base64 -w0 "$work/script.sh") xhyve.action=poweroff" &
vmm=$!
# Stream into the guest until the probes are done.
python3 - "$port" "$log" <<'PY'
import socket, sys, time
port, log = int(sys.argv[1]), sys.argv[2]
text = lambda: open(log, errors="replace").read() if __import__("os").path.exists(log) else ""
while "PROBE listening" not in text():
    time.sleep(1)
sent = 0
while "PROBE done" not in text() and "Power down" not in text():
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            t = time.monotonic()
            while time.monotonic() - t < 10:
                s.sendall(bytes(65536)); sent += 65536
    except OSError:
        time.sleep(0.5)
print(f"streamed {sent / 1e6:.0f} MB into the guest")
PY
wait "$vmm" || true
grep -E "PROBE|segfault|traps:" "$log"
