"""virtio-console and virtio-vsock on a real guest, in one boot (boots cost minutes on the nested
host): the tiny box writes to hvc0 (a log target) and hvc1 (a unix socket target), connects over
vsock to a host unix socket listener, and accepts a host-initiated vsock connection. The guest
side of vsock is boxes/tiny/vsock-echo.c."""

import re
import socket
import subprocess
import threading
import time

from test_devices import MARK, cmdline, lines

GUEST_PORT = 6000
HOST_PORT = 5000

SCRIPT = f"""\
echo HVC0-FROM-GUEST >/dev/hvc0
echo HVC1-READING
echo HVC1-IN $(timeout 300 head -n1 /dev/hvc1)
echo HVC1-FROM-GUEST >/dev/hvc1
vsock-echo l {GUEST_PORT} >/tmp/l &
echo VSOCK-LISTENING
echo VSOCK-REPLY $(vsock-echo c {HOST_PORT} GUEST-TO-HOST)
wait
echo VSOCK-GOT $(cat /tmp/l)
"""


def _host_listener(path, got):
    """The host service at PATH_5000: reads until the guest half-closes, answers, closes."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(1200)

    def run():
        try:
            c, _ = srv.accept()
            data = b""
            while chunk := c.recv(4096):
                data += chunk
            got.append(data)
            c.sendall(b"HOST-REPLY")
            c.close()
        except OSError as e:
            got.append(e)
        finally:
            srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _connect_into_guest(path, deadline):
    """CONNECT to the guest's port, retrying until its listener is up; returns (OK line, echo)."""
    last = None
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(600)
        try:
            s.connect(str(path))
            s.sendall(f"CONNECT {GUEST_PORT}\n".encode())
            f = s.makefile("rb")
            ok = f.readline().decode()
            if ok.startswith("OK "):
                s.sendall(b"HOST-TO-GUEST\n")
                return ok, f.read().decode()
            last = ok
        except OSError as e:
            last = e
        finally:
            s.close()
        time.sleep(2)  # the guest RST us: its listener is not up yet
    raise AssertionError(f"no vsock connection into the guest: {last!r}")


def test_console_and_vsock_in_one_boot(guest, tmp_path):
    hvc0 = tmp_path / "hvc0.log"
    con_sock = tmp_path / "hvc1.sock"
    vsock = tmp_path / "v.sock"
    got = []
    listener = _host_listener(f"{vsock}_{HOST_PORT}", got)

    g = guest("-A", "-m", "256M", "-s", "0,hostbridge", "-s", "31,lpc",
              "-s", f"3,virtio-console,log={hvc0}", "-s", f"4,virtio-console,socket={con_sock}",
              "-s", f"5,virtio-vsock,cid=3,socket={vsock}",
              cmdline=cmdline(SCRIPT))
    # The console socket's client: connected before the guest writes to hvc1.
    deadline = time.monotonic() + 60
    while not con_sock.exists():
        assert time.monotonic() < deadline and g.proc.poll() is None, g.tail()
        time.sleep(0.2)
    con = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    con.connect(str(con_sock))
    con.settimeout(1200)
    # Input only once the guest runs the script: Linux's virtio_console drops data that arrives
    # before it has registered the port (in_intr flushes the buffers of an unknown port).
    g.wait_for(r"HVC1-READING")
    con.sendall(b"HOST-TYPED\n")

    g.wait_for(r"VSOCK-LISTENING")
    ok, echo = _connect_into_guest(vsock, time.monotonic() + 600)
    # The console input and vsock threads run under their seccomp filters (vmm/src/sandbox).
    threads = g.assert_sandboxed()
    assert "vsock-listen" in threads, threads
    g.wait_for(rf"{MARK} cmd-exit=(\d+)")
    g.wait_for(rf"{MARK} poweroff")
    assert g.wait_exit() == 1, g.tail()
    out = g.tail(60)

    # hvc0 -> the log target; hvc1 -> the socket client.
    assert "HVC0-FROM-GUEST" in hvc0.read_text(errors="replace"), out
    hvc1 = b""
    while b"HVC1-FROM-GUEST" not in hvc1:
        chunk = con.recv(4096)
        assert chunk, hvc1
        hvc1 += chunk
    con.close()
    assert lines(g, "HVC1-IN") == ["HOST-TYPED"], out

    # Guest -> host: the message reached the host's PATH_5000 listener, its answer came back.
    listener.join(5)
    assert got == [b"GUEST-TO-HOST"], (got, out)
    assert lines(g, "VSOCK-REPLY") == ["HOST-REPLY"], out

    # Host -> guest: OK with the host port, the guest got the line and echoed it.
    assert ok.startswith("OK ") and int(ok.split()[1]) > 0, ok
    assert echo == "ECHO:HOST-TO-GUEST\n", echo
    assert lines(g, "VSOCK-GOT") == ["HOST-TO-GUEST"], out


def test_console_vsock_command_line_errors(xhyve_bin, tiny_box, tmp_path):
    """Bad CONF values: one line naming the -s value, status 4, no VM."""
    kexec = f"kexec,{tiny_box / 'vmlinux'},,console=ttyS0"
    cases = [
        (["-s", "3,virtio-console,tcp=1"], r"-s 3,virtio-console,tcp=1: unknown target 'tcp=1'"),
        (["-s", "3,virtio-console,log="], r"-s 3,virtio-console,log=: unknown target"),
        (["-s", "4,virtio-vsock,cid=2,socket=/tmp/v"], r"-s 4,virtio-vsock,.*: cid=2: guest CIDs are 3 to"),
        (["-s", "4,virtio-vsock,cid=3"], r"-s 4,virtio-vsock,cid=3: needs cid= and socket="),
        (["-s", "4,virtio-vsock"], r"-s 4,virtio-vsock: needs cid= and socket="),
        (["-s", f"4,virtio-vsock,cid=3,socket={tmp_path}/nodir/v.sock"],
         r".*virtio-vsock,socket=.*nodir/v.sock: No such file or directory"),
    ]
    for args, expected in cases:
        r = subprocess.run([str(xhyve_bin), *args, "-f", kexec], capture_output=True, text=True, timeout=60)
        assert r.returncode == 4, (args, r.stderr)
        err = r.stderr.splitlines()
        assert len(err) == 1 and re.match(r"xhyve: " + expected, err[0]), err
