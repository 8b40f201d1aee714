"""The daemon's trust boundary (SECURITY.md): another local user can neither reach the socket nor
read the home, nor serve it; names and paths full of quotes, spaces, `..`, `/`, newlines, `$(...)`
and `;` are refused with a clear error or stored as they are, inside the home, with nothing run.
Against a fake `xhyve` (no guest is needed); machine.exec's command reaching a real guest
verbatim is checked in test_ssh.py."""

import json
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from provider_util import Daemon, build_box
from test_machines import fake_vmm_home

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# What a name must never do: run this.
PWNED = pathlib.Path("/tmp/xhyve-trust-PWNED")
HOSTILE = [
    f"$(touch {PWNED})",
    f"`touch {PWNED}`",
    f"a; touch {PWNED}",
    f"a' ; touch {PWNED}; echo '",
    'it\'s "quoted"',
    "with space",
    " leading space",
    "..",
    "../../escape",
    "a/../../b",
    "/absolute",
    "a/b/",
    "line\nbreak",
    "nul\0byte",
    "a,b",
    "-rf",
    "%s%n",
]


@pytest.fixture
def open_parent():
    """A directory every user may enter (pytest's tmp_path is root's alone), with a copy of the
    daemon binary that nobody may run."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="xhyve-trust-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


# The system's programs only: a PATH into root's home (pyenv shims) is not nobody's to enter.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def as_nobody(*argv):
    return subprocess.run(NOBODY + [str(a) for a in argv], capture_output=True, text=True, timeout=30,
                          env={"PATH": SYSTEM_PATH, "LC_ALL": "C"})


def test_another_user_cannot_reach_the_daemon(provider_bin, open_parent):
    bin = open_parent / "xhyve-provider"
    shutil.copy(provider_bin, bin)
    bin.chmod(0o755)
    home = open_parent / "home"
    home.mkdir(mode=0o755)  # made by hand under umask 022: the daemon narrows it
    d = Daemon(bin, home)
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE(d.sock.stat().st_mode) == 0o600
        connect = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                   "print('connected')")
        p = as_nobody(shutil.which("python3", path=SYSTEM_PATH), "-c", connect, d.sock)
        assert p.returncode != 0 and "PermissionError" in p.stderr and "connected" not in p.stdout, p
        p = as_nobody("ls", home)
        assert p.returncode != 0 and "Permission denied" in p.stderr, p
        p = as_nobody("cat", home / "provider.lock")
        assert p.returncode != 0 and "Permission denied" in p.stderr, p
        p = as_nobody(bin, "call", "--no-start", "--home", home, "box.list")
        assert p.returncode == 2 and "cannot connect" in p.stderr and "Permission denied" in p.stderr, p
        p = as_nobody(bin, "serve", "--home", home)
        assert p.returncode != 0 and f"cannot create {home}" in p.stderr, p
        assert "Permission denied" in p.stderr, p
        # The socket's own mode holds even where the home could be entered.
        home.chmod(0o711)
        try:
            p = as_nobody(shutil.which("python3", path=SYSTEM_PATH), "-c", connect, d.sock)
            assert p.returncode != 0 and "PermissionError" in p.stderr, p
        finally:
            home.chmod(0o700)
        # The owner's daemon is untouched, its socket still in place.
        assert d.proc.poll() is None and d.call("box.list") == []
    finally:
        d.stop()


# A stand-in for xhyve with virtio-blk and qcow2 disks: a run writes its argv NUL-separated (arguments may hold
# newlines) and stays up until SIGTERM.
FAKE_BLK_XHYVE = r"""#!/bin/sh
if [ "$1" = "--features" ]; then
    echo '{"version":"0.0.1","pci":["hostbridge","lpc","virtio-blk","virtio-rnd"],"boot":["kexec"],"disk_formats":["raw","qcow2"]}'
    exit 0
fi
printf '%s\0' "$@" > fake-argv
trap 'exit 1' TERM
while :; do sleep 0.1; done
"""


@pytest.fixture
def fake(provider_bin, tmp_path):
    assert not PWNED.exists(), f"{PWNED} left by an earlier run: remove it"
    h = fake_vmm_home(provider_bin, tmp_path, FAKE_BLK_XHYVE)
    yield h
    h.close()
    assert not PWNED.exists(), "a name was run by a shell"


def fake_argv(h, mid):
    p = h.machine_dir(mid) / "fake-argv"
    deadline = time.monotonic() + 10
    while not p.exists() or not p.read_bytes().endswith(b"\0"):
        assert time.monotonic() < deadline, "fake xhyve did not run"
        time.sleep(0.05)
    return p.read_bytes().decode().split("\0")[:-1]


def inside(path, root):
    return os.path.realpath(path).startswith(os.path.realpath(root) + "/")


def entries(root):
    return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*"))


def test_hostile_box_names_versions_and_ids(fake, tmp_path):
    h = fake
    box = tmp_path / "fake.box"
    before_tmp = sorted(os.listdir(tmp_path))
    stored = []
    for name in HOSTILE:
        resp, _ = h.daemon.call_full("box.add", {"source": str(box), "name": name})
        if "error" in resp:
            e = resp["error"]
            assert e["code"] == -32602 and "name" in e["message"], (name, e)
            continue
        r = resp["result"]
        assert r["name"] == name and inside(r["path"], h.path / "boxes"), (name, r)
        assert pathlib.Path(r["path"], "metadata.json").is_file(), r
        stored.append(name)
    # Whatever leaves the store or cannot be a directory name is refused.
    for bad in ("..", "../../escape", "a/../../b", "/absolute", "a/b/", "line\nbreak", "nul\0byte",
                " leading space"):
        assert bad not in stored, bad
    listed = {b["name"] for b in h.call("box.list")}
    assert listed == set(stored) | {"fake"}, listed
    # Each stored box makes a machine whose boot files are one argv element each, verbatim; a
    # comma, which xhyve's options cannot carry, is refused with the reason.
    for name in stored:
        resp, _ = h.daemon.call_full("machine.create", {"box": name, "name": name})
        if name == "a,b":
            e = resp["error"]
            assert e["code"] == -32008 and "comma" in e["message"], e
            continue
        mid = resp["result"]["id"]
        assert h.record(mid)["name"] == name
        h.call("machine.start", {"id": mid})
        bdir = next(b["path"] for b in h.call("box.list") if b["name"] == name)
        argv = fake_argv(h, mid)
        assert any(a.startswith(f"kexec,{bdir}/vmlinux,{bdir}/initrd.img,") for a in argv), argv
        h.call("machine.destroy", {"id": mid, "force": True})
    # Versions, architectures and machine ids become directory names: all refused.
    for bad in HOSTILE:
        e = h.error("box.add", {"source": str(box), "name": "v", "version": bad})
        assert e.code == -32602 and "version" in e.message, (bad, e.message)
        e = h.error("box.add", {"source": str(box), "name": "v", "architecture": bad})
        assert e.code == -32602 and "architecture" in e.message, (bad, e.message)
        e = h.error("machine.state", {"id": bad})  # "-rf" is only not there
        assert e.code in (-32602, -32001) and "id" in e.message, (bad, e.message)
    assert {b["name"] for b in h.call("box.list")} == set(stored) | {"fake"}
    # box.remove takes the names as they are: each stored box goes, by its own name only.
    for bad in HOSTILE:
        resp, _ = h.daemon.call_full("box.remove", {"name": bad})
        if bad in stored:
            (gone,) = resp["result"]["removed"]
            assert gone["name"] == bad and not os.path.exists(gone["path"]), (bad, resp)
        else:
            assert resp["error"]["code"] in (-32602, -32001), (bad, resp)
    assert [b["name"] for b in h.call("box.list")] == ["fake"]
    assert sorted(os.listdir(tmp_path)) == before_tmp, "nothing made beside the home"


def test_hostile_machine_snapshot_and_network_names(fake, tmp_path):
    h = fake
    for name in HOSTILE:
        resp, _ = h.daemon.call_full("machine.create", {"box": "fake", "name": name})
        if "\n" in name or "\0" in name:
            e = resp["error"]
            assert e["code"] == -32602 and e["data"] == {"field": "name"}, (name, e)
            continue
        mid = resp["result"]["id"]
        assert h.record(mid)["name"] == name and h.call("machine.state", {"id": mid})["name"] == name
        # Machines live in directories named by their id, never by their name.
        assert (h.path / "machines" / mid).is_dir()
        h.call("machine.destroy", {"id": mid})
    mid = h.call("machine.create", {"box": "fake", "name": "snap"})["id"]
    snaps = h.machine_dir(mid) / "snapshots"
    for name in HOSTILE:
        resp, _ = h.daemon.call_full("machine.snapshot.save", {"id": mid, "name": name})
        if "result" in resp:  # "-rf": a plain file name
            assert [s["name"] for s in h.call("machine.snapshot.list", {"id": mid})] == [name]
            assert (snaps / name).is_dir()
            h.call("machine.snapshot.delete", {"id": mid, "name": name})
            continue
        for method in ("machine.snapshot.save", "machine.snapshot.restore", "machine.snapshot.delete"):
            e = h.error(method, {"id": mid, "name": name})
            assert e.code == -32602 and e.data == {"field": "name"}, (method, name, e.message)
    assert not snaps.exists() or list(snaps.iterdir()) == []
    for name in HOSTILE:
        resp, _ = h.daemon.call_full("network.create", {"name": name})
        if "result" in resp:  # "-rf"
            assert resp["result"]["socket"] == str(h.path / "networks" / f"{name}.sock"), resp
            h.call("network.remove", {"name": name})
            continue
        e = resp["error"]
        assert e["code"] == -32602 and "network name" in e["message"], (name, e)
        resp, _ = h.daemon.call_full("network.remove", {"name": name})
        assert resp["error"]["code"] in (-32602, -32001), (name, resp)
    assert h.call("network.list") == []
    assert all(inside(h.path / p, h.path) for p in entries(h.path))


def test_hostile_paths_are_used_as_given(fake, tmp_path):
    """Paths are the caller's own: a kernel, an in-place disk and a package output whose
    directory holds quotes, spaces, `$(...)`, `;` and a newline are used exactly there; relative
    ones (and ones with a comma) are refused."""
    h = fake
    odd = tmp_path / "it's \"odd\" $(touch PWNED-1); `touch PWNED-2`\nline"
    odd.mkdir()
    (odd / "vmlinux").write_bytes(b"kernel")
    (odd / "disk.img").write_bytes(bytes(4096))
    mid = h.call("machine.create", {"kernel": str(odd / "vmlinux"), "name": "k",
                                    "disks": [{"path": str(odd / "disk.img")}]})["id"]
    h.call("machine.start", {"id": mid})
    argv = fake_argv(h, mid)
    assert f"3,virtio-blk,{odd}/disk.img" in argv, argv
    assert any(a.startswith(f"kexec,{h.machine_dir(mid)}/") for a in argv), argv
    h.call("machine.stop", {"id": mid, "force": True})
    out = odd / "out 'box'.box"
    r = h.call("machine.package", {"id": mid, "output": str(out)})
    assert r["path"] == str(out) and out.is_file(), r
    assert sorted(os.listdir(odd)) == ["disk.img", "out 'box'.box", "vmlinux"]
    for bad in ("relative/vmlinux", f"{odd}/../{odd.name}/vmlinux,x", "vmlinux"):
        e = h.error("machine.create", {"kernel": bad, "name": "bad"})
        assert e.code == -32602 and "kernel" in e.message, (bad, e.message)
    e = h.error("box.add", {"source": "relative/../fake.box", "name": "rel"})
    assert e.code == -32602 and "absolute" in e.message, e.message
    for where in (tmp_path, h.path, pathlib.Path.cwd()):
        assert not list(where.rglob("PWNED-*")), where


def test_a_box_qcow2_disk_is_never_a_backing_file(fake, tmp_path):
    """A box's disk that is a qcow2 image could name any host file as its backing file: the
    machine gets a raw copy of it (the guest sees the image's bytes), while a raw box disk gets a
    qcow2 overlay the daemon made itself."""
    h = fake
    hostile = b"QFI\xfb" + bytes(4) + b"/etc/shadow".ljust(4088, b"\0")
    meta = b'{"provider": "xhyve", "kernel": "vmlinux", "disks": ["disk.img"]}'
    box = build_box(tmp_path / "q.box", files={"metadata.json": meta, "vmlinux": b"k", "disk.img": hostile})
    h.call("box.add", {"source": str(box), "name": "q"})
    mid = h.call("machine.create", {"box": "q", "name": "q"})["id"]
    (disk,) = h.record(mid)["disks"]
    assert disk.get("format", "raw") == "raw" and disk["path"] == str(h.machine_dir(mid) / "disk0.img"), disk
    assert pathlib.Path(disk["path"]).read_bytes() == hostile
    h.call("machine.start", {"id": mid})
    assert f"3,virtio-blk,{disk['path']}" in fake_argv(h, mid)
    linked = h.call("machine.create", {"box": "fake", "name": "linked"})["id"]
    assert h.record(linked)["disks"][0]["format"] == "qcow2"


@pytest.mark.parametrize("field,value", [
    ("kernel", "../../../../../../etc/passwd"), ("kernel", "/etc/passwd"), ("initrd", "a/../../x"),
    ("disks", ["../../../../etc/shadow"]), ("disks", ["/dev/sda"])])
def test_box_metadata_names_files_inside_the_box(fake, tmp_path, field, value):
    """A box's metadata.json cannot point its kernel, initrd or disks outside the box: the box
    installs (it may carry other files), machine.create blames the box (-32008)."""
    h = fake
    meta = {"provider": "xhyve", "kernel": "vmlinux", field: value}
    box = build_box(tmp_path / "m.box", files={"metadata.json": json.dumps(meta).encode(), "vmlinux": b"k"})
    h.call("box.add", {"source": str(box), "name": "m"})
    e = h.error("machine.create", {"box": "m", "name": "m"})
    assert e.code == -32008 and "not a path inside the box" in e.message, e.message
    assert [m for m in h.call("machine.list") if m["name"] == "m"] == []
