#!/usr/bin/env python3
"""Resume and fast start against cold boot (figures, not a test): the tiny box (packed as
boxes/tiny/box.sh does, with fast_start) through the real daemon and xhyve, SSH as the finish
line. One cold machine.start to a working SSH login is the baseline (that machine also saves the
box's boot, provider/API.md "Fast start"); then ROUNDS new machines fast-started from the saved
boot, each timed to machine.start's return and to SSH; then ROUNDS times machine.suspend and
machine.resume of the first machine, each resume timed to its return and to SSH. Prints the
saved boot's and the state file's size against guest RAM, the times and the ratios of cold boot
to fast start and to resume (to SSH). Uses target/release/{xhyve,xhyve-provider} and
target/boxes/tiny.

usage: provider/benches/resume.py [ROUNDS]   (default 3)

Measured 2026-12-06 on the nested kvm_pvm host (2 cores shared with other sessions, load
average ~8), 3 rounds: saved boot and state file 256 MiB long, 30.4 and 31.0 MiB on disk (~12%
of RAM); cold machine.start to SSH 54.5 s; fast start: machine.start returns in 0.93 s, reaches
SSH in 12.45 s (11.63-12.52): cold boot / fast start to SSH 4.4x; machine.suspend 1.85 s;
machine.resume returns in 0.072 s, reaches SSH in 2.13 s: cold boot / resume to SSH 25.5x.
(Earlier, without the fast start, at lower load: cold 85.9 s, resume to SSH 2.36 s.)"""

import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/provider"))
from provider_util import Daemon  # noqa: E402


def timed(f):
    t = time.monotonic()
    r = f()
    return time.monotonic() - t, r


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="xhyve-resume-bench-") as d:
        d = pathlib.Path(d)
        box = d / "tiny.box"
        subprocess.run([str(ROOT / "boxes/package.sh"), str(box), str(ROOT / "target/boxes/tiny"),
                        "--kernel", "vmlinux", "--cmdline", "console=ttyS0", "--fast-start"], check=True,
                       capture_output=True)
        daemon = Daemon(ROOT / "target/release/xhyve-provider", d / "home")
        mid = None
        try:
            daemon.call("box.add", {"source": str(box), "name": "tiny"})
            mid = daemon.call("machine.create", {"box": "tiny", "name": "bench"})["id"]

            def ssh(m=None):
                return daemon.call("machine.wait_ssh", {"id": m or mid, "timeout": 600}, timeout=700)

            def start():
                daemon.call("machine.start", {"id": mid})
                return ssh()

            cold, _ = timed(start)
            [boot] = (d / "home/boxes").glob("*/*/*/saved-boots/*.snap")
            boot_size = boot.stat()
            fast_returns, fast_ssh = [], []
            for i in range(rounds):
                other = daemon.call("machine.create", {"box": "tiny", "name": f"fast{i}"})["id"]
                t0 = time.monotonic()
                daemon.call("machine.start", {"id": other}, timeout=600)
                fast_returns.append(time.monotonic() - t0)
                ssh(other)
                fast_ssh.append(time.monotonic() - t0)
                daemon.call("machine.destroy", {"id": other, "force": True})
            state = d / "home/machines" / mid / "saved.snap"
            suspends, resumes, to_ssh = [], [], []
            for _ in range(rounds):
                t, _ = timed(lambda: daemon.call("machine.suspend", {"id": mid}, timeout=600))
                suspends.append(t)
                size = state.stat()
                t0 = time.monotonic()
                daemon.call("machine.resume", {"id": mid}, timeout=600)
                resumes.append(time.monotonic() - t0)
                ssh()
                to_ssh.append(time.monotonic() - t0)
            ram = 256 << 20
            med = statistics.median
            for what, st in (("saved boot", boot_size), ("state file", size)):
                print(f"guest RAM {ram >> 20} MiB; {what} {st.st_size >> 20} MiB long, "
                      f"{st.st_blocks * 512 / (1 << 20):.1f} MiB on disk "
                      f"({st.st_blocks * 512 / ram:.1%} of RAM)")
            print(f"cold machine.start to SSH: {cold:.2f} s")
            print(f"fast start (a new machine from the saved boot): machine.start returns: median "
                  f"{med(fast_returns):.3f} s; to SSH: median {med(fast_ssh):.2f} s "
                  f"(all: {', '.join(f'{x:.2f}' for x in fast_ssh)})")
            print(f"cold boot / fast start to SSH: {cold / med(fast_ssh):.1f}x")
            print(f"machine.suspend: median {med(suspends):.3f} s of {rounds}")
            print(f"machine.resume returns: median {med(resumes):.3f} s; to SSH: median "
                  f"{med(to_ssh):.2f} s (all: {', '.join(f'{x:.2f}' for x in to_ssh)})")
            print(f"cold boot / resume to SSH: {cold / med(to_ssh):.1f}x")
        finally:
            if mid:
                daemon.call("machine.destroy", {"id": mid, "force": True})
            daemon.stop()


if __name__ == "__main__":
    main()
