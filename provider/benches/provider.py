#!/usr/bin/env python3
"""Provider benchmark (figures, not a test): box.add of a 1 GiB box against `sha256sum` then
`tar -x` of the same file run one after the other; box.add of a box whose disk is sparse (8 GiB,
a few KiB of data, packed by bsdtar as PAX 1.0 sparse) against `bsdtar -x` of it; machine.start
until `xhyve` is exec'd; and machine.state calls per second on one connection. Uses
target/release/xhyve-provider.

usage: provider/benches/provider.py [SIZE_MIB]   (default 1024)"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/provider"))
from provider_util import Daemon  # noqa: E402

FAKE_XHYVE = """#!/bin/sh
[ "$1" = --features ] && echo '{{"version":"0","pci":[],"boot":["kexec"]}}' && exit 0
date +%s.%N > {stamp}
trap 'exit 1' TERM
while :; do sleep 0.1; done
"""


def timed(f):
    t = time.monotonic()
    f()
    return time.monotonic() - t


def make_box(d, mib):
    """A box whose disk is random data (incompressible, so tar.gz does real work)."""
    src = d / "src"
    src.mkdir()
    (src / "metadata.json").write_text(json.dumps(
        {"provider": "xhyve", "kernel": "vmlinux", "disks": ["disk.img"]}))
    (src / "vmlinux").write_bytes(b"kernel")
    with open(src / "disk.img", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    box = d / "bench.box"
    subprocess.run(["tar", "-C", src, "-cf", box, "metadata.json", "vmlinux", "disk.img"],
                   check=True)
    subprocess.run(["sync"], check=True)
    return box


def make_sparse_box(d):
    """A box whose 8 GiB disk holds 64 KiB of data in 16 places, packed by bsdtar (sparse)."""
    src = d / "sparse-src"
    src.mkdir()
    (src / "metadata.json").write_text(json.dumps({"provider": "xhyve", "kernel": "vmlinux"}))
    (src / "vmlinux").write_bytes(b"kernel")
    with open(src / "disk.img", "wb") as f:
        f.truncate(8 << 30)
        for i in range(16):
            f.seek(i * (512 << 20))
            f.write(os.urandom(4096))
    box = d / "sparse.box"
    subprocess.run(["bsdtar", "-czf", box, "-C", src, "metadata.json", "vmlinux", "disk.img"], check=True)
    return box


def main():
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    bin = ROOT / "target/release/xhyve-provider"
    with tempfile.TemporaryDirectory(dir=ROOT / "target") as tmp:
        d = pathlib.Path(tmp)
        box = make_box(d, mib)
        stamp = d / "exec-stamp"
        fake = d / "fake-xhyve"
        fake.write_text(FAKE_XHYVE.format(stamp=stamp))
        fake.chmod(0o755)
        daemon = Daemon(bin, d / "home", {"XHYVE_BIN": str(fake)})
        try:
            t_add = timed(lambda: daemon.call("box.add", {"source": str(box), "name": "b"}))
            out = d / "peer"
            out.mkdir()

            def peer():
                subprocess.run(["sha256sum", box], check=True, stdout=subprocess.DEVNULL)
                subprocess.run(["tar", "-C", out, "-xf", box], check=True)
                subprocess.run(["sync"], check=True)
            t_peer = timed(peer)
            print(f"box.add {mib} MiB: {t_add:.2f} s; sha256sum + tar -x + sync: {t_peer:.2f} s; "
                  f"ratio {t_add / t_peer:.2f} (below 1: the provider is faster)")

            sparse = make_sparse_box(d)
            t_sparse = timed(lambda: daemon.call("box.add", {"source": str(sparse), "name": "sparse"}))
            out = d / "peer-sparse"
            out.mkdir()
            t_bsdtar = timed(lambda: subprocess.run(["bsdtar", "-C", out, "-xf", sparse], check=True))
            print(f"box.add of an 8 GiB sparse disk (64 KiB of data): {t_sparse * 1000:.0f} ms; bsdtar -x: "
                  f"{t_bsdtar * 1000:.0f} ms; ratio {t_sparse / t_bsdtar:.2f}")

            mid = daemon.call("machine.create", {"box": "b", "name": "m"})["id"]
            starts = []
            for _ in range(5):
                stamp.unlink(missing_ok=True)
                t0 = time.time()
                daemon.call("machine.start", {"id": mid})
                while not stamp.exists() or not stamp.read_text().strip():
                    time.sleep(0.001)
                starts.append(float(stamp.read_text()) - t0)
                daemon.call("machine.stop", {"id": mid, "force": True})
            starts.sort()
            print(f"machine.start to exec of xhyve: median {starts[2] * 1000:.1f} ms (5 runs)")

            c = daemon.conn()
            n, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < 3:
                c.request("machine.state", {"id": mid})
                n += 1
            c.close()
            print(f"machine.state: {n / (time.monotonic() - t0):.0f} calls/s on one connection")
            daemon.call("machine.destroy", {"id": mid})
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
