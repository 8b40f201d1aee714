"""Crash and kill tests (nothing lost): SIGKILL of `xhyve-provider` in the middle of box.add
(download, unpack), machine.create's disk copy and machine.package, and of `xhyve` while its
guest writes to a disk; a full disk during box.add and machine.create. Afterwards the daemon
starts again, shows nothing half-made, its scratch space is empty, the machines made before are
still there and work, and what the guest synced before the kill is on its disk. The moment to
kill is polled for (a progress notification, a file growing), never timed."""

import base64
import hashlib
import http.server
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from guest import BOOT_TIMEOUT
from provider_util import ROOT, Daemon, build_box, leftovers
from test_machines import FAKE_XHYVE, MARK, Home, fake_box, wait_console, wait_state

MIB = 1 << 20


def crash_restart(h):
    """SIGKILL of h's daemon, then a new one on the same home."""
    h.daemon.proc.send_signal(signal.SIGKILL)
    h.daemon.proc.wait()
    h.daemon = Daemon(h.bin, h.path, h.env)


def send(h, method, params):
    """Sends a request on a connection of its own and returns that connection unread."""
    c = h.daemon.conn(timeout=120)
    c.send_raw(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode() + b"\n")
    return c


def progressed(conn, phase):
    """Reads the call's notifications until one says `phase` has made progress, not ended."""
    while True:
        m = conn.read()
        assert "id" not in m, f"the call ended before the kill: {m}"
        p = m.get("params", {})
        if m.get("method") == "progress" and p.get("phase") == phase and 0 < p["done"] < (p["total"] or 1 << 62):
            return p


def scratch(h):
    return sorted(str(p.relative_to(h.path)) for p in (h.path / "tmp").rglob("*"))


def pattern_file(path, size):
    """`size` bytes that neither compress nor have holes (a 1 MiB random block, repeated)."""
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)
    return path


class HoldingServer:
    """Serves one file over HTTP on 127.0.0.1. Until `release()`, each GET sends the first half
    of it and then holds the connection open: a download that is under way."""

    def __init__(self, path):
        data = path.read_bytes()
        self.released = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if not server.released.is_set():
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        server.released.wait(300)
                        self.close_connection = True
                        return
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.name}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def release(self):
        self.released.set()

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_xhyve_home(provider_bin, tmp_path):
    """A Home whose xhyve is test_machines' fake (with a virtio-blk device)."""
    fake = tmp_path / "fake-xhyve"
    fake.write_text(FAKE_XHYVE)
    fake.chmod(0o755)
    homes = []

    def make(path):
        h = Home(provider_bin, path, {"XHYVE_BIN": str(fake), "FAKE_XHYVE_BLK": "1"})
        homes.append(h)
        return h

    yield make
    for h in homes:
        h.close()


def test_box_add_killed_mid_download_and_mid_unpack(provider_bin, tmp_path):
    h = Home(provider_bin, tmp_path / "home")
    try:
        # Mid-download: the box streams from HTTP, half of it sent, the rest held back.
        files = {"metadata.json": json.dumps({"provider": "xhyve"}).encode(), "vmlinuz": b"kernel",
                 "disks/disk0.img": os.urandom(8 * MIB)}
        www = tmp_path / "www"
        www.mkdir()
        server = HoldingServer(build_box(www / "held.box", files=files))
        try:
            c = send(h, "box.add", {"source": server.url, "name": "held"})
            # The box's disk unpacks as it arrives: killed once it has begun to.
            part = None
            while part is None or part.stat().st_size == 0:
                part = next((h.path / "tmp").glob("add-*/box/disks/disk0.img"), None)
                time.sleep(0.01)
            crash_restart(h)
            c.close()
            assert h.call("box.list") == []
            assert leftovers(h.path) == [], "the half-downloaded box is gone from tmp/"
            server.release()
            r = h.call("box.add", {"source": server.url, "name": "held"})
            with open(os.path.join(r["path"], "disks/disk0.img"), "rb") as f:
                assert f.read() == files["disks/disk0.img"]
        finally:
            server.close()

        # Mid-unpack: a big local box, killed once its big file has begun to unpack.
        big = build_box(tmp_path / "big.tar", fmt="tar",
                        files={"metadata.json": json.dumps({"provider": "xhyve"}).encode(),
                               "vmlinuz": b"kernel", "disk.img": os.urandom(160 * MIB)})
        c = send(h, "box.add", {"source": str(big), "name": "big"})
        while not any(p.stat().st_size > 0 for p in (h.path / "tmp").glob("add-*/box/disk.img")):
            pass
        h.daemon.proc.send_signal(signal.SIGKILL)
        h.daemon.proc.wait()
        c.close()
        half = scratch(h)
        assert any(p.endswith("/box/disk.img") for p in half), f"killed after the unpack: {half}"
        assert [b.name for b in (h.path / "boxes").iterdir()] == ["held"], "nothing of big in the store"
        h.daemon = Daemon(h.bin, h.path, h.env)
        assert [b["name"] for b in h.call("box.list")] == ["held"]
        assert scratch(h) == []
        r = h.call("box.add", {"source": str(big), "name": "big"})
        assert [b["name"] for b in h.call("box.list")] == ["big", "held"]
        assert os.path.getsize(os.path.join(r["path"], "disk.img")) == 160 * MIB
        assert scratch(h) == []
    except BaseException:
        h.print_logs([])
        raise
    finally:
        h.close()


def test_create_package_and_restore_killed_midway(fake_xhyve_home, tmp_path):
    """machine.create killed while it copies a disk in, machine.package while it writes the box,
    machine.snapshot.restore while it copies the snapshot's disks: the daemon started again lists
    only the machine made before (which still starts and stops, its disks as they were), and no
    half machine, half box or half restore is left anywhere."""
    h = fake_xhyve_home(tmp_path / "home")
    try:
        big = pattern_file(tmp_path / "big.img", 512 * MIB)
        h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "fake"})
        keep = h.call("machine.create", {"box": "fake", "name": "keep", "network": "none",
                                         "disks": [{"copy": str(big)}]})["id"]

        # Killed while disk1 of "victim" is being copied (polled for: its record still says
        # not_created, its copy has data but not all). A copy that won the race is destroyed and
        # the kill tried again.
        for attempt in range(5):
            c = send(h, "machine.create", {"box": "fake", "name": "victim", "network": "none",
                                           "disks": [{"copy": str(big)}]})
            copy = None
            while copy is None:
                copy = next((d / "disk1.img" for d in (h.path / "machines").iterdir()
                             if d.name != keep and (d / "disk1.img").exists()
                             and (d / "disk1.img").stat().st_blocks > 0), None)
            h.daemon.proc.send_signal(signal.SIGKILL)
            h.daemon.proc.wait()
            c.close()
            victim = json.loads((copy.parent / "machine.json").read_text())
            if victim["state"] == "not_created" and copy.stat().st_blocks * 512 < big.stat().st_size:
                break
            h.daemon = Daemon(h.bin, h.path, h.env)
            h.call("machine.destroy", {"id": victim["id"]})
        else:
            pytest.fail("no kill landed during the copy in 5 attempts")
        h.daemon = Daemon(h.bin, h.path, h.env)
        listed = h.call("machine.list")
        assert [(m["id"], m["state"]) for m in listed] == [(keep, "stopped")], listed
        assert [d.name for d in (h.path / "machines").iterdir()] == [keep], "the half machine is gone"
        assert scratch(h) == []
        assert h.call("machine.start", {"id": keep})["state"] == "running"
        assert h.call("machine.stop", {"id": keep})["state"] == "stopped"

        # Killed while package writes keep's box: no box, no partial file beside it afterwards.
        out = tmp_path / "out"
        out.mkdir()
        c = send(h, "machine.package", {"id": keep, "output": str(out / "keep.box")})
        progressed(c, "package")
        h.daemon.proc.send_signal(signal.SIGKILL)
        h.daemon.proc.wait()
        c.close()
        half = [p.name for p in out.iterdir()]
        assert len(half) == 1 and half[0].startswith(".keep.box.partial-"), half
        h.daemon = Daemon(h.bin, h.path, h.env)
        assert list(out.iterdir()) == [], "the half-written box is removed at the daemon's start"
        assert scratch(h) == []
        assert [m["id"] for m in h.call("machine.list")] == [keep]
        r = h.call("machine.package", {"id": keep, "output": str(out / "keep.box")})
        assert [p.name for p in out.iterdir()] == ["keep.box"] and r["size"] == (out / "keep.box").stat().st_size

        # Killed while snapshot.restore copies the snapshot's disks beside keep's (disk0's copy
        # complete, disk1's under way), before it commits: keep's disks stay as they were, the
        # copies go; the restore then works.
        d = h.machine_dir(keep)
        h.call("machine.snapshot.save", {"id": keep, "name": "s"})
        before = (d / "disk0.img").read_bytes()
        with open(d / "disk0.img", "r+b") as f:
            f.write(b"AFTER-THE-SNAPSHOT")
        c = send(h, "machine.snapshot.restore", {"id": keep, "name": "s"})
        while not ((d / "disk1.img.restoring").exists() and (d / "disk1.img.restoring").stat().st_blocks > 0):
            pass
        h.daemon.proc.send_signal(signal.SIGKILL)
        h.daemon.proc.wait()
        c.close()
        assert not (d / "restoring.json").exists(), "killed after the commit"
        h.daemon = Daemon(h.bin, h.path, h.env)
        # The socket listens before the start-up clean-up; calls are served after it.
        assert h.call("machine.state", {"id": keep})["state"] == "stopped"
        assert sorted(p.name for p in d.glob("*.restoring")) == []
        assert (d / "disk0.img").read_bytes()[:18] == b"AFTER-THE-SNAPSHOT"
        assert h.call("machine.snapshot.restore", {"id": keep, "name": "s"})["state"] == "stopped"
        assert (d / "disk0.img").read_bytes() == before
    except BaseException:
        h.print_logs()
        raise


# The guest's script on the data disk (/data, ext2): at the first boot it writes /data/keep,
# syncs, says so, then rewrites three files again and again, syncing each; at a later boot it
# says the md5 of /data/keep.
WRITER = """if [ -e /data/keep ]; then echo "XHYVE-TINY: found $(md5sum </data/keep)"; exit 0; fi
yes XHYVE-CRASH-KEEP | head -c 2097152 >/data/keep && sync && echo "XHYVE-TINY: synced"
i=0
while :; do
    yes "$i" | head -c 4194304 >"/data/junk$((i % 3))"
    sync
    i=$((i + 1))
    echo "XHYVE-TINY: wrote $i"
done
"""
KEEP = (b"XHYVE-CRASH-KEEP\n" * (2 * MIB // 17 + 1))[: 2 * MIB]


def fsck(img, *flags):
    r = subprocess.run(["e2fsck", *flags, str(img)], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def debugfs_cat(img, name):
    r = subprocess.run(["debugfs", "-R", f"cat {name}", str(img)], capture_output=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_xhyve_killed_while_the_guest_writes(provider_bin, tiny_box, tmp_path):
    """xhyve SIGKILLed while the tiny guest rewrites files on its ext2 data disk, after it synced
    one: the machine is aborted by the signal; host-side, the synced file reads back whole. ext2
    has no journal, so the kill may leave the file system unclean: then `e2fsck -fy` repairs it
    without losing the file, and a second check finds it clean. The machine boots again and
    its guest reads the file back whole."""
    box = tmp_path / "plain.box"
    subprocess.run([str(ROOT / "boxes/package.sh"), str(box), str(tiny_box)], check=True, capture_output=True)
    h = Home(provider_bin, tmp_path / "home")
    mid = None
    try:
        h.call("box.add", {"source": str(box), "name": "xhyve/plain"})
        cmd = base64.b64encode(WRITER.encode()).decode()
        mid = h.call("machine.create", {
            "box": "xhyve/plain", "name": "writer", "network": "none", "disks": [{"size": "64M"}],
            "cmdline": f"console=ttyS0 xhyve.ssh=off xhyve.data=vda xhyve.cmd={cmd}"})["id"]
        img = h.record(mid)["disks"][0]["path"]
        pid = h.call("machine.start", {"id": mid})["pid"]
        wait_console(h, mid, rf"{MARK} synced")
        wait_console(h, mid, rf"{MARK} wrote 1\b")
        os.kill(pid, signal.SIGKILL)
        a = wait_state(h, mid, "aborted")
        assert a["exit_signal"] == 9, a

        assert debugfs_cat(img, "/keep") == KEEP, "the synced file, read host-side after the kill"
        rc, out = fsck(img, "-fn")
        print(f"e2fsck -fn after the kill: exit {rc}\n{out}")
        if rc != 0:
            rc, out = fsck(img, "-fy")
            print(f"e2fsck -fy: exit {rc}\n{out}")
            assert rc in (1, 2), f"e2fsck -fy could not repair it:\n{out}"
            rc, out = fsck(img, "-fn")
            assert rc == 0, f"unclean after the repair:\n{out}"
            assert debugfs_cat(img, "/keep") == KEEP, "the repair kept the synced file"

        assert h.call("machine.start", {"id": mid})["state"] == "running"
        wait_console(h, mid, rf"{MARK} found {hashlib.md5(KEEP).hexdigest()}")
        assert h.call("machine.stop", {"id": mid})["state"] == "stopped"
        rc, out = fsck(img, "-fn")
        assert rc == 0, f"unclean after a clean power-off:\n{out}"
    except BaseException:
        h.print_logs([mid] if mid else [])
        raise
    finally:
        h.close()


@pytest.fixture
def small_fs(tmp_path):
    """A 24 MiB tmpfs (the tests run as root), unmounted at the end."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_full_disk_gives_a_clear_error_and_leaves_nothing(provider_bin, small_fs, tmp_path):
    """XHYVE_HOME on a 24 MiB file system: a box and a disk copy of 32 MiB do not fit. Each call
    fails saying so, and takes back every byte it wrote."""
    fake = tmp_path / "fake-xhyve"
    fake.write_text(FAKE_XHYVE)
    fake.chmod(0o755)
    h = Home(provider_bin, small_fs / "home", {"XHYVE_BIN": str(fake), "FAKE_XHYVE_BLK": "1"})
    try:
        big = pattern_file(tmp_path / "big.img", 32 * MIB)
        box = build_box(tmp_path / "big.tar", fmt="tar", files={
            "metadata.json": json.dumps({"provider": "xhyve"}).encode(), "vmlinuz": b"kernel",
            "disk.img": big.read_bytes()})
        before = used(small_fs)
        e = h.error("box.add", {"source": str(box), "name": "big"})
        assert "No space left on device" in e.message, e.message
        assert h.call("box.list") == [] and leftovers(h.path) == []
        # The daemon's own logs live there too: a few KiB of growth at most.
        assert used(small_fs) - before < 64 * 1024

        h.call("box.add", {"source": str(fake_box(tmp_path)), "name": "fake"})
        before = used(small_fs)
        e = h.error("machine.create", {"box": "fake", "name": "m", "network": "none",
                                       "disks": [{"copy": str(big)}]})
        assert "No space left on device" in e.message and str(big) in e.message, e.message
        assert h.call("machine.list") == [] and list((h.path / "machines").iterdir()) == []
        assert scratch(h) == []
        assert used(small_fs) - before < 64 * 1024
        # With the space back, a machine fits.
        m = h.call("machine.create", {"box": "fake", "name": "m", "network": "none"})
        assert m["state"] == "stopped"
    except BaseException:
        h.print_logs([])
        raise
    finally:
        h.close()
