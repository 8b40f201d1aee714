"""Drives one real `xhyve` process and reads its guest console."""

import os
import pathlib
import re
import signal
import subprocess
import time

# Guest kernels are 100-1000x slow on nested (PVM) hosts: waits are long, never timed asserts.
BOOT_TIMEOUT = float(os.environ.get("XHYVE_TEST_BOOT_TIMEOUT", "900"))
# A panicked guest never prints another marker: fail at once instead of at the timeout.
PANIC = "Kernel panic - not syncing"


class Guest:
    def __init__(self, xhyve_bin, box, tmp_path, *flags, cmdline="console=ttyS0",
                 kernel="vmlinux", initrd=True, console="log", env=None, pass_fds=()):
        """console="log" uses `-l com1,log=FILE`; "stdio" uses `-l com1,stdio` with a pipe on
        stdin (see `type`) and stdout captured to the same file. `initrd`: True for the box's,
        False for none, or a path; `env`: variables added to xhyve's environment; `pass_fds`:
        descriptors xhyve inherits beyond 0-2."""
        self.console = tmp_path / f"console-{time.monotonic_ns()}.log"
        self.stderr_path = self.console.with_suffix(".stderr")
        initrd_path = str(box / "initrd.img") if initrd is True else str(initrd or "")
        target = "stdio" if console == "stdio" else f"log={self.console}"
        self.argv = [str(xhyve_bin), *flags, "-l", f"com1,{target}",
                     "-f", f"kexec,{box / kernel},{initrd_path},{cmdline}"]
        stdio = console == "stdio"
        self.proc = subprocess.Popen(self.argv,
                                     stdin=subprocess.PIPE if stdio else subprocess.DEVNULL,
                                     stdout=open(self.console, "wb") if stdio else subprocess.DEVNULL,
                                     stderr=open(self.stderr_path, "w"),
                                     env={**os.environ, **(env or {})}, pass_fds=pass_fds)

    def type(self, text):
        """Sends keystrokes to the guest console (stdio mode)."""
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def text(self):
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, pattern, timeout=BOOT_TIMEOUT):
        """Waits for a console line matching `pattern`; returns the match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            text = self.text()
            m = rx.search(text)
            if m:
                return m
            if PANIC in text:
                raise AssertionError(f"guest kernel panic before /{pattern}/:\n{self.tail()}")
            if self.proc.poll() is not None:
                raise AssertionError(f"xhyve exited ({self.proc.returncode}) before /{pattern}/:\n"
                                     f"{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no /{pattern}/ after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.5)

    def wait_exit(self, timeout=BOOT_TIMEOUT):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"xhyve still running after {timeout:.0f}s:\n{self.tail()}")

    def assert_sandboxed(self):
        """Every thread of the running xhyve is under a seccomp filter, with no capability and
        no way to gain one (vmm/src/sandbox)."""
        threads = {}
        for task in pathlib.Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines()
                              if ":\t" in line)
            except FileNotFoundError:  # a queue worker that just ended
                continue
            threads[status["Name"].strip()] = (status["Seccomp"].strip(), status["NoNewPrivs"].strip(),
                                               status["CapEff"].strip())
        assert threads, "no threads"
        loose = {n: s for n, s in threads.items() if s != ("2", "1", "0000000000000000")}
        assert not loose, f"threads outside the sandbox (Seccomp, NoNewPrivs, CapEff): {loose}"
        return sorted(threads)

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def tail(self, n=40):
        lines = self.text().splitlines()[-n:]
        return "\n".join(["--- console ---", *lines, "--- stderr ---", self.stderr()])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
