"""The check every bad command line must pass: one line naming the flag, status 4, and no VM
(strace shows no KVM_CREATE_VM or KVM_CREATE_VCPU ioctl)."""

import re
import shutil
import subprocess


def assert_rejected(argv, expected, trace_path):
    """Runs `argv` (xhyve and its flags) under strace; `expected` matches the line after "xhyve: "."""
    assert shutil.which("strace"), "strace is needed to prove no VM was created (.ci/run installs it)"
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=ioctl", "-o", str(trace_path),
                        *map(str, argv)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 4, (argv, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert re.match(r"xhyve: " + expected, lines[0]), lines[0]
    calls = trace_path.read_text()
    assert "KVM_CREATE_VM" not in calls and "KVM_CREATE_VCPU" not in calls, calls
