#!/usr/bin/env bash
# User-mode network benchmark: libslirp (`-s N,virtio-net,user`, the default) against passt
# (`-s N,virtio-net,passt`, the baseline) in one guest; prints figures and ratios, asserts nothing.
#   - one boot of the tiny box with both NICs (MAC ...:01 libslirp, ...:02 passt); the guest
#     brings up one at a time as 10.0.2.15/24 and, through the gateway 10.0.2.2 (the host's
#     127.0.0.1), runs each phase on it;
#   - connection set-up: CONNS guest `nc` connections, one after the other, to a host listener
#     that closes each at once; host time from the guest's marker to the last accept, per
#     connection (busybox nc's start-up in the guest is in it, the same for both stacks);
#   - guest->host throughput: NET_MIB MiB with the guest's busybox `dd | nc`, host wall clock from
#     accept to EOF (the listener sends one byte first: Debian 12's passt resets a guest's
#     connection to a peer that has sent nothing for 24 s, see vmm/src/net/passt.rs).
#   usage: vmm/benches/user-net.sh [NET_MIB [CONNS]]   (default 1 and 10; needs
#          target/release/xhyve, the tiny box (boxes/tiny/build.sh), passt)
#   env: XHYVE_BIN, XHYVE_TINY, BENCH_TIMEOUT (s, per phase; default 1800)
# On the nested kvm_pvm host every guest syscall costs milliseconds, so both stacks mostly wait
# for the guest there: ratios near 1 say the stack is not the bottleneck.
# Measured there (2026-12, `1 5`, host load average ~9, one run): libslirp 0.040 MB/s, passt
# 0.032 MB/s guest->host (ratio 1.25); set-up 3.9 s against 1.0 s per connection (ratio 4.05), a
# figure not yet explained (libslirp's phase runs first, right after boot; one run under load).
set -euo pipefail
cd "$(dirname "$0")/../.."
export NET_MIB=${1:-1} CONNS=${2:-10}
export BOX=${XHYVE_TINY:-target/boxes/tiny}
export XHYVE=${XHYVE_BIN:-target/release/xhyve}
export TIMEOUT=${BENCH_TIMEOUT:-1800}
for f in "$XHYVE" "$BOX/vmlinux" "$BOX/initrd.img"; do
  [ -f "$f" ] || { echo "$f missing (cargo build --release -p xhyve; boxes/tiny/build.sh)" >&2; exit 1; }
done
command -v passt >/dev/null || { echo "passt missing (apt-get install passt)" >&2; exit 1; }
WORK=$(mktemp -d)
export WORK
trap 'rm -rf "$WORK"' EXIT

python3 - <<'PY'
import base64, os, re, socket, subprocess, time

NET_MIB, CONNS = int(os.environ["NET_MIB"]), int(os.environ["CONNS"])
BOX, WORK, TIMEOUT = os.environ["BOX"], os.environ["WORK"], float(os.environ["TIMEOUT"])
NET_BYTES = NET_MIB << 20
STACKS = [("libslirp", "user", "02:00:00:00:00:01"), ("passt", "passt", "02:00:00:00:00:02")]

conn_srv = socket.create_server(("127.0.0.1", 0))
tx_srv = socket.create_server(("127.0.0.1", 0))
for s in (conn_srv, tx_srv):
    s.settimeout(TIMEOUT)
CONN_PORT, TX_PORT = conn_srv.getsockname()[1], tx_srv.getsockname()[1]

# arping: passt learns the guest's MAC from its frames (until then it sends to broadcast).
SCRIPT = f"""m(){{ echo BENCH-$1 $2; }}
for i in /sys/class/net/e*;do case $(cat $i/address) in *:01)A=${{i##*/}};;*:02)B=${{i##*/}};;esac;done
for n in $A $B;do
ifconfig $n 10.0.2.15 netmask 255.255.255.0 up;arping -q -c1 -I $n 10.0.2.2
m conn0 $n;i=0;while [ $i -lt {CONNS} ];do nc 10.0.2.2 {CONN_PORT} </dev/null >/dev/null;i=$((i+1));done
m tx0 $n;dd if=/dev/zero bs=64k count={NET_MIB * 16} 2>/dev/null|nc 10.0.2.2 {TX_PORT} >/dev/null;m tx1 $?
ifconfig $n down
done
"""
CMDLINE = "console=ttyS0 xhyve.action=poweroff xhyve.cmd=" + base64.b64encode(SCRIPT.encode()).decode()
console = f"{WORK}/console"
argv = [os.environ["XHYVE"], "-c", "1", "-m", "256M", "-A", "-s", "0,hostbridge", "-s", "31,lpc"]
for slot, (_, backend, mac) in enumerate(STACKS, start=2):
    argv += ["-s", f"{slot},virtio-net,{backend},mac={mac}"]
argv += ["-l", f"com1,log={console}", "-f", f"kexec,{BOX}/vmlinux,{BOX}/initrd.img,{CMDLINE}"]
stderr = open(f"{WORK}/stderr", "w+")
proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
pos = 0


def marker(name):
    """Waits for the guest's next `BENCH-name [value]` line: its value."""
    global pos
    deadline = time.monotonic() + TIMEOUT
    rx = re.compile(rf"^BENCH-{name}(?: (.*?))?\r?$", re.M)
    while True:
        text = open(console, errors="replace").read() if os.path.exists(console) else ""
        m = rx.search(text, pos)
        if m:
            pos = m.end()
            return m.group(1)
        if proc.poll() is not None or "Kernel panic" in text or time.monotonic() > deadline:
            stderr.seek(0)
            tail = "\n".join((text + stderr.read()).splitlines()[-15:])
            raise SystemExit(f"no BENCH-{name} (xhyve status {proc.poll()}):\n{tail}")
        time.sleep(0.05)


def setup_time():
    marker("conn0")
    t0 = time.monotonic()
    for _ in range(CONNS):
        c, _ = conn_srv.accept()
        c.close()
    return (time.monotonic() - t0) / CONNS


def upload():
    marker("tx0")
    c, _ = tx_srv.accept()
    with c:
        c.sendall(b"\n")
        c.settimeout(TIMEOUT)
        t0, n = time.monotonic(), 0
        while b := c.recv(1 << 20):
            n += len(b)
        secs = time.monotonic() - t0
    status = marker("tx1")
    if n != NET_BYTES or status != "0":
        return f"received {n} of {NET_BYTES} bytes (guest nc status {status})"
    return NET_BYTES / 1e6 / secs


print(f"tiny box, 1 vCPU; {CONNS} connections, {NET_MIB} MiB guest->host per stack")
figures = {}
try:
    for name, _, _ in STACKS:
        per = setup_time()
        print(f"{name:9s} connection set-up {per * 1000:9.1f} ms", flush=True)
        mbs = upload()
        print(f"{name:9s} guest->host       " + (f"{mbs:9.3f} MB/s" if isinstance(mbs, float) else f"failed: {mbs}"),
              flush=True)
        figures[name] = (per, mbs)
except BaseException:
    proc.kill()
    raise
proc.wait(timeout=600)
new, base = figures["libslirp"], figures["passt"]
print(f"ratio libslirp/passt connection set-up time {new[0] / base[0]:.2f} (below 1: libslirp faster)")
if all(isinstance(f[1], float) for f in (new, base)):
    print(f"ratio libslirp/passt guest->host throughput {new[1] / base[1]:.2f} (above 1: libslirp faster)")
PY
