"""The load scenario (SECURITY.md, "Load"), shared by tests/provider/test_load.py and
provider/benches/load.py: N tiny machines created, started, reached over SSH, stopped and
destroyed through one daemon, each step for all N at once (a thread and a connection per call),
while a poller on its own connection times machine.state and machine.list. Then what is left
of them: processes, TAP devices, sockets, files, leases and the daemon's descriptors and threads,
each against the daemon as it was before the N.

The daemon runs as root in a network namespace of its own (`ip netns exec`, as
test_shared_net.py does), in network mode shared: each running machine has a TAP device on the
daemon's bridge and a DHCP lease, and SSH goes straight to the leased address, so a TAP device
or a TCP session left behind shows in the namespace and nowhere else. A first machine boots
alone and saves the box's boot (provider/API.md, "Fast start"); the N start from it."""

import json
from collections import Counter
import os
import pathlib
import statistics
import subprocess
import threading
import time
import traceback
import uuid as uuidlib

from guest import BOOT_TIMEOUT
from provider_util import RpcError, leftovers
from test_machines import Home
from test_shared_net import in_ns, leases, links

# Long enough for any call under load (wait_ssh has its own timeout inside): the test's bound on
# "every call answers", never a measure of speed.
CALL_TIMEOUT = BOOT_TIMEOUT + 120
# machine.stop's own wait for the guest's power-off before SIGKILL (seconds).
STOP_TIMEOUT = 300
# The poller's pause between two calls.
POLL_PAUSE = 0.05
# How long the idle daemon is polled before the machines start (seconds).
IDLE_POLL = 5
# How long the daemon may take to let go of what the machines held once the last destroy
# answered (threads ending, sockets closing): a wait for quiet, not a measure.
SETTLE = 30


def call(h, method, params, timeout=CALL_TIMEOUT):
    """One call on its own connection: (seconds, result); an error answer raises RpcError."""
    t = time.monotonic()
    r = h.daemon.call(method, params, timeout)
    return time.monotonic() - t, r


def at_once(n, step):
    """Runs step(i) for i in range(n) in n threads released together; returns each one's
    (result or None, error text or None)."""
    out = [(None, None)] * n
    gate = threading.Barrier(n)

    def one(i):
        gate.wait()
        try:
            out[i] = (step(i), None)
        except RpcError as e:
            out[i] = (None, f"#{i}: {e.code}: {e.message}")
        except BaseException as e:  # noqa: BLE001 - a failed call is a figure, not a crash
            out[i] = (None, f"#{i}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


class Poller:
    """machine.state of each machine in turn and machine.list every 5th call, on one connection
    of its own, timed; from start() until stop()."""

    def __init__(self, h, ids):
        self.h, self.ids = h, ids
        self.state, self.list, self.errors = [], [], []
        self.done = threading.Event()
        self.thread = None

    def start(self):
        self.done.clear()
        self.state, self.list, self.errors = [], [], []
        self.thread = threading.Thread(target=self.run)
        self.thread.start()
        return self

    def run(self):
        conn = self.h.daemon.conn(CALL_TIMEOUT)
        try:
            k = 0
            while not self.done.is_set():
                if k % 5 == 4:
                    method, params, into = "machine.list", None, self.list
                else:
                    method, params, into = "machine.state", {"id": self.ids[k % len(self.ids)]}, self.state
                t = time.monotonic()
                resp, _ = conn.request(method, params)
                into.append(time.monotonic() - t)
                if "error" in resp:
                    self.errors.append(f"{method}: {resp['error']}")
                k += 1
                self.done.wait(POLL_PAUSE)
        except BaseException as e:  # noqa: BLE001 - reported as an unanswered call
            self.errors.append(f"poller: {type(e).__name__}: {e}")
        finally:
            conn.close()

    def stop(self):
        self.done.set()
        self.thread.join()
        return {"state": self.state, "list": self.list, "errors": self.errors}


def expected_mac(xhyve, uid):
    """The management NIC's MAC: the one `xhyve -U UUID -M` prints."""
    return subprocess.run([str(xhyve), "-U", uid, "-M"], capture_output=True, text=True,
                          check=True).stdout.split()[-1]


# What the load may leave behind, and what it may not -------------------------------------------

def processes(home, daemon_pid):
    """Every process but the daemon whose command line names the home (the runners and xhyve:
    `run-vmm MACHINE_DIR`, `com1,log=MACHINE_DIR/console.log`) or whose parent is the daemon
    (zombies too): `pid state argv`."""
    out = []
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == daemon_pid:
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        if str(home) in text or int(stat[1]) == daemon_pid:
            out.append(f"{p.name} {stat[0]} {text}")
    return sorted(out)


def daemon_fds(pid):
    """The daemon's open descriptors: what each points to (`socket:[INODE]` made kind-only, so
    a socket closed and another opened count the same)."""
    out = []
    for fd in (pathlib.Path(f"/proc/{pid}/fd")).iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        out.append("socket" if target.startswith("socket:") else target)
    return sorted(out)


def ns_sockets(ns, owned=True):
    """The TCP and UDP sockets in the namespace (`ss`) that a process holds (`owned`), or the
    kernel's alone (a closed connection whose peer is gone stays in FIN-WAIT a while: the
    guest powered off before it could answer the FIN), as `proto state local peer`."""
    lines = in_ns(ns, "ss", "-Hantup").stdout.splitlines()
    return sorted(" ".join(line.split()[:2] + line.split()[4:6]) for line in lines
                  if ("users:(" in line) == owned)


def home_files(home):
    """Every file under the machines' folders and the scratch folder."""
    return sorted(leftovers(home, ("machines", "tmp")))


def inventory(h, ns):
    pid = h.daemon.proc.pid
    return {
        "processes": processes(h.path, pid),
        "tap_devices": sorted(name for name in links(ns) if name.startswith("xh-")),
        "sockets": ns_sockets(ns),
        "files": home_files(h.path),
        "leases": sorted(leases(h.path)),
        "daemon_fds": daemon_fds(pid),
        "daemon_threads": len(os.listdir(f"/proc/{pid}/task")),
    }


def leaks(before, after):
    """What `after` has that `before` had not: lists by item (a multiset difference), the thread
    count by number."""
    out = {}
    for k, v in after.items():
        if isinstance(v, int):
            out[k] = max(0, v - before[k])
        else:
            out[k] = sorted((Counter(v) - Counter(before[k])).elements())
    return out


def leak_count(found):
    return sum(v if isinstance(v, int) else len(v) for v in found.values())


def settle(h, ns, before):
    """The inventory once nothing more goes away (or SETTLE seconds passed): a daemon thread that
    ends or a socket that closes a moment after the last answer is not a leak."""
    deadline = time.monotonic() + SETTLE
    while True:
        now = inventory(h, ns)
        if leak_count(leaks(before, now)) == 0 or time.monotonic() > deadline:
            return now
        time.sleep(1)


# The scenario -----------------------------------------------------------------------------------

def warm_up(h, box_file, xhyve):
    """box.add, then one machine booted alone: it saves the box's boot and brings up the bridge
    and the DHCP server; stopped and destroyed. Returns its seconds to SSH."""
    h.call("box.add", {"source": str(box_file), "name": "xhyve/tiny", "version": "1.0.0"})
    mid = h.call("machine.create", {"box": "xhyve/tiny", "name": "warm", "network": "shared"})["id"]
    t = time.monotonic()
    call(h, "machine.start", {"id": mid})
    call(h, "machine.wait_ssh", {"id": mid, "timeout": BOOT_TIMEOUT})
    took = time.monotonic() - t
    saved = list(h.path.glob("boxes/*/*/*/saved-boots/*.snap"))
    assert saved, f"the first machine saved no boot:\n{h.daemon.log.read_text()[-3000:]}"
    call(h, "machine.stop", {"id": mid, "timeout": STOP_TIMEOUT})
    call(h, "machine.destroy", {"id": mid})
    return took


def run(h, ns, n, xhyve):
    """The N machines through their whole life, each step for all at once. Returns the figures:
    per-step seconds of each machine, the poller's latencies (idle, while starting), the
    machines' answers, the calls that failed and what was left behind."""
    figs = {"n": n, "errors": [], "steps": {}}
    before = settle(h, ns, inventory(h, ns))
    figs["before"] = before
    uuids = [str(uuidlib.uuid4()) for _ in range(n)]
    t_all = time.monotonic()

    def step(name, f):
        t = time.monotonic()
        out = at_once(n, f)
        figs["steps"][name] = {"wall": time.monotonic() - t,
                               "each": [r[0] for r, _ in out if r is not None]}
        figs["errors"] += [f"{name} {e}" for _, e in out if e]
        return [r[1] if r else None for r, _ in out]

    ids = step("create", lambda i: call(h, "machine.create", {
        "box": "xhyve/tiny", "name": f"load{i}", "uuid": uuids[i], "network": "shared"},
        timeout=120))
    ids = [r["id"] if r else None for r in ids]
    live = [m for m in ids if m]
    if not live:
        figs["wall"] = time.monotonic() - t_all
        return figs
    poller = Poller(h, live)
    poller.start()
    time.sleep(IDLE_POLL)
    figs["idle"] = poller.stop()

    def up(i):
        """start, wait_ssh, then the guest says who it is; seconds of each from the start."""
        if ids[i] is None:
            raise RuntimeError("not created")
        t0 = time.monotonic()
        call(h, "machine.start", {"id": ids[i]})
        t_start = time.monotonic() - t0
        call(h, "machine.wait_ssh", {"id": ids[i], "timeout": BOOT_TIMEOUT})
        t_ssh = time.monotonic() - t0
        resp, notes = h.daemon.call_full("machine.exec", {
            "id": ids[i], "command": "hostname; cat /sys/class/net/eth0/address /run/dhcp-ip"}, CALL_TIMEOUT)
        if "error" in resp:
            raise RpcError(resp["error"])
        out = "".join(m["params"]["data"] for m in notes if m["params"]["stream"] == "stdout")
        return time.monotonic() - t0, {"start": t_start, "ssh": t_ssh, "result": resp["result"],
                                        "stdout": out}

    poller.start()
    ups = step("start_to_ssh", up)
    figs["busy"] = poller.stop()
    figs["steps"]["start"] = {"each": [u["start"] for u in ups if u]}
    figs["steps"]["ssh"] = {"each": [u["ssh"] for u in ups if u]}
    lease = {mac: v["ip"] for mac, v in leases(h.path).items()}
    macs = [expected_mac(xhyve, u) for u in uuids]
    figs["answers"] = [
        {"name": f"load{i}", "mac": macs[i], "ip": lease.get(macs[i]),
         "exec": u["result"] if u else None, "said": (u["stdout"].split() if u else [])}
        for i, u in enumerate(ups)]
    figs["during"] = inventory(h, ns)

    def down(i, method, params):
        if ids[i] is None:
            raise RuntimeError("not created")
        return call(h, method, {"id": ids[i], **params})

    stops = step("stop", lambda i: down(i, "machine.stop", {"timeout": STOP_TIMEOUT}))
    figs["stopped"] = [s["state"] if s else None for s in stops]
    figs["forced_off"] = sum(1 for s in stops if s and "forced" in (s.get("exit_reason") or ""))
    step("destroy", lambda i: down(i, "machine.destroy", {}))
    figs["wall"] = time.monotonic() - t_all
    figs["after"] = settle(h, ns, before)
    figs["leaks"] = leaks(before, figs["after"])
    figs["orphans"] = ns_sockets(ns, owned=False)
    return figs


def wrong_answers(figs):
    """The machines whose guest did not say its own name, MAC and leased address, and any value
    two machines share."""
    bad = [a for a in figs.get("answers", [])
           if a["exec"] != {"exit_status": 0} or a["said"] != [a["name"], a["mac"], a["ip"]]]
    for k in (0, 1, 2):
        said = [a["said"][k] for a in figs.get("answers", []) if len(a["said"]) > k]
        if len(set(said)) != len(said):
            bad.append(f"shared values: {sorted(said)}")
    return bad


# Figures ----------------------------------------------------------------------------------------

def spread(xs):
    """min / median / max of seconds, or None."""
    if not xs:
        return None
    return {"min": round(min(xs), 3), "median": round(statistics.median(xs), 3), "max": round(max(xs), 3)}


def latency(xs):
    """median / max of call seconds, in milliseconds."""
    if not xs:
        return None
    return {"n": len(xs), "median_ms": round(statistics.median(xs) * 1000, 2), "max_ms": round(max(xs) * 1000, 2)}


def summary(figs):
    """The figures a person reads: per step min/median/max, wall times, the poller's latencies
    idle and while the machines start, and the leak counts."""
    s = {"machines": figs["n"], "wall_s": round(figs.get("wall", 0), 1), "errors": len(figs["errors"])}
    for name, st in figs["steps"].items():
        s[name] = {"each_s": spread(st["each"])}
        if "wall" in st:
            s[name]["wall_s"] = round(st["wall"], 1)
    for phase in ("idle", "busy"):
        if phase in figs:
            s[f"{phase}_state"] = latency(figs[phase]["state"])
            s[f"{phase}_list"] = latency(figs[phase]["list"])
    idle, busy = s.get("idle_state"), s.get("busy_state")
    if idle and busy:
        s["state_busy_over_idle"] = {"median": round(busy["median_ms"] / idle["median_ms"], 1),
                                     "max": round(busy["max_ms"] / idle["max_ms"], 1)}
    if "after" in figs:
        s["closed_connections_the_kernel_still_holds"] = len(figs["orphans"])
    if "during" in figs:
        d = figs["during"]
        s["while_running"] = {"tap_devices": len(d["tap_devices"]), "daemon_fds": len(d["daemon_fds"]),
                              "daemon_threads": d["daemon_threads"], "processes": len(d["processes"])}
    if "leaks" in figs:
        s["leaks"] = {k: (v if isinstance(v, int) else len(v)) for k, v in figs["leaks"].items()}
    s["forced_off"] = figs.get("forced_off")
    return s


def report(figs):
    return json.dumps(summary(figs), indent=1)
