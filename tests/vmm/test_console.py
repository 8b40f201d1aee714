"""Console targets and flags that need a running VM but not a whole boot."""

import os
import re
import select
import subprocess
import time


def start(xhyve_bin, tiny_box, *flags):
    return subprocess.Popen([str(xhyve_bin), *flags, "-f",
                             f"kexec,{tiny_box / 'vmlinux'},{tiny_box / 'initrd.img'},console=ttyS0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_autopty_gives_a_pty_with_the_guest_console(xhyve_bin, tiny_box):
    p = start(xhyve_bin, tiny_box, "-l", "com1,autopty")
    try:
        line = p.stderr.readline()
        m = re.fullmatch(r"xhyve: com1 connected to (/dev/pts/\d+)\n", line)
        assert m, line
        fd = os.open(m.group(1), os.O_RDONLY | os.O_NOCTTY)
        got = b""
        deadline = time.monotonic() + 600
        while b"Linux version" not in got and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                got += os.read(fd, 4096)
        os.close(fd)
        assert b"Linux version" in got, got[-500:]
    finally:
        p.kill()
        p.wait()


def test_ignore_msrs_flag_is_accepted_by_the_host(xhyve_bin, tiny_box, tmp_path):
    log = tmp_path / "console.log"
    p = start(xhyve_bin, tiny_box, "-w", "-l", f"com1,log={log}")
    try:
        deadline = time.monotonic() + 600
        while not (log.exists() and "Linux version" in log.read_text(errors="replace")):
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        p.kill()
        p.wait()
