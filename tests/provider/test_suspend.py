"""machine.suspend, machine.resume and machine.snapshot.* on one real tiny guest (one cold boot,
~90 s here, shared by every test of this file, in order): its state saved and resumed with its
processes, its disk and a forwarded TCP service working after; a damaged saved state refused
with the machine left saved; a snapshot's disk and memory brought back by a restore. The box
has a disk, so the machine's is a linked clone: a qcow2 overlay on the box's disk."""

import pathlib
import shutil
import socket
import subprocess
import tarfile
import time

import pytest

from provider_util import ROOT
from test_machines import MARK, Home, alive
from test_ssh import call_long, exec_, wait_ssh

DISK_MIB = 16



def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo(port, text, timeout=120):
    """One connection to the guest's echo service through the forwarded port: sends `text`,
    returns what comes back. Retried until the deadline (the guest may be busy)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(text.encode() + b"\n")
                got = b""
                while not got.endswith(b"\n"):
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    got += chunk
                if got:
                    return got.decode()
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no echo on port {port}"
        time.sleep(1)


def run(h, mid, command):
    r, out = exec_(h, mid, command)
    assert r == {"exit_status": 0}, (command, r, out)
    return out["stdout"]


def write_data(h, mid, text):
    """Writes `text` to /data/f (the machine's disk, ext2, mounted by the box's init), synced."""
    run(h, mid, f"echo {text} > /data/f.new && mv /data/f.new /data/f && sync")


def read_data(h, mid):
    """/data/f read from the disk (O_DIRECT), not from the guest's page cache."""
    return run(h, mid, "dd if=/data/f bs=4096 iflag=direct 2>/dev/null").strip()


def on_disk(path, text):
    """Whether the disk image holds `text` (the file's data block)."""
    with open(path, "rb") as f:
        return text.encode() + b"\n" in f.read()


@pytest.fixture(scope="module")
def disk_box_file(tiny_box, tmp_path_factory):
    """The tiny box with an empty 16 MiB disk, which its init formats and mounts on /data."""
    d = tmp_path_factory.mktemp("diskbox")
    for name in ("vmlinux", "initrd.img"):
        shutil.copyfile(tiny_box / name, d / name)
    with open(d / "disk0.img", "wb") as f:
        f.truncate(DISK_MIB << 20)
    out = d / "tiny-disk.box"
    subprocess.run([str(ROOT / "boxes/package.sh"), str(out), str(d), "--kernel", "vmlinux",
                    "--cmdline", "console=ttyS0 xhyve.data=vda"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def machine(provider_bin, disk_box_file, tmp_path_factory):
    """The tiny box with its disk and an echo service on guest port 7777 forwarded from the
    host; booted once, up to SSH."""
    h = Home(provider_bin, tmp_path_factory.mktemp("suspend") / "home")
    try:
        h.call("box.add", {"source": str(disk_box_file), "name": "xhyve/tiny-disk"})
        port = free_port()
        mid = h.call("machine.create", {
            "box": "xhyve/tiny-disk", "name": "suspend",
            "network": {"mode": "user", "forwarded_ports": [{"guest": 7777, "host": port}]}})["id"]
        t0 = time.monotonic()
        h.call("machine.start", {"id": mid})
        wait_ssh(h, mid)
        h.boot_seconds = time.monotonic() - t0
        # busybox nc: a persistent echo server, detached from the SSH session.
        run(h, mid, "setsid nc -ll -p 7777 -e /bin/cat </dev/null >/dev/null 2>&1 &")
        h.mid, h.port = mid, port
        yield h
    except BaseException:
        for name in ("console.log", "vmm.log"):
            p = h.machine_dir(getattr(h, "mid", "none")) / name
            if p.exists():
                print(f"--- {name}:\n{p.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        h.close()


def resume(h):
    """machine.resume, then SSH: the seconds each took."""
    t0 = time.monotonic()
    resp, _ = call_long(h, "machine.resume", {"id": h.mid}, 300)
    assert "result" in resp, resp
    t1 = time.monotonic()
    wait_ssh(h, h.mid)
    return resp["result"], t1 - t0, time.monotonic() - t0


def test_suspend_and_resume_keep_processes_disk_and_ports(machine):
    h, mid = machine, machine.mid
    assert echo(h.port, "before") == "before\n"
    token = run(h, mid, "cat /proc/sys/kernel/random/uuid | tee /tmp/token").strip()
    write_data(h, mid, "SUSPENDED-DATA")
    pid = h.call("machine.state", {"id": mid})["pid"]

    s = h.call("machine.suspend", {"id": mid})
    assert s["state"] == "saved" and "suspended by machine.suspend" in s["exit_reason"], s
    assert not alive(pid)
    state_file = h.machine_dir(mid) / "saved.snap"
    assert state_file.is_file()
    assert [m["state"] for m in h.call("machine.list")] == ["saved"]
    assert h.call("machine.ssh_info", {"id": mid}) is None
    assert h.call("machine.suspend", {"id": mid})["state"] == "saved", "suspending a saved machine"
    # The guest's write reached the host's file before the VMM ended: the machine's overlay.
    d = h.record(mid)["disks"][0]
    disk = d["path"]
    assert d["format"] == "qcow2" and disk.endswith("/disk0.qcow2"), d
    assert on_disk(disk, "SUSPENDED-DATA")

    r, resume_s, to_ssh_s = resume(h)
    assert r["state"] == "running" and r["pid"] != pid, r
    print(f"cold boot to SSH {h.boot_seconds:.1f} s; machine.resume {resume_s:.2f} s, "
          f"to SSH {to_ssh_s:.2f} s")
    assert not state_file.exists(), "the state is dropped once resumed"
    # The same guest carried on: its memory, its disk and its echo service (a new connection
    # through the new VMM's port forward).
    assert run(h, mid, "cat /tmp/token").strip() == token
    assert read_data(h, mid) == "SUSPENDED-DATA"
    write_data(h, mid, "WRITTEN-AFTER-RESUME")
    assert on_disk(disk, "WRITTEN-AFTER-RESUME"), "the resumed guest's disk writes reach the host"
    assert echo(h.port, "after") == "after\n"
    console = (h.machine_dir(mid) / "console.log").read_text(errors="replace")
    assert console.count(f"{MARK} booted") == 1, "resumed, not booted again"
    assert "--restore" in " ".join(h.record(mid)["process"]["argv"])


def test_damaged_saved_state_is_refused_and_kept(machine):
    h, mid = machine, machine.mid
    assert h.call("machine.suspend", {"id": mid})["state"] == "saved"
    state_file = h.machine_dir(mid) / "saved.snap"
    good = state_file.with_name("good.snap")
    shutil.copyfile(state_file, good)
    with open(state_file, "r+b") as f:  # a byte of the state section
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    damaged = state_file.read_bytes()
    e = h.error("machine.resume", {"id": mid})
    assert e.code == -32014 and e.data == {"state": "saved"}, (e.code, e.message, e.data)
    assert "corrupt snapshot state" in e.message and "stays saved" in e.message, e.message
    s = h.call("machine.state", {"id": mid})
    assert s["state"] == "saved" and "pid" not in s, s
    assert state_file.read_bytes() == damaged, "the file is kept as it was"
    e = h.error("machine.start", {"id": mid})
    assert e.code == -32014, e.message
    # With the good state back the same machine resumes.
    good.replace(state_file)
    r, _, _ = resume(h)
    assert r["state"] == "running"
    assert read_data(h, mid) == "WRITTEN-AFTER-RESUME"


def test_snapshot_restore_brings_back_disk_and_memory(machine):
    h, mid = machine, machine.mid
    write_data(h, mid, "SNAPSHOT-A")
    run(h, mid, "echo at-a > /tmp/when")
    a = h.call("machine.snapshot.save", {"id": mid, "name": "a"})
    assert a["name"] == "a" and a["vm_state"] and a["machine_state"] == "running", a
    assert h.call("machine.state", {"id": mid})["state"] == "running", "runs on after the save"
    e = h.error("machine.snapshot.save", {"id": mid, "name": "a"})
    assert e.code == -32003, e.message
    write_data(h, mid, "AFTER-A")
    run(h, mid, "echo after-a > /tmp/when")
    assert [s["name"] for s in h.call("machine.snapshot.list", {"id": mid})] == ["a"]

    r = h.call("machine.snapshot.restore", {"id": mid, "name": "a"})
    assert r["state"] == "saved", r
    assert not list(h.machine_dir(mid).glob("*.restoring")), "no copies left behind"
    resp, _ = call_long(h, "machine.start", {"id": mid}, 300)
    assert resp["result"]["state"] == "running", resp
    wait_ssh(h, mid)
    assert read_data(h, mid) == "SNAPSHOT-A"
    assert run(h, mid, "cat /tmp/when").strip() == "at-a"
    assert echo(h.port, "restored") == "restored\n"

    # machine.stop of a saved machine drops its state.
    assert h.call("machine.suspend", {"id": mid})["state"] == "saved"
    s = h.call("machine.stop", {"id": mid})
    assert s["state"] == "stopped" and not (h.machine_dir(mid) / "saved.snap").exists(), s
    # A snapshot of the stopped machine holds its disks only; a restore leaves it stopped.
    cold = h.call("machine.snapshot.save", {"id": mid, "name": "cold"})
    assert not cold["vm_state"] and cold["machine_state"] == "stopped", cold
    disk = pathlib.Path(h.record(mid)["disks"][0]["path"])
    before = disk.read_bytes()
    with open(disk, "r+b") as f:
        f.write(b"CHANGED")
    assert h.call("machine.snapshot.restore", {"id": mid, "name": "cold"})["state"] == "stopped"
    assert disk.read_bytes() == before

    # machine.package writes the linked clone flat: the raw disk the guest saw.
    out = h.daemon.call("machine.package", {"id": mid, "output": str(h.path.parent / "pkg.box")}, timeout=300)
    with tarfile.open(out["path"]) as t:
        flat = t.extractfile("disk0.img").read()
    assert len(flat) == DISK_MIB << 20 and b"SNAPSHOT-A\n" in flat
    assert out["metadata"]["disks"] == ["disk0.img"]

    names = [s["name"] for s in h.call("machine.snapshot.list", {"id": mid})]
    assert names == ["a", "cold"], names
    for n in names:
        assert h.call("machine.snapshot.delete", {"id": mid, "name": n}) == {"name": n, "deleted": True}
    assert h.call("machine.snapshot.list", {"id": mid}) == []
    e = h.error("machine.snapshot.restore", {"id": mid, "name": "a"})
    assert e.code == -32001, e.message
