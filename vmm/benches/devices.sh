#!/usr/bin/env bash
# Device benchmark: prints figures, asserts nothing.
#   - virtio-blk: sequential write then read of BLK_MIB MiB with the guest's busybox `dd` and
#     oflag=direct / iflag=direct (1 MiB requests, past the guest's page cache);
#   - TCP through each virtio-net backend, NET_MIB MiB both ways, with the guest's busybox `nc`:
#     user mode (libslirp, a hostfwd for host->guest, the gateway for guest->host) and a TAP on a
#     bridge. busybox nc moves about 1 KiB per read/write syscall, and every guest syscall costs
#     milliseconds on the nested host (tens of KB/s there): hence the small default;
#   - for each: MB/s (1 MB = 10^6 bytes) over the host's wall clock, and the host CPU seconds per GB
#     moved (utime+stime from /proc of xhyve, split into vCPU threads and the rest (libslirp's
#     thread among them), and of QEMU's passt);
#   - then the same guest, image and network under QEMU (-M microvm, virtio-mmio) for a ratio, or
#     "QEMU: n/a (why)" when QEMU cannot run the guest (it cannot on nested kvm_pvm hosts).
# Everything runs in a private network namespace (bridge, TAP, passt, both VMMs); its default
# route points into the bridge only because passt wants an outside interface to start.
#   usage: vmm/benches/devices.sh [BLK_MIB [NET_MIB]]   (default 64 and 4; as root; needs
#          target/release/xhyve, the tiny box (boxes/tiny/build.sh), passt, iproute2;
#          qemu-system-x86 is optional)
#   env: XHYVE_BIN, XHYVE_TINY, BENCH_TIMEOUT (s, a run; default 2400), BENCH_QEMU_TIMEOUT (s, to
#        the first marker; default 600)
# On the nested kvm_pvm host the guest kernel runs ~100x slow, so the vCPU CPU figures mostly
# measure that emulation; the non-vCPU and passt figures are the device and backend cost.
# Measured there (2026-11, when `user` was passt; tiny box, light host load, defaults): blk write
# 3.6 MB/s, read 6.1 MB/s (non-vCPU threads 1.2 and 0.4 s/GB); TCP host->guest 0.07 MB/s through
# passt and TAP, TAP
# guest->host 0.04 MB/s (busybox nc's syscalls dominate). Debian 12's passt resets a guest-opened
# TCP connection 24 s after its SYN,ACK unless it has sent the guest data that the guest ACKed
# (see vmm/src/net/passt.rs): the host listener therefore greets the guest with one byte, as most
# protocols' servers do, or the guest->host phase through passt ends after ~1 MB. With it
# (2026-11, `16 4`, heavy host load): passt host->guest 0.05 MB/s, guest->host 0.01 MB/s (the
# whole 4 MiB; 0.027 MB/s in a run of its own), TAP guest->host 0.03 MB/s.
# Under heavy host load the same runs gave a tenth of that. QEMU: n/a (emulation failure on the
# kernel's int3 self-test, `cc 90 90 90 90`).
set -euo pipefail
cd "$(dirname "$0")/../.."
export BLK_MIB=${1:-64} NET_MIB=${2:-4}
export BOX=${XHYVE_TINY:-target/boxes/tiny}
export XHYVE=${XHYVE_BIN:-target/release/xhyve}
export TIMEOUT=${BENCH_TIMEOUT:-2400}
export QEMU_TIMEOUT=${BENCH_QEMU_TIMEOUT:-600}
for f in "$XHYVE" "$BOX/vmlinux" "$BOX/initrd.img"; do
  [ -f "$f" ] || { echo "$f missing (cargo build --release -p xhyve; boxes/tiny/build.sh)" >&2; exit 1; }
done
command -v passt >/dev/null || { echo "passt missing (apt-get install passt)" >&2; exit 1; }
WORK=$(mktemp -d)
export WORK
NS=xhyve-bench-$$
trap 'ip netns del "$NS" 2>/dev/null; rm -rf "$WORK"' EXIT
ip netns add "$NS"
for cmd in "link set lo up" "link add br0 type bridge" "addr add 192.168.77.1/24 dev br0" "link set br0 up" \
  "tuntap add tap0 mode tap" "link set tap0 master br0" "link set tap0 up" \
  "route add default via 192.168.77.254 dev br0"; do
  # shellcheck disable=SC2086
  ip netns exec "$NS" ip $cmd
done

ip netns exec "$NS" python3 - <<'PY'
import base64, os, re, socket, subprocess, time

BLK_MIB, NET_MIB = int(os.environ["BLK_MIB"]), int(os.environ["NET_MIB"])
BOX, WORK = os.environ["BOX"], os.environ["WORK"]
TIMEOUT, QEMU_TIMEOUT = float(os.environ["TIMEOUT"]), float(os.environ["QEMU_TIMEOUT"])
BLK_BYTES, NET_BYTES = BLK_MIB << 20, NET_MIB << 20
RX_PORT, TX_PORT = 5001, 5002  # guest listener (hostfwd on the same host port), host listener
# The NICs are found by MAC in the guest: ...:01 user mode, ...:02 TAP. The guest's static
# address needs one frame out (arping) before passt can reach it: passt learns the guest's MAC
# from its frames and until then sends to the broadcast MAC, which guest TCP ignores.
MAC_USER, MAC_TAP = "02:00:00:00:00:01", "02:00:00:00:00:02"
NETS = [("user (libslirp)", "10.0.2.2", ("127.0.0.1", RX_PORT)), ("TAP", "192.168.77.1", ("192.168.77.2", RX_PORT))]
SCRIPT = f"""m(){{ echo BENCH-$1 $2; }}
m bw0;dd if=/dev/zero of=/dev/vda bs=1M count={BLK_MIB} oflag=direct 2>/dev/null;m bw1 $?
m br0;dd if=/dev/vda of=/dev/null bs=1M count={BLK_MIB} iflag=direct 2>/dev/null;m br1 $?
for i in /sys/class/net/e*;do case $(cat $i/address) in *:01)P=${{i##*/}};;*:02)T=${{i##*/}};;esac;done
ifconfig $P 10.0.2.15 netmask 255.255.255.0 up;ifconfig $T 192.168.77.2 netmask 255.255.255.0 up
arping -q -c1 -I $P 10.0.2.2
for h in 10.0.2.2 192.168.77.1;do
m rx0 $h;m rx1 $(nc -l -p {RX_PORT}|wc -c)
m tx0 $h;dd if=/dev/zero bs=64k count={NET_MIB * 16} 2>/dev/null|nc $h {TX_PORT} >/dev/null;m tx1 $?
done
"""
CMDLINE = "console=ttyS0 xhyve.action=poweroff xhyve.cmd=" + base64.b64encode(SCRIPT.encode()).decode()
PHASES = ["virtio-blk seq write (O_DIRECT)", "virtio-blk seq read (O_DIRECT)"] + [
    f"virtio-net {n} {d}" for n, _, _ in NETS for d in ("host->guest", "guest->host")]
VCPU_THREAD = re.compile(r"vcpu\d+|CPU \d+/KVM")  # xhyve's and QEMU's vCPU thread names


def cpu(pids):
    """CPU seconds so far: (vCPU threads, other threads of pids[0], every thread of pids[1:])."""
    hz = os.sysconf("SC_CLK_TCK")
    vcpu = vmm = other = 0.0
    for i, pid in enumerate(pids):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            secs = (int(fields[11]) + int(fields[12])) / hz  # utime, stime
            if i:
                other += secs
            elif VCPU_THREAD.fullmatch(comm):
                vcpu += secs
            else:
                vmm += secs
    return (vcpu, vmm, other)


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p))
        except (OSError, IndexError, ValueError):
            pass
    return out


class Run:
    """One VMM process running the guest script; `pids` are what is charged for CPU."""

    def __init__(self, name, argv, console, extra_pids=()):
        self.name, self.console, self.pos = name, console, 0
        self.stderr = open(f"{WORK}/{name}.stderr", "w+")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr)
        time.sleep(1)
        self.pids = [self.proc.pid, *extra_pids, *children(self.proc.pid)]

    def text(self):
        try:
            return open(self.console, errors="replace").read()
        except OSError:
            return ""

    def failure(self):
        """Why the guest cannot go on, if it cannot."""
        self.stderr.seek(0)
        out = self.text() + self.stderr.read()
        # QEMU stops the vCPU and waits on a KVM internal error: say what and where.
        m = re.search(r"KVM internal error\. Suberror: (\d+)", out)
        if m:
            what = " (emulation failure)" if m.group(1) == "1" else ""
            insn = re.search(r"Code=.*?(<[0-9a-f]{2}>(?: [0-9a-f]{2}){0,7})", out)
            at = f", instruction bytes at RIP: {insn.group(1)}" if insn else ""
            return f"KVM internal error, suberror {m.group(1)}{what}{at}"
        m = re.search(r"Kernel panic[^\n]*", out)
        if m:
            return m.group(0).strip()
        if self.proc.poll() is not None:
            last = [l for l in out.splitlines() if l.strip()][-1:] or [""]
            return f"exited with status {self.proc.returncode} ({last[0][:160]})"
        return None

    def marker(self, name, timeout):
        """Waits for the guest's next `BENCH-name [value]` line: (value, host time seen)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(rf"^BENCH-{name}(?: (.*?))?\r?$", re.M)
        while True:
            m = rx.search(self.text(), self.pos)
            if m:
                self.pos = m.end()
                return m.group(1), time.monotonic()
            why = self.failure()
            if why:
                raise RuntimeError(why)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no BENCH-{name} after {timeout:.0f}s")
            time.sleep(0.05)

    def trouble_since(self, pos):
        """The first error of a guest tool, or user-process crash (the nested host's known defect
        kills one now and then), that the console shows after `pos`, for a failure message."""
        m = re.compile(r"^(?:.*(?:segfault at|general protection|traps:).*|(?:nc|dd|arping): .*)$", re.M).search(
            self.text(), pos)
        return m.group(0).strip()[:160] if m else None

    def stop(self):
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def result(nbytes, t0, t1, c0, c1):
    return (nbytes, t1 - t0, [b - a for a, b in zip(c0, c1)])


def blk(run, first_timeout):
    for p in ("bw", "br"):
        run.marker(f"{p}0", first_timeout if p == "bw" else TIMEOUT)
        t0, c0 = time.monotonic(), cpu(run.pids)
        status, _ = run.marker(f"{p}1", TIMEOUT)
        t1, c1 = time.monotonic(), cpu(run.pids)
        yield result(BLK_BYTES, t0, t1, c0, c1) if status == "0" else f"guest dd failed ({status})"


def host_to_guest(run, target):
    """Sends NET_BYTES to the guest's listener; retried while the listener is not up yet (passt accepts
    on the host side first and closes when the guest refuses)."""
    chunk = bytes(1 << 20)
    time.sleep(2)  # the guest starts nc after its marker
    for _ in range(60):
        try:
            with socket.create_connection(target, timeout=30) as s:
                s.settimeout(600)
                t0, c0 = time.monotonic(), cpu(run.pids)
                for _ in range(NET_MIB):
                    s.sendall(chunk)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
                t1, c1 = time.monotonic(), cpu(run.pids)
            got, _ = run.marker("rx1", 600)
            if got != str(NET_BYTES):
                return f"the guest received {got} of {NET_BYTES} bytes"
            return result(NET_BYTES, t0, t1, c0, c1)
        except OSError:
            if re.search(r"^BENCH-rx1 ", run.text()[run.pos:], re.M):
                got, _ = run.marker("rx1", 1)
                return f"the guest's nc ended after {got} bytes"
            time.sleep(1)
    return "no connection to the guest's listener"


def guest_to_host(run, listener):
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"\n")  # data the guest ACKs: Debian 12's passt resets the connection otherwise
        conn.settimeout(600)
        t0, c0 = time.monotonic(), cpu(run.pids)
        n = 0
        while True:
            b = conn.recv(1 << 20)
            if not b:
                break
            n += len(b)
        t1, c1 = time.monotonic(), cpu(run.pids)
    status, _ = run.marker("tx1", 600)
    if n != NET_BYTES or status != "0":
        return f"received {n} of {NET_BYTES} bytes (guest nc status {status})"
    return result(NET_BYTES, t0, t1, c0, c1)


def bench(run, first_timeout):
    """Every phase's result (each printed as it comes); RuntimeError when the run stops."""
    results = []

    def done(r, start):
        trouble = isinstance(r, str) and run.trouble_since(start)
        if trouble:
            r += f"; the guest console shows: {trouble}"
        print(f"{run.name:5s} {PHASES[len(results)]:42s} {describe(r)}", flush=True)
        results.append(r)

    with socket.create_server(("0.0.0.0", TX_PORT)) as listener:
        listener.settimeout(600)
        start = run.pos
        for r in blk(run, first_timeout):
            done(r, start)
            start = run.pos
        for _, gateway, target in NETS:
            run.marker(rf"rx0 {re.escape(gateway)}", TIMEOUT)
            done(host_to_guest(run, target), start)
            start = run.pos
            run.marker(rf"tx0 {re.escape(gateway)}", TIMEOUT)
            try:
                done(guest_to_host(run, listener), start)
            except OSError as e:
                done(f"no data from the guest: {e}", start)
            start = run.pos
    return results


def image(name):
    path = f"{WORK}/{name}.img"
    with open(path, "wb") as f:
        f.truncate(BLK_BYTES)
    return path


def describe(r):
    if isinstance(r, str):
        return f"failed: {r}"
    nbytes, secs, (vcpu, vmm, backend) = r
    gb = nbytes / 1e9
    return (f"{nbytes / 1e6 / secs:8.2f} MB/s  host CPU {(vcpu + vmm + backend) / gb:8.1f} s/GB "
            f"(vCPU threads {vcpu / gb:.1f}, other VMM threads {vmm / gb:.1f}, passt {backend / gb:.1f})")


print(f"kernel {BOX}/vmlinux, initrd {BOX}/initrd.img, 1 vCPU, 256 MiB; "
      f"{BLK_MIB} MiB per disk transfer, {NET_MIB} MiB per network transfer")

# xhyve
console = f"{WORK}/xhyve.console"
x = Run("xhyve", [os.environ["XHYVE"], "-c", "1", "-m", "256M", "-A", "-s", "0,hostbridge", "-s", "31,lpc",
                  "-s", f"2,virtio-blk,{image('xhyve')}",
                  "-s", f"3,virtio-net,user,hostfwd=tcp:127.0.0.1:{RX_PORT}-:{RX_PORT},mac={MAC_USER}",
                  "-s", f"4,virtio-tap,tap0,mac={MAC_TAP}", "-l", f"com1,log={console}",
                  "-f", f"kexec,{BOX}/vmlinux,{BOX}/initrd.img,{CMDLINE}"], console)
try:
    xr = bench(x, TIMEOUT)
except RuntimeError as e:
    xr = str(e)
    x.proc.kill()
x.stop()
x.stderr.seek(0)
pvm = re.search(r"adding to the kernel command line: (.*)", x.stderr.read())
if isinstance(xr, str):
    print(f"xhyve: the run stopped: {xr}")

# QEMU: the same kernel parameters xhyve added on this host (none on a normal one), the CPU flags
# the notes found it needs here, its own passt on a socket, the same TAP.
console = f"{WORK}/qemu.console"
sock = f"{WORK}/passt.sock"
qemu_passt = subprocess.Popen(["passt", "-f", "-q", "-1", "-4", "-s", sock, "-a", "10.0.2.15", "-n", "24",
                               "-g", "10.0.2.2", "-m", "1500", "--dns-forward", "10.0.2.3", "-D", "10.0.2.3",
                               "-t", f"127.0.0.1/{RX_PORT}:{RX_PORT}", "-u", "none"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(50):
    if os.path.exists(sock):
        break
    time.sleep(0.1)
qemu_cmdline = CMDLINE + (" " + pvm.group(1) if pvm else "")
try:
    q = Run("qemu", ["qemu-system-x86_64", "-accel", "kvm", "-M", "microvm", "-cpu", "host,-cx16,-arch-capabilities",
                     "-smp", "1", "-m", "256M", "-nodefaults", "-no-user-config", "-nographic",
                     "-serial", f"file:{console}", "-kernel", f"{BOX}/vmlinux", "-initrd", f"{BOX}/initrd.img",
                     "-append", qemu_cmdline,
                     "-drive", f"id=d,file={image('qemu')},format=raw,if=none", "-device", "virtio-blk-device,drive=d",
                     "-netdev", f"stream,id=u,server=off,addr.type=unix,addr.path={sock}",
                     "-device", f"virtio-net-device,netdev=u,mac={MAC_USER}",
                     "-netdev", "tap,id=t,ifname=tap0,script=no,downscript=no",
                     "-device", f"virtio-net-device,netdev=t,mac={MAC_TAP}"], console, [qemu_passt.pid])
    try:
        qr = bench(q, QEMU_TIMEOUT)
    finally:
        q.proc.kill()
        q.stop()
except (OSError, RuntimeError) as e:
    qr = str(e)
qemu_passt.kill()
if isinstance(qr, str):
    print(f"QEMU: n/a ({qr})")
else:
    for i, (name, qres) in enumerate(zip(PHASES, qr)):
        xres = "no xhyve figure" if isinstance(xr, str) else xr[i]
        if not isinstance(xres, str) and not isinstance(qres, str):
            print(f"ratio xhyve/QEMU {name:31s} throughput {qres[1] / xres[1]:.2f}, "
                  f"host CPU per GB {sum(xres[2]) / sum(qres[2]):.2f}")
PY
