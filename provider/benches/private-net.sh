#!/usr/bin/env bash
# Machine-to-machine network benchmark: the provider's rootless switch (a named network,
# `-s N,virtio-net,socket=PATH`) against the baseline, a root bridge with one TAP device per
# guest (`-s N,virtio-tap,TAP`, what network mode shared uses); prints figures and ratios,
# asserts nothing.
#   - per network, two tiny-box guests booted at once, each with that one NIC, static addresses
#     192.168.56.10 (server) and .11 (client), set by the guests' scripts (xhyve.cmd=);
#   - round-trip time: the client's busybox `ping -c PINGS` to the server (its avg, in the guest);
#   - throughput: NET_MIB MiB with the client's `dd | nc` to the server's `nc -l`, host wall clock
#     between the client's console markers before and after.
# The TAP baseline runs in a network namespace of its own (bridge and TAPs made there, the host's
# network untouched): it needs root. It is what a named network of mode bridge runs (a bridge, a
# TAP device per NIC), made by hand here so that xhyve starts directly and only the NIC backend
# differs; its figures are the bridge network's. The switch runs in an xhyve-provider daemon of a temporary
# home (`network.create`), with xhyve started directly so that only the NIC backend differs.
#   usage: provider/benches/private-net.sh [NET_MIB [PINGS]]   (default 1 and 10; as root; needs
#          target/release/{xhyve,xhyve-provider} and the tiny box (boxes/tiny/build.sh))
#   env: XHYVE_BIN, XHYVE_PROVIDER_BIN, XHYVE_TINY, BENCH_TIMEOUT (s, per phase; default 1800)
# On the nested kvm_pvm host every guest syscall costs milliseconds, so both mostly wait for the
# guests there: ratios near 1 say the switch is not the bottleneck. Measured there (2026-12,
# `1 5`, one run, 6.5 min in all): switch 29.0 ms avg round trip, 0.021 MB/s; TAP bridge 32.1 ms,
# 0.025 MB/s; ratios switch/tap 0.90 (round trip) and 0.84 (throughput).
set -euo pipefail
cd "$(dirname "$0")/../.."
export NET_MIB=${1:-1} PINGS=${2:-10}
export BOX=${XHYVE_TINY:-target/boxes/tiny}
export XHYVE=${XHYVE_BIN:-target/release/xhyve}
export PROVIDER=${XHYVE_PROVIDER_BIN:-target/release/xhyve-provider}
export TIMEOUT=${BENCH_TIMEOUT:-1800}
for f in "$XHYVE" "$PROVIDER" "$BOX/vmlinux" "$BOX/initrd.img"; do
  [ -f "$f" ] || { echo "$f missing (cargo build --release --workspace; boxes/tiny/build.sh)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root: the TAP baseline makes a bridge (in a namespace of its own)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/xhyve-pnet.XXXXXX)
export WORK NS=xhyve-pnet-$$
PID=
cleanup() {
  [ -z "$PID" ] || kill "$PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link add br0 type bridge
for t in tap-a tap-b; do
  ip -n "$NS" tuntap add dev "$t" mode tap
  ip -n "$NS" link set "$t" master br0 up
done
ip -n "$NS" link set br0 up
SOCK=$("$PROVIDER" call --home "$WORK/home" network.create '{"name": "bench", "subnet": "192.168.56.0/24"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["socket"])')
export SOCK
PID=$("$PROVIDER" call --home "$WORK/home" provider.info | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')

python3 - <<'PY'
import base64, os, re, subprocess, time

NET_MIB, PINGS, TIMEOUT = int(os.environ["NET_MIB"]), int(os.environ["PINGS"]), float(os.environ["TIMEOUT"])
BOX, WORK, NS = os.environ["BOX"], os.environ["WORK"], os.environ["NS"]
SERVER, CLIENT = "192.168.56.10", "192.168.56.11"
NETS = [("switch", [], lambda who: f"virtio-net,socket={os.environ['SOCK']}"),
        ("tap", ["ip", "netns", "exec", NS], lambda who: f"virtio-tap,tap-{who}")]

SERVER_SCRIPT = f"""ifconfig eth0 {SERVER} netmask 255.255.255.0 up
echo BENCH-up; nc -l -p 5001 >/dev/null; echo BENCH-rx $?
"""
CLIENT_SCRIPT = f"""ifconfig eth0 {CLIENT} netmask 255.255.255.0 up
i=0; until ping -c 1 -W 1 {SERVER} >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 600 ] || break; done; sleep 2
echo BENCH-rtt $(ping -c {PINGS} {SERVER} | tail -n 1)
echo BENCH-tx0; dd if=/dev/zero bs=64k count={NET_MIB * 16} 2>/dev/null | nc {SERVER} 5001; echo BENCH-tx1 $?
"""


def boot(net, prefix, nic, who, script):
    console = f"{WORK}/{net}-{who}.console"
    cmdline = "console=ttyS0 xhyve.action=poweroff xhyve.cmd=" + base64.b64encode(script.encode()).decode()
    argv = prefix + [os.environ["XHYVE"], "-c", "1", "-m", "256M", "-A", "-s", "0,hostbridge", "-s", "31,lpc",
                     "-s", f"2,{nic(who)}", "-l", f"com1,log={console}",
                     "-f", f"kexec,{BOX}/vmlinux,{BOX}/initrd.img,{cmdline}"]
    err = open(f"{WORK}/{net}-{who}.stderr", "w+")
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err), console, err


def marker(proc, console, err, name):
    """Waits for the guest's whole `BENCH-name [value]` line (up to its newline: the console file
    may end mid-line while the guest writes it): its value."""
    deadline = time.monotonic() + TIMEOUT
    rx = re.compile(rf"^BENCH-{name}(?: (.*?))?\r?\n", re.M)
    while True:
        text = open(console, errors="replace").read() if os.path.exists(console) else ""
        m = rx.search(text)
        if m:
            return m.group(1)
        if proc.poll() is not None or "Kernel panic" in text or time.monotonic() > deadline:
            err.seek(0)
            tail = "\n".join((text + err.read()).splitlines()[-15:])
            raise SystemExit(f"no BENCH-{name} (xhyve status {proc.poll()}):\n{tail}")
        time.sleep(0.05)


print(f"tiny box, 1 vCPU per guest; {NET_MIB} MiB client->server, {PINGS} pings, per network")
figures = {}
for net, prefix, nic in NETS:
    procs = []
    try:
        server = boot(net, prefix, nic, "a", SERVER_SCRIPT)
        procs.append(server[0])
        client = boot(net, prefix, nic, "b", CLIENT_SCRIPT)
        procs.append(client[0])
        marker(*server, "up")
        rtt = marker(*client, "rtt")
        avg = re.search(r"= [\d.]+/([\d.]+)/", rtt or "")
        marker(*client, "tx0")
        t0 = time.monotonic()
        status = marker(*client, "tx1")
        secs = time.monotonic() - t0
        rx = marker(*server, "rx")
        ok = status == "0" and rx == "0"
        mbs = (NET_MIB << 20) / 1e6 / secs if ok else None
        figures[net] = (float(avg.group(1)) if avg else None, mbs)
        print(f"{net:6s} round trip {figures[net][0]} ms ({rtt}); throughput "
              + (f"{mbs:.3f} MB/s" if ok else f"failed (client nc {status}, server nc {rx})"), flush=True)
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
new, base = figures["switch"], figures["tap"]
if new[0] and base[0]:
    print(f"ratio switch/tap round-trip time {new[0] / base[0]:.2f} (below 1: the switch is faster)")
if new[1] and base[1]:
    print(f"ratio switch/tap throughput {new[1] / base[1]:.2f} (above 1: the switch is faster)")
PY
