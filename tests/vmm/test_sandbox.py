"""What a real xhyve gives up before its guest runs (vmm/src/sandbox): the descriptors its parent
left open. Each thread's seccomp filter is checked by the boots that start that thread
(`Guest.assert_sandboxed`: test_console_vsock.py, test_net.py, test_snapshot.py)."""

import os
import pathlib
import select

MARK = "XHYVE-TINY:"


def children(pid):
    """The pids of process `pid`'s children (any of its threads may have started them)."""
    out = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that just ended
            pass
    return out


def held(pid, target):
    """The descriptors of process `pid` open on the file of `target` (an os.stat_result)."""
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            fds.append(int(fd))
    return fds


def test_inherited_descriptors_are_closed_before_the_guest_runs(guest, tmp_path):
    """xhyve started with two descriptors a careless parent left open (a file, a pipe's write
    end), on the passt network backend (a program xhyve runs during set-up): once the guest runs,
    neither xhyve nor passt holds them (the pipe's reader sees its end), and the guest boots and
    powers off as ever."""
    stray = open(tmp_path / "stray", "w")
    r, w = os.pipe()
    try:
        g = guest("-A", "-s", "2,virtio-net,passt", pass_fds=(stray.fileno(), w))
        os.close(w)
        w = None
        g.wait_for(r"Linux version")  # the guest runs: set-up is over
        passt = [c for c in children(g.proc.pid)
                 if pathlib.Path(f"/proc/{c}/comm").read_text().startswith("passt")]
        assert passt, f"no passt child of xhyve {g.proc.pid}:\n{g.tail()}"
        for pid in [g.proc.pid, *passt]:
            for name, target in (("the file", os.fstat(stray.fileno())), ("the pipe", os.fstat(r))):
                assert held(pid, target) == [], f"process {pid} still holds {name}"
        # Every write end is closed: the reader is at end of file at once, not blocked.
        assert select.select([r], [], [], 10)[0] == [r] and os.read(r, 1) == b"", "a writer is left"
        g.wait_for(rf"{MARK} ready")
        g.signal()
        assert g.wait_exit() == 1, g.tail()
    finally:
        stray.close()
        os.close(r)
        if w is not None:
            os.close(w)
