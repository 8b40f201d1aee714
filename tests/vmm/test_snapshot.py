"""Snapshots: a running tiny guest paused, saved, ended, and carried on by a new xhyve process
(--control, --restore); damaged or mismatched snapshots are clear errors. One boot serves all.

The guest has two disks: vda, a qcow2 overlay on a raw backing file (qemu-img makes it, imago
serves it), and vdb, a raw file. Every tick it reads both (O_DIRECT: from the device, not its page
cache) and writes its count to the overlay, so a restored guest proves its disks still work: it
reads what the host put on vdb after the save and its counts land in the overlay."""

import base64
import hashlib
import re
import socket
import subprocess

import pytest

from guest import Guest

MIB = 1 << 20
# Prints a counter once a second with the first bytes of vda and vdb, and writes the count to
# sector 1 of vda: a restored guest must go on from where it was saved, disks working.
COUNTER = (
    "r(){ dd if=/dev/$1 bs=512 count=1 iflag=direct 2>/dev/null|head -c 9;}\n"
    "i=0;while :;do echo \"tick $i $(r vda) $(r vdb)\";"
    "echo \"count $i\"|dd of=/dev/vda bs=512 seek=1 conv=sync,fsync oflag=direct 2>/dev/null;"
    "i=$((i+1));sleep 1;done\n")
class Control:
    """A client of xhyve's control socket: one command line, one reply line."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(120)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")

    def __call__(self, command):
        self.file.write(command + "\n")
        self.file.flush()
        return self.file.readline().rstrip("\n")

    def close(self):
        self.file.close()
        self.sock.close()


def ticks(g):
    return [int(n) for n in re.findall(r"^tick (\d+)", g.text(), re.M)]


def overlay_sector1(tmp):
    """Sector 1 of the qcow2 overlay as the guest sees it (qemu-img reads it whole)."""
    out = tmp / "overlay.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(tmp / "overlay.qcow2"),
                    str(out)], check=True)
    with open(out, "rb") as f:
        f.seek(512)
        return f.read(512)


def write_sector0(path, text):
    with open(path, "r+b") as f:
        f.write(text.ljust(512, b"\0"))


def disks(tmp):
    """A raw backing file and its qcow2 overlay (vda), a raw disk (vdb): made once."""
    base, overlay, raw = tmp / "base.img", tmp / "overlay.qcow2", tmp / "raw.img"
    if not base.exists():
        for path in (base, raw):
            with open(path, "wb") as f:
                f.truncate(4 * MIB)
        write_sector0(base, b"BASE-DATA")
        write_sector0(raw, b"RAW-SAVED")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base),
                        str(overlay)], check=True)
    return ["-A", "-s", f"2,virtio-blk,{overlay},format=qcow2", "-s", f"3,virtio-blk,{raw}"]


@pytest.fixture(scope="module")
def saved(xhyve_bin, tiny_box, tmp_path_factory):
    """A guest counting, saved twice (once while it runs on, once before it is ended)."""
    tmp = tmp_path_factory.mktemp("snapshot")
    flags = ["-m", "256M", *disks(tmp)]
    base_sum = hashlib.sha256((tmp / "base.img").read_bytes()).hexdigest()
    cmd = base64.b64encode(COUNTER.encode()).decode()
    g = Guest(xhyve_bin, tiny_box, tmp, *flags, "--control", str(tmp / "ctl.sock"),
              cmdline=f"console=ttyS0 xhyve.cmd={cmd}")
    try:
        g.wait_for(r"tick 2 BASE-DATA RAW-SAVED")
        ctl = Control(tmp / "ctl.sock")
        replies = {"status": ctl("status"), "pause": ctl("pause"), "paused": ctl("status"),
                   "save": ctl(f"save {tmp / 'first.snap'}")}
        at_first = max(ticks(g))
        replies["resume"] = ctl("resume")
        g.wait_for(rf"tick {at_first + 2}\b")
        # Under the sandbox since set-up, the save included (vmm/src/sandbox).
        threads = g.assert_sandboxed()
        replies["pause2"] = ctl("pause")
        replies["save2"] = ctl(f"save {tmp / 'vm.snap'}")
        last = max(ticks(g))
        replies["quit"] = ctl("quit")
        ctl.close()
        status = g.wait_exit(timeout=60)
    finally:
        g.kill()
    # What the host finds on the disks before any restore writes to them.
    found = {"count": overlay_sector1(tmp),
             "base_unchanged": hashlib.sha256((tmp / "base.img").read_bytes()).hexdigest() == base_sum,
             "check": subprocess.run(["qemu-img", "check", str(tmp / "overlay.qcow2")],
                                     capture_output=True, text=True)}
    # After the save, for the restored guest to read.
    write_sector0(tmp / "raw.img", b"RESTORED!")
    return {"tmp": tmp, "flags": flags, "replies": replies, "status": status, "last": last,
            "guest": g, "found": found, "threads": threads}


def test_control_socket_pauses_saves_and_quits(saved):
    r = saved["replies"]
    assert (r["status"], r["pause"], r["paused"], r["resume"], r["quit"]) == \
        ("ok running", "ok", "ok paused", "ok", "ok")
    for key in ("save", "save2"):
        assert re.fullmatch(r"ok bytes=\d+ ram_written=\d+ ms=\d+", r[key]), r[key]
    assert saved["status"] == 5, saved["guest"].tail()
    assert "quit through the control socket" in saved["guest"].stderr()


def test_every_thread_ran_sandboxed(saved):
    """The control socket's thread, the vCPU, the disks' queue workers restarted by `resume`."""
    names = saved["threads"]
    for name in ("xhyve", "control", "vcpu0", "halt-watch", "launcher"):
        assert name in names, names
    assert any(n.startswith("virtio2-q") for n in names), names


def test_snapshot_is_sparse(saved):
    snap = saved["tmp"] / "vm.snap"
    st = snap.stat()
    assert st.st_size > 256 << 20
    written = int(re.search(r"ram_written=(\d+)", saved["replies"]["save2"]).group(1))
    # Only the guest's non-zero pages take space: a tiny guest touches a fraction of 256 MiB.
    assert written < 128 << 20
    assert st.st_blocks * 512 < written + (8 << 20)


def test_qcow2_overlay_takes_the_writes(saved):
    """The guest read the raw backing file through the overlay; its writes went to the overlay
    (read back by qemu-img, which finds the image consistent), the backing file is untouched."""
    found = saved["found"]
    assert found["base_unchanged"]
    assert found["check"].returncode == 0, found["check"].stdout + found["check"].stderr
    count = re.match(rb"count (\d+)\n", found["count"])
    assert count and saved["last"] - 1 <= int(count.group(1)) <= saved["last"], found["count"][:20]


def test_restored_guest_carries_on(saved, guest):
    tmp = saved["tmp"]
    g = guest(*saved["flags"], "--restore", str(tmp / "vm.snap"))
    m = g.wait_for(r"(?m)^tick (\d+)", timeout=300)
    # The first tick after the restore follows the last one before the save: no reboot.
    assert saved["last"] <= int(m.group(1)) <= saved["last"] + 2, g.tail()
    # Its disks work: every tick that began after the restore read what the host wrote after
    # the save, and its writes reach the overlay.
    tick = saved["last"] + 3
    m = g.wait_for(rf"(?m)^tick {tick} (.*?)\r?$", timeout=300)
    assert m.group(1) == "BASE-DATA RESTORED!", g.tail()
    g.kill()
    count = re.match(rb"count (\d+)\n", overlay_sector1(tmp))
    assert count and int(count.group(1)) >= tick - 1, overlay_sector1(tmp)[:20]
    assert "Linux version" not in g.text()
    assert f"restored from {tmp / 'vm.snap'}" in g.stderr()


def test_the_first_snapshot_restores_too(saved, guest):
    """Saved while running and resumed after: the guest went on, the file still restores."""
    g = guest(*saved["flags"], "--restore", str(saved["tmp"] / "first.snap"))
    g.wait_for(r"(?m)^tick \d+ BASE-DATA RESTORED!", timeout=300)


@pytest.mark.parametrize("flags,message", [
    (["-m", "512M"], "the snapshot is of another machine: memory 256 MiB, this VM has 512 MiB"),
    (["-m", "256M", "-c", "2"], "the snapshot is of another machine: 1 vCPU(s), this VM has 2"),
    (["-m", "256M", "-s", "4,virtio-rnd"],
     "the snapshot is of another machine: devices not in the snapshot: pci 4:0 virtio-rnd"),
], ids=["memory", "vcpus", "devices"])
def test_mismatched_machine_is_refused(saved, guest, flags, message):
    g = guest(*flags, *disks(saved["tmp"]), "--restore", str(saved["tmp"] / "vm.snap"))
    assert g.wait_exit(timeout=120) == 4
    assert message in g.stderr()


def test_damaged_snapshots_are_refused(saved, guest, tmp_path):
    good = saved["tmp"] / "vm.snap"

    def damaged(name, damage):
        path = tmp_path / name
        subprocess.run(["cp", "--sparse=always", str(good), str(path)], check=True)
        with open(path, "r+b") as f:
            damage(f)
        return path

    def flip(at):
        def damage(f):
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 1]))
        return damage

    cases = [
        (damaged("state.snap", flip(100)), "corrupt snapshot state"),
        (damaged("header.snap", flip(20)), "corrupt snapshot header"),
        (damaged("short.snap", lambda f: f.truncate(good.stat().st_size // 2)), "truncated or corrupt"),
    ]
    other = tmp_path / "other.snap"
    other.write_bytes(b"#!/bin/sh\n" + b"\0" * 100)
    cases.append((other, "not an xhyve snapshot"))
    for path, message in cases:
        g = guest(*saved["flags"], "--restore", str(path))
        assert g.wait_exit(timeout=120) == 4, path
        assert message in g.stderr(), (path, g.stderr())
