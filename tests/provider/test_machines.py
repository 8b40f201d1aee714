"""machine.* against a real daemon: first with a fake `xhyve` (a shell script: fast, no guest),
then the whole life of the real tiny box on the real VMM. Real boots take ~100 s on the nested
host: the two real machines boot at once (a module fixture starts both before the first real
test), and the tests reuse them."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import pytest

from guest import BOOT_TIMEOUT, PANIC
from provider_util import Daemon, build_box

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
MARK = "XHYVE-TINY:"
MIB = 1 << 20

# A stand-in for xhyve: `--features` lists the devices (virtio-blk only with FAKE_XHYVE_BLK=1,
# virtio-net only with FAKE_XHYVE_NET=1), a run records its argv and stays up until SIGTERM (the
# "power button": exit 1). The kernel command line picks other behaviours: fake.exit=N exits at
# once with N (0 1 3 4; 0: the guest rebooted), fake.reboot_once reboots at its first run only (in the
# machine's directory), fake.ignore_term ignores SIGTERM.
FAKE_XHYVE = r"""#!/bin/sh
if [ "$1" = "--features" ]; then
    if [ -n "$FAKE_XHYVE_BLK" ]; then blk='"virtio-blk",'; else blk=; fi
    if [ -n "$FAKE_XHYVE_NET" ]; then net='"virtio-net",'; else net=; fi
    echo '{"version":"0.0.1","pci":["hostbridge","amd_hostbridge","lpc",'"$blk$net"'"virtio-rnd"],"boot":["kexec"]}'
    exit 0
fi
printf '%s\n' "$@" > fake-argv
fw= log=
while [ $# -gt 0 ]; do
    case $1 in -f) fw=$2; shift ;; -l) log=${2#com1,log=}; shift ;; esac
    shift
done
echo "XHYVE-TINY: ready" >> "$log"
case $fw in
*fake.reboot_once*) [ -e fake-rebooted ] || { : >fake-rebooted; echo "XHYVE-TINY: reboot" >> "$log"; exit 0; } ;;
esac
case $fw in
*fake.exit=0*) exit 0 ;;
*fake.exit=1*) exit 1 ;;
*fake.exit=4*) echo "xhyve: error: something broke" >&2; exit 4 ;;
*fake.exit=3*) exit 3 ;;
*fake.ignore_term*) trap '' TERM ;;
*) trap 'echo "XHYVE-TINY: power button, shutting down" >> "$log"; exit 1' TERM ;;
esac
while :; do sleep 0.1; done
"""


class Home:
    """A provider home with its daemon; `restart()` replaces the daemon. At the end every machine
    is destroyed with force (no VMM outlives the tests), then the daemon stops."""

    def __init__(self, provider_bin, path, env=None):
        self.bin, self.path, self.env = provider_bin, path, env
        self.daemon = Daemon(provider_bin, path, env)

    def call(self, method, params=None):
        return self.daemon.call(method, params)

    def error(self, method, params=None):
        return self.daemon.error(method, params)

    def restart(self):
        self.daemon.stop()
        self.daemon = Daemon(self.bin, self.path, self.env)

    def machine_dir(self, mid):
        return self.path / "machines" / mid

    def record(self, mid):
        return json.loads((self.machine_dir(mid) / "machine.json").read_text())

    def print_logs(self, mids=None):
        """A failing test's evidence: the ends of the machines' consoles and vmm.log (`mids`,
        else every machine) and of the daemon's log."""
        for mid in self.call("machine.list") if mids is None else mids:
            mid = mid["id"] if isinstance(mid, dict) else mid
            for name in ("console.log.1", "console.log", "vmm.log"):
                p = self.machine_dir(mid) / name
                if p.exists():
                    print(f"--- {mid} {name}:\n{p.read_text(errors='replace')[-4000:]}")
        print(f"--- daemon log:\n{self.daemon.log.read_text(errors='replace')[-5000:]}")

    def close(self):
        """Keeps each machine's console logs beside the home (destroy deletes the machine's
        directory): tests/conftest.py looks there for guest crashes when a test failed."""
        try:
            for m in self.call("machine.list"):
                for log in self.machine_dir(m["id"]).glob("console.log*"):
                    shutil.copy(log, self.path.parent / f"{m['id']}-{log.name}")
                self.call("machine.destroy", {"id": m["id"], "force": True})
        finally:
            self.daemon.stop()


def fake_vmm_home(provider_bin, tmp_path, script):
    """A Home whose daemon runs `script` as xhyve, with a box "fake" (a kernel, an initrd and a
    4 KiB disk) added."""
    fake = tmp_path / "fake-xhyve"
    fake.write_text(script)
    fake.chmod(0o755)
    h = Home(provider_bin, tmp_path / "home", {"XHYVE_BIN": str(fake)})
    meta = {"provider": "xhyve", "kernel": "vmlinux", "initrd": "initrd.img", "disks": ["disk.img"]}
    box = build_box(tmp_path / "fake.box", files={"metadata.json": json.dumps(meta).encode(),
                                                  "vmlinux": b"kernel", "initrd.img": b"initrd",
                                                  "disk.img": bytes(4096)})
    h.call("box.add", {"source": str(box), "name": "fake"})
    return h


def wait_state(h, mid, want, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        s = h.call("machine.state", {"id": mid})
        if s["state"] == want:
            return s
        assert time.monotonic() < deadline, f"state {s}, expected {want}"
        time.sleep(0.1)


def wait_console(h, mid, pattern, timeout=BOOT_TIMEOUT):
    path = h.machine_dir(mid) / "console.log"
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        assert PANIC not in text, f"guest kernel panic before /{pattern}/:\n{text[-3000:]}"
        s = h.call("machine.state", {"id": mid})
        assert s["state"] == "running", f"{s} before /{pattern}/:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no /{pattern}/ after {timeout:.0f}s:\n{text[-3000:]}"
        time.sleep(0.5)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------
# Fast: a fake xhyve, no guest.

@pytest.fixture
def fake_xhyve(tmp_path):
    p = tmp_path / "fake-xhyve"
    p.write_text(FAKE_XHYVE)
    p.chmod(0o755)
    return p


@pytest.fixture
def fake_home(provider_bin, fake_xhyve, tmp_path):
    homes = []

    def make(name="home", **env):
        h = Home(provider_bin, tmp_path / name, {"XHYVE_BIN": str(fake_xhyve), **env})
        homes.append(h)
        return h

    yield make
    for h in homes:
        h.close()


def fake_box(tmp_path, name="fake.box"):
    disk = bytearray(4 * MIB)
    disk[MIB:MIB + 5] = b"hello"
    meta = {"provider": "xhyve", "kernel": "vmlinux", "initrd": "initrd.img",
            "cmdline": "console=ttyS0", "cpus": 2, "memory": "128M", "disks": ["disk.img"]}
    return build_box(tmp_path / name, files={"metadata.json": json.dumps(meta).encode(),
                                             "vmlinux": b"kernel", "initrd.img": b"initrd",
                                             "disk.img": bytes(disk)})


def test_create_refuses_bad_params(fake_home, tmp_path):
    h = fake_home()
    h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "acme/fake", "version": "1.0"})
    e = h.error("machine.create", {"box": "nope", "name": "m"})
    assert e.code == -32001 and 'box "nope"' in e.message and "not installed" in e.message
    e = h.error("machine.create", {"box": {"name": "acme/fake", "version": ">= 2"}, "name": "m"})
    assert e.code == -32001 and "installed: 1.0 (" in e.message
    for params, field in [({"box": "acme/fake", "name": "m", "uuid": "nope"}, "uuid"),
                          ({"box": "acme/fake", "name": "m", "memory": "lots"}, "memory"),
                          ({"box": "acme/fake", "name": "m", "cpus": 0}, "cpus"),
                          ({"box": "acme/fake", "name": "m", "network": "bridged"}, "network"),
                          ({"box": 7, "name": "m"}, "box"),
                          ({"box": "acme/fake", "name": "m", "disks": [{}]}, "disks[0]")]:
        e = h.error("machine.create", params)
        assert e.code == -32602 and e.data == {"field": field}, (params, e.message)
    e = h.error("machine.create", {"box": "acme/fake", "name": "m", "colour": "red"})
    assert e.code == -32602 and "colour" in e.message
    # A box without a kernel cannot make a machine.
    nokernel = build_box(tmp_path / "nok.box", files={"metadata.json": b'{"provider": "xhyve"}'})
    h.call("box.add", {"source": str(nokernel), "name": "nok"})
    e = h.error("machine.create", {"box": "nok", "name": "m"})
    assert e.code == -32008 and '"kernel"' in e.message
    assert h.call("machine.list") == []
    assert os.listdir(h.path / "machines") == []
    # The newest installed version that matches is used.
    h.call("box.add", {"source": str(fake_box(tmp_path, "v2.box")), "name": "acme/fake", "version": "2.0"})
    newest = h.call("machine.create", {"box": "acme/fake", "name": "m"})["id"]
    older = h.call("machine.create", {"box": {"name": "acme/fake", "version": "< 2"}, "name": "m"})["id"]
    assert h.record(newest)["box"]["version"] == "2.0" and h.record(older)["box"]["version"] == "1.0"
    e = h.error("machine.create", {"box": {"name": "acme/fake", "architecture": "sparc"}, "name": "m"})
    assert e.code == -32001 and "(sparc)" in e.message


def test_bad_box_cmdline_blames_the_box(fake_home, tmp_path):
    """A box whose metadata.json has a cmdline xhyve cannot carry is the box's fault (-32008),
    not the caller's, who passed none; a bad cmdline the caller passes stays -32602."""
    h = fake_home()
    meta = {"provider": "xhyve", "kernel": "vmlinux", "cmdline": "console=ttyS0\ninit=/bin/sh"}
    h.call("box.add", {"source": str(build_box(tmp_path / "bad.box", files={
        "metadata.json": json.dumps(meta).encode(), "vmlinux": b"kernel"})), "name": "badcmd"})
    e = h.error("machine.create", {"box": "badcmd", "name": "m"})
    assert e.code == -32008 and '"badcmd"' in e.message and "cmdline" in e.message, e.message
    assert "invalid params" not in e.message
    h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "good"})
    e = h.error("machine.create", {"box": "good", "name": "m", "cmdline": "a\0b"})
    assert e.code == -32602 and e.data == {"field": "cmdline"}, e.message
    assert h.call("machine.list") == [] and os.listdir(h.path / "machines") == []


def test_create_without_a_box_copies_and_grows(fake_home, tmp_path):
    """A kernel, initrd and disk image given directly (Packer's build from files), a disk copied
    in and grown by disk_size; the sources are never changed and the machine owns its copies."""
    h = fake_home(FAKE_XHYVE_BLK="1")
    src = tmp_path / "src"
    src.mkdir()
    (src / "bzImage").write_bytes(b"kernel")
    (src / "initrd").write_bytes(b"initrd")
    img = src / "disk.img"
    img.write_bytes(b"MARK" + bytes(MIB - 4))
    mid = h.call("machine.create", {"name": "raw", "kernel": str(src / "bzImage"),
                                    "initrd": str(src / "initrd"), "disks": [{"copy": str(img)}],
                                    "disk_size": "8M"})["id"]
    d = h.machine_dir(mid)
    rec = h.record(mid)
    assert rec["box"] is None and rec["kernel"] == f"{d}/boot/bzImage", rec
    assert rec["initrd"] == f"{d}/boot/initrd" and (d / "boot/initrd").read_bytes() == b"initrd"
    disk0 = d / "disk0.img"
    assert rec["disks"] == [{"path": str(disk0), "source": str(img), "owned": True}], rec
    assert disk0.stat().st_size == 8 * MIB and disk0.read_bytes()[:4] == b"MARK"
    assert disk0.stat().st_blocks * 512 <= 2 * MIB, "grown with a hole, not written"
    assert img.stat().st_size == MIB, "the source image is not changed"
    listed = h.call("machine.list")[0]
    assert listed["box"] is None and listed["cpus"] == 1 and listed["memory"] == "256M", listed
    (src / "bzImage").unlink()
    h.call("machine.start", {"id": mid})
    argv = (d / "fake-argv").read_text().splitlines()
    assert f"kexec,{d}/boot/bzImage,{d}/boot/initrd,console=ttyS0" in argv, argv
    h.call("machine.destroy", {"id": mid, "force": True})
    assert not d.exists() and img.exists()

    # A box's first disk grows too; what disk_size cannot grow is refused, nothing made.
    h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "fake"})
    grown = h.call("machine.create", {"box": "fake", "name": "g", "disk_size": 16 * MIB})["id"]
    assert (h.machine_dir(grown) / "disk0.img").stat().st_size == 16 * MIB
    kernel = str(tmp_path / "src" / "initrd")
    for params, field in [({"box": "fake", "disk_size": "1M"}, "disk_size"),
                          ({"box": "fake", "disk_size": "9"}, "disk_size"),
                          ({"kernel": kernel, "disk_size": "8M"}, "disk_size"),
                          ({"kernel": kernel, "disks": [{"size": "1M"}], "disk_size": "8M"}, "disk_size"),
                          ({"box": "fake", "kernel": kernel}, "kernel"),
                          ({"box": "fake", "initrd": kernel}, "initrd"),
                          ({}, "box"),
                          ({"kernel": "relative/vmlinux"}, "kernel"),
                          ({"kernel": str(tmp_path)}, "kernel"),
                          ({"kernel": kernel, "initrd": str(tmp_path / "nope")}, "initrd"),
                          ({"kernel": kernel, "disks": [{"copy": str(tmp_path / "nope")}]}, "disks[0]"),
                          ({"kernel": kernel, "disks": [{"copy": str(img), "size": "1M"}]}, "disks[0]")]:
        e = h.error("machine.create", {"name": "m", **params})
        assert e.code == -32602 and e.data == {"field": field}, (params, e.message)
    assert [m["id"] for m in h.call("machine.list")] == [grown]


def test_unknown_and_bad_ids(fake_home):
    h = fake_home()
    for method in ("machine.state", "machine.start", "machine.stop", "machine.destroy",
                   "machine.ssh_info", "machine.wait_ssh"):
        e = h.error(method, {"id": "0000deadbeef"})
        assert e.code == -32001 and "no machine" in e.message and e.data == {"state": "not_created"}
    e = h.error("machine.state", {"id": "../boxes"})
    assert e.code == -32602 and e.data == {"field": "id"}
    e = h.error("machine.exec", {"id": "../boxes", "command": "true"})
    assert e.code == -32602 and e.data == {"field": "id"}


def test_fake_vmm_lifecycle(fake_home, tmp_path):
    """create (disk copies, record), start (argv), the guards (destroy of running, box.remove),
    stop by power button, start again, SIGKILL gives aborted, destroy."""
    h = fake_home()
    h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "acme/fake", "version": "1.0"})
    uuid = "8C4D1B6A-29A3-4A6E-9F29-6E6F1E8E1F01"
    r = h.call("machine.create", {"box": {"name": "acme/fake", "version": "~> 1.0"}, "name": "web",
                                  "uuid": uuid, "memory": 300, "disks": [{"size": "1G"}]})
    mid = r["id"]
    assert r == {"id": mid, "name": "web", "uuid": uuid.lower(), "state": "stopped",
                 "path": str(h.machine_dir(mid))}
    rec = h.record(mid)
    # The box keeps its version as given; its directory is the version's one spelling.
    assert rec["box"] == {"name": "acme/fake", "version": "1.0", "architecture": ARCH,
                          "path": str(h.path / "boxes/acme-VAGRANTSLASH-fake/1.0.0" / ARCH)}
    assert (rec["cpus"], rec["memory"], rec["state"]) == (2, "300M", "stopped")
    disk0, disk1 = (h.machine_dir(mid) / "disk0.img"), (h.machine_dir(mid) / "disk1.img")
    data = disk0.read_bytes()
    assert len(data) == 4 * MIB and data[MIB:MIB + 5] == b"hello" and data.count(0) == 4 * MIB - 5
    assert os.stat(disk0).st_blocks * 512 < 2 * MIB, "the copy is sparse"
    assert os.stat(disk1).st_size == 1 << 30 and os.stat(disk1).st_blocks == 0
    other = h.call("machine.create", {"box": "acme/fake", "name": "web"})
    assert other["uuid"] != uuid.lower() and other["id"] != mid
    e = h.error("machine.create", {"box": "acme/fake", "name": "x", "uuid": uuid})
    assert e.code == -32003 and mid in e.message

    s = h.call("machine.start", {"id": mid})
    assert s["state"] == "running" and alive(s["pid"])
    assert h.call("machine.start", {"id": mid})["pid"] == s["pid"], "start of a running machine"
    wait_console(h, mid, rf"{MARK} ready", timeout=10)
    argv = (h.machine_dir(mid) / "fake-argv").read_text().splitlines()
    box = rec["box"]["path"]
    assert argv == ["-A", "-U", uuid.lower(), "-c", "2", "-m", "300M", "-s", "0,hostbridge",
                    "-s", "31,lpc", "-l", f"com1,log={h.machine_dir(mid)}/console.log",
                    "-f", f"kexec,{box}/vmlinux,{box}/initrd.img,console=ttyS0"], \
        "no virtio-blk in this xhyve's --features: no disks"
    listed = {m["id"]: m for m in h.call("machine.list")}
    assert listed[mid]["state"] == "running" and listed[other["id"]]["state"] == "stopped"

    e = h.error("machine.destroy", {"id": mid})
    assert e.code == -32009 and "running" in e.message and e.data == {"state": "running"}
    e = h.error("box.remove", {"name": "acme/fake"})
    assert e.code == -32002 and f"{mid} (web)" in e.message

    s = h.call("machine.stop", {"id": mid})
    assert s["state"] == "stopped" and s["exit_status"] == 1 and "ACPI power button" in s["exit_reason"]
    assert "pid" not in s
    assert "power button" in (h.machine_dir(mid) / "console.log").read_text()
    assert json.loads((h.machine_dir(mid) / "exit.json").read_text())["status"] == 1
    assert h.call("machine.stop", {"id": mid}) == s, "stop of a stopped machine"

    s = h.call("machine.start", {"id": mid})
    assert (h.machine_dir(mid) / "console.log.1").exists(), "the previous console is kept"
    wait_console(h, mid, rf"{MARK} ready", timeout=10)
    os.kill(s["pid"], signal.SIGKILL)
    a = wait_state(h, mid, "aborted")
    assert a["exit_signal"] == 9 and a["exit_reason"].startswith("killed by signal 9"), a
    assert "exit_status" not in a

    assert h.call("machine.destroy", {"id": mid}) == {"id": mid, "state": "not_created"}
    assert not h.machine_dir(mid).exists()
    e = h.error("machine.state", {"id": mid})
    assert e.code == -32001
    h.call("machine.destroy", {"id": other["id"]})
    assert h.call("box.remove", {"name": "acme/fake"})["removed"]
    assert list((h.path / "tmp").iterdir()) == []


def test_fake_vmm_exit_statuses_force_and_disks(fake_home, tmp_path):
    h = fake_home(FAKE_XHYVE_BLK="1")
    h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "fake"})
    img = tmp_path / "extra.img"
    img.write_bytes(bytes(MIB))

    def machine(cmdline, **kw):
        return h.call("machine.create", {"box": "fake", "name": cmdline, "cmdline": cmdline, **kw})["id"]

    # xhyve's own exit statuses.
    triple = machine("fake.exit=3", disks=[{"path": str(img)}])
    failed = machine("fake.exit=4")
    h.call("machine.start", {"id": triple})
    h.call("machine.start", {"id": failed})
    a = wait_state(h, triple, "aborted")
    assert (a["exit_status"], a["exit_reason"]) == (3, "triple fault (exit status 3)")
    argv = (h.machine_dir(triple) / "fake-argv").read_text().splitlines()
    assert f"3,virtio-blk,{h.machine_dir(triple)}/disk0.img" in argv
    assert f"4,virtio-blk,{img}" in argv, "virtio-blk in --features: disks attached in order (after slot 2, the network)"
    a = wait_state(h, failed, "aborted")
    assert a["exit_status"] == 4 and "something broke" in a["exit_reason"], a

    # A guest that ignores the power button is killed after the timeout: stopped, not aborted.
    deaf = machine("fake.ignore_term")
    h.call("machine.start", {"id": deaf})
    t = time.monotonic()
    s = h.call("machine.stop", {"id": deaf, "timeout": 1})
    assert 1 <= time.monotonic() - t < 10
    assert s["state"] == "stopped" and s["exit_signal"] == 9 and "forced off" in s["exit_reason"], s
    h.call("machine.start", {"id": deaf})
    t = time.monotonic()
    assert h.call("machine.stop", {"id": deaf, "force": True})["state"] == "stopped"
    assert time.monotonic() - t < 5
    pid = h.call("machine.start", {"id": deaf})["pid"]
    assert h.call("machine.destroy", {"id": deaf, "force": True})["state"] == "not_created"
    assert not alive(pid) and not h.machine_dir(deaf).exists()
    assert img.exists(), "a disk given by path is not the machine's to delete"


def wait_reboots(h, mid, n, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        s = h.call("machine.state", {"id": mid})
        if s.get("reboots", 0) >= n:
            return s
        assert time.monotonic() < deadline, f"state {s}, expected {n} reboots"
        time.sleep(0.1)


def test_fake_vmm_reboots(fake_home, tmp_path):
    """A guest that reboots (xhyve exits 0) comes back: xhyve runs again with the same command
    line (the same SSH port), the state stays running and counts the reboot, the console log
    goes on. A reboot loop ends aborted after XHYVE_MAX_REBOOTS within XHYVE_REBOOT_WINDOW; a
    power-off stays off; with XHYVE_MAX_REBOOTS=0 a reboot stops the machine."""
    h = fake_home(FAKE_XHYVE_NET="1", XHYVE_MAX_REBOOTS="3", XHYVE_REBOOT_WINDOW="600")
    h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "fake"})

    def machine(cmdline):
        return h.call("machine.create", {"box": "fake", "name": cmdline, "cmdline": cmdline})["id"]

    once = machine("fake.reboot_once")
    first = h.call("machine.start", {"id": once})
    argv = h.record(once)["process"]["argv"]
    assert any(",virtio-net,user,hostfwd=tcp:127.0.0.1:" in a for a in argv), argv
    s = wait_reboots(h, once, 1)
    assert s["state"] == "running" and s["reboots"] == 1 and s["pid"] != first["pid"], s
    assert alive(s["pid"]) and not alive(first["pid"])
    rec = h.record(once)
    assert rec["process"]["argv"] == argv, "the same command line: same port, MAC and disks"
    assert h.call("machine.ssh_info", {"id": once})["port"] == rec["ssh_port"]
    console = (h.machine_dir(once) / "console.log").read_text()
    assert console.count(f"{MARK} ready") == 2 and f"{MARK} reboot" in console, console
    assert not (h.machine_dir(once) / "console.log.1").exists(), "one console log across a reboot"
    assert "guest reboot 1: restarting xhyve" in (h.machine_dir(once) / "vmm.log").read_text()
    s = h.call("machine.stop", {"id": once})
    assert s["state"] == "stopped" and s["exit_status"] == 1, "the new xhyve is the one stopped"
    assert h.call("machine.start", {"id": once}).get("reboots") is None, "a start counts anew"

    loop = machine("fake.exit=0")
    h.call("machine.start", {"id": loop})
    a = wait_state(h, loop, "aborted")
    assert a["exit_status"] == 0 and a["reboots"] == 3, a
    assert "not restarted: the guest rebooted 4 times within 600 s" in a["exit_reason"], a
    assert "reboot loop" in a["exit_reason"], a
    assert (h.machine_dir(loop) / "vmm.log").read_text().count("restarting xhyve") == 3

    off = machine("fake.exit=1")
    h.call("machine.start", {"id": off})
    s = wait_state(h, off, "stopped")
    assert s["exit_status"] == 1 and "reboots" not in s, s

    h2 = fake_home("never", XHYVE_MAX_REBOOTS="0")
    h2.call("box.add", {"source": str(fake_box(tmp_path, "never.box")), "name": "fake"})
    mid = h2.call("machine.create", {"box": "fake", "name": "r", "cmdline": "fake.reboot_once"})["id"]
    h2.call("machine.start", {"id": mid})
    s = wait_state(h2, mid, "stopped")
    assert s["exit_status"] == 0 and s["exit_reason"].endswith("not restarted: XHYVE_MAX_REBOOTS=0"), s


@pytest.mark.parametrize("env", [{"XHYVE_MAX_REBOOTS": "many"}, {"XHYVE_REBOOT_WINDOW": "0"}])
def test_bad_reboot_limits_are_refused(provider_bin, tmp_path, env):
    name, value = next(iter(env.items()))
    p = subprocess.run([str(provider_bin), "serve", "--home", str(tmp_path / "home")],
                       env=dict(os.environ, **env), capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and f"{name}={value!r}".replace("'", '"') in p.stderr, p


def test_fake_vmm_survives_daemon_restart(fake_home, tmp_path):
    """A restarted daemon finds its running VMMs again, and records the end of one that ended
    while no daemon ran."""
    h = fake_home()
    h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "fake"})
    keep = h.call("machine.create", {"box": "fake", "name": "keep"})["id"]
    gone = h.call("machine.create", {"box": "fake", "name": "gone"})["id"]
    pid = h.call("machine.start", {"id": keep})["pid"]
    gone_pid = h.call("machine.start", {"id": gone})["pid"]
    h.daemon.stop()
    assert alive(pid) and alive(gone_pid), "VMMs outlive the daemon"
    os.kill(gone_pid, signal.SIGKILL)
    time.sleep(0.5)
    h.restart()
    s = h.call("machine.state", {"id": keep})
    assert s["state"] == "running" and s["pid"] == pid
    a = h.call("machine.state", {"id": gone})
    assert a["state"] == "aborted" and a["exit_reason"].startswith("killed by signal 9"), a
    # The new daemon supervises the adopted VMM: a kill is noticed, a stop works.
    s = h.call("machine.stop", {"id": keep})
    assert s["state"] == "stopped" and s["exit_status"] == 1, s
    pid = h.call("machine.start", {"id": keep})["pid"]
    h.restart()
    os.kill(pid, signal.SIGKILL)
    a = wait_state(h, keep, "aborted")
    assert a["exit_signal"] == 9


def test_concurrent_calls_on_one_machine_are_serialised(fake_home, tmp_path):
    import threading
    h = fake_home()
    h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "fake"})
    mid = h.call("machine.create", {"box": "fake", "name": "m"})["id"]
    results = []

    def start():
        results.append(h.call("machine.start", {"id": mid})["pid"])

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1, f"one xhyve per machine: {results}"
    out = subprocess.run(["pgrep", "-f", f"run-vmm {h.machine_dir(mid)} "], capture_output=True, text=True)
    assert len(out.stdout.split()) == 1, out.stdout


# ---------------------------------------------------------------------------------------------
# Real: the tiny box on the real xhyve.

@pytest.fixture(scope="module")
def real(provider_bin, tiny_box_file, tmp_path_factory):
    """Two homes (two daemons), each with the tiny box and one machine that starts booting now:
    "life" for the stop/start/kill test, "restart" for the daemon-restart test."""
    assert (provider_bin.parent / "xhyve").is_file(), "xhyve next to xhyve-provider: build it"
    homes = {}
    try:
        for name in ("life", "restart"):
            h = Home(provider_bin, tmp_path_factory.mktemp(name) / "home")
            homes[name] = h
            r = h.call("box.add", {"source": str(tiny_box_file), "name": "xhyve/tiny", "version": "1.0.0"})
            meta = json.loads((pathlib.Path(r["path"]) / "metadata.json").read_text())
            assert meta == {"provider": "xhyve", "kernel": "vmlinux", "initrd": "initrd.img",
                            "cmdline": "console=ttyS0", "cpus": 1, "memory": "256M", "fast_start": True}
            mid = h.call("machine.create", {"box": "xhyve/tiny", "name": name})["id"]
            h.call("machine.start", {"id": mid})
            h.mid = mid
        yield homes
    finally:
        for h in homes.values():
            h.close()


def test_real_stop_start_and_sigkill(real):
    h = real["life"]
    mid = h.mid
    wait_console(h, mid, rf"{MARK} ready")
    s = h.call("machine.state", {"id": mid})
    assert s["state"] == "running" and alive(s["pid"])
    assert h.call("machine.list")[0]["box"] == {"name": "xhyve/tiny", "version": "1.0.0", "architecture": ARCH}
    e = h.error("box.remove", {"name": "xhyve/tiny"})
    assert e.code == -32002

    s = h.call("machine.stop", {"id": mid})
    assert s["state"] == "stopped" and s["exit_status"] == 1, s
    console = (h.machine_dir(mid) / "console.log").read_text(errors="replace")
    assert f"{MARK} power button, shutting down" in console, "stopped through the ACPI power button"

    s = h.call("machine.start", {"id": mid})
    assert s["state"] == "running"
    wait_console(h, mid, rf"{MARK} ready")
    os.kill(s["pid"], signal.SIGKILL)
    a = wait_state(h, mid, "aborted")
    assert a["exit_signal"] == 9 and a["exit_reason"] == "killed by signal 9 (SIGKILL)", a

    h.call("machine.destroy", {"id": mid})
    assert not h.machine_dir(mid).exists()
    assert h.call("box.remove", {"name": "xhyve/tiny"})["removed"]


def test_real_machine_survives_daemon_restart(real):
    h = real["restart"]
    mid = h.mid
    wait_console(h, mid, rf"{MARK} ready")
    pid = h.call("machine.state", {"id": mid})["pid"]
    h.restart()
    s = h.call("machine.state", {"id": mid})
    assert s["state"] == "running" and s["pid"] == pid and alive(pid)
    s = h.call("machine.stop", {"id": mid})
    assert s["state"] == "stopped" and s["exit_status"] == 1, s
    assert not alive(pid)
    assert h.call("machine.destroy", {"id": mid})["state"] == "not_created"
    assert h.call("machine.list") == []


def test_real_guest_reboot_comes_back_and_a_loop_ends(provider_bin, tiny_box_file, tmp_path):
    """The tiny guest with xhyve.action=reboot reboots at every boot: the first reboot is followed
    (xhyve runs again with the same command line and the guest boots again), the second is one
    too many for XHYVE_MAX_REBOOTS=1 and the machine ends aborted, saying why."""
    h = Home(provider_bin, tmp_path / "home", {"XHYVE_MAX_REBOOTS": "1"})
    try:
        h.call("box.add", {"source": str(tiny_box_file), "name": "xhyve/tiny"})
        mid = h.call("machine.create", {"box": "xhyve/tiny", "name": "loop",
                                        "cmdline": "console=ttyS0 xhyve.action=reboot"})["id"]
        first = h.call("machine.start", {"id": mid})
        argv = h.record(mid)["process"]["argv"]
        s = wait_reboots(h, mid, 1, timeout=BOOT_TIMEOUT)
        assert s["state"] == "running" and s["pid"] != first["pid"], s
        assert h.record(mid)["process"]["argv"] == argv, "the same command line after the reboot"
        a = wait_state(h, mid, "aborted", timeout=BOOT_TIMEOUT)
        assert a["exit_status"] == 0 and a["reboots"] == 1 and "reboot loop" in a["exit_reason"], a
        console = (h.machine_dir(mid) / "console.log").read_text(errors="replace")
        assert console.count(f"{MARK} booted") == 2 and console.count(f"{MARK} reboot") == 2, console
    finally:
        h.close()


def test_real_guest_panic_is_aborted_with_its_console(provider_bin, tiny_box_file, tmp_path):
    """A guest kernel that panics (no init to run) ends its xhyve with status 6 (pvpanic): the
    machine is aborted at once, and its reason quotes the end of the console."""
    h = Home(provider_bin, tmp_path / "home")
    try:
        h.call("box.add", {"source": str(tiny_box_file), "name": "xhyve/tiny"})
        mid = h.call("machine.create", {"box": "xhyve/tiny", "name": "panic",
                                        "cmdline": "console=ttyS0 rdinit=/nope init=/nope"})["id"]
        h.call("machine.start", {"id": mid})
        a = wait_state(h, mid, "aborted", timeout=BOOT_TIMEOUT)
        reason = a["exit_reason"]
        assert a["exit_status"] == 6, a
        assert reason.startswith("the guest kernel panicked (exit status 6); its console ended with:\n"), a
        assert "Kernel panic - not syncing:" in reason, a
    finally:
        h.close()
