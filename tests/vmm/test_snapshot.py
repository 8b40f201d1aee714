"""Snapshots: a running tiny guest paused, saved, ended, and carried on by a new xhyve process
(--control, --restore); damaged or mismatched snapshots are clear errors. One boot serves all."""

import base64
import re
import socket
import subprocess

import pytest

from guest import Guest

# Prints a counter once a second: a restored guest must go on from where it was saved.
COUNTER = 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 1; done\n'


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


@pytest.fixture(scope="module")
def saved(xhyve_bin, tiny_box, tmp_path_factory):
    """A guest counting, saved twice (once while it runs on, once before it is ended)."""
    tmp = tmp_path_factory.mktemp("snapshot")
    cmd = base64.b64encode(COUNTER.encode()).decode()
    g = Guest(xhyve_bin, tiny_box, tmp, "-m", "256M", "--control", str(tmp / "ctl.sock"),
              cmdline=f"console=ttyS0 xhyve.cmd={cmd}")
    try:
        g.wait_for(r"tick 2\b")
        ctl = Control(tmp / "ctl.sock")
        replies = {"status": ctl("status"), "pause": ctl("pause"), "paused": ctl("status"),
                   "save": ctl(f"save {tmp / 'first.snap'}")}
        at_first = max(ticks(g))
        replies["resume"] = ctl("resume")
        g.wait_for(rf"tick {at_first + 2}\b")
        replies["pause2"] = ctl("pause")
        replies["save2"] = ctl(f"save {tmp / 'vm.snap'}")
        last = max(ticks(g))
        replies["quit"] = ctl("quit")
        ctl.close()
        status = g.wait_exit(timeout=60)
    finally:
        g.kill()
    return {"tmp": tmp, "replies": replies, "status": status, "last": last, "guest": g}


def test_control_socket_pauses_saves_and_quits(saved):
    r = saved["replies"]
    assert (r["status"], r["pause"], r["paused"], r["resume"], r["quit"]) == \
        ("ok running", "ok", "ok paused", "ok", "ok")
    for key in ("save", "save2"):
        assert re.fullmatch(r"ok bytes=\d+ ram_written=\d+ ms=\d+", r[key]), r[key]
    assert saved["status"] == 5, saved["guest"].tail()
    assert "quit through the control socket" in saved["guest"].stderr()


def test_snapshot_is_sparse(saved):
    snap = saved["tmp"] / "vm.snap"
    st = snap.stat()
    assert st.st_size > 256 << 20
    written = int(re.search(r"ram_written=(\d+)", saved["replies"]["save2"]).group(1))
    # Only the guest's non-zero pages take space: a tiny guest touches a fraction of 256 MiB.
    assert written < 128 << 20
    assert st.st_blocks * 512 < written + (8 << 20)


def test_restored_guest_carries_on(saved, guest):
    tmp = saved["tmp"]
    g = guest("-m", "256M", "--restore", str(tmp / "vm.snap"))
    m = g.wait_for(r"(?m)^tick (\d+)", timeout=300)
    # The first tick after the restore follows the last one before the save: no reboot.
    assert saved["last"] <= int(m.group(1)) <= saved["last"] + 2, g.tail()
    g.wait_for(rf"tick {saved['last'] + 3}\b", timeout=300)
    assert "Linux version" not in g.text()
    assert f"restored from {tmp / 'vm.snap'}" in g.stderr()


def test_the_first_snapshot_restores_too(saved, guest):
    """Saved while running and resumed after: the guest went on, the file still restores."""
    g = guest("-m", "256M", "--restore", str(saved["tmp"] / "first.snap"))
    g.wait_for(r"(?m)^tick \d+", timeout=300)


@pytest.mark.parametrize("flags,message", [
    (["-m", "512M"], "the snapshot is of another machine: memory 256 MiB, this VM has 512 MiB"),
    (["-m", "256M", "-c", "2"], "the snapshot is of another machine: 1 vCPU(s), this VM has 2"),
    (["-m", "256M", "-s", "3,virtio-rnd"],
     "the snapshot is of another machine: devices not in the snapshot: pci 3:0 virtio-rnd"),
], ids=["memory", "vcpus", "devices"])
def test_mismatched_machine_is_refused(saved, guest, flags, message):
    g = guest(*flags, "--restore", str(saved["tmp"] / "vm.snap"))
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
        g = guest("-m", "256M", "--restore", str(path))
        assert g.wait_exit(timeout=120) == 4, path
        assert message in g.stderr(), (path, g.stderr())
