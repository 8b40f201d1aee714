"""box.add against hostile HTTP servers on 127.0.0.1: a body that stalls is timed out and resumed,
and a box.add whose client has gone is cancelled and cleaned up."""

import hashlib
import os
import select
import socket
import socketserver
import tarfile
import threading
import time

import pytest

from provider_util import build_box, leftovers

MIB = 1 << 20


class HostileHttp:
    """Serves one file. `mode`: "stall-once" (the first GET sends the headers and half the body,
    then nothing; a Range GET gets the rest), "stall-always" (every GET stalls after half of what
    it owes), "drip" (a tar whose one entry is 1 GiB of zeros, 1 KiB every 50 ms: never stalled,
    never done). Records each request's Range and how many connections the client closed."""

    def __init__(self, data, mode):
        self.data, self.mode = data, mode
        self.requests = []
        self.closed = 0
        self.stop = threading.Event()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                server.serve(self.request)

        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.tcp.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.tcp.server_address[1]}/s.box"
        threading.Thread(target=self.tcp.serve_forever, daemon=True).start()

    def serve(self, sock):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        rng = None
        for line in head.decode().split("\r\n")[1:]:
            if line.lower().startswith("range:"):
                rng = line.split(":", 1)[1].strip()
        self.requests.append(rng)
        try:
            if self.mode == "drip":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
                ti = tarfile.TarInfo("blob")
                ti.size = 1 << 30
                sock.sendall(ti.tobuf(tarfile.GNU_FORMAT))
                while not self.stop.is_set():
                    sock.sendall(bytes(1024))
                    time.sleep(0.05)
                return
            start = int(rng[6:].split("-")[0]) if rng else 0
            body = self.data[start:]
            status = b"206 Partial Content" if start else b"200 OK"
            extra = b"Content-Range: bytes %d-%d/%d\r\n" % (start, len(self.data) - 1, len(self.data)) \
                if start else b""
            sock.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\nAccept-Ranges: bytes\r\n"
                         b"ETag: \"e1\"\r\n" % len(body) + extra + b"\r\n")
            if self.mode == "stall-once" and start:
                sock.sendall(body)
                return
            sock.sendall(body[: len(body) // 2])
            # Stall until the client hangs up (or the test ends).
            while not self.stop.is_set():
                r, _, _ = select.select([sock], [], [], 0.1)
                if r and not sock.recv(4096):
                    break
        except OSError:
            pass
        self.closed += 1

    def close(self):
        self.stop.set()
        self.tcp.shutdown()
        self.tcp.server_close()


@pytest.fixture
def hostile(tmp_path):
    made = []

    def make(mode):
        box = build_box(tmp_path / f"{mode}.box", files={
            "metadata.json": b'{"provider": "xhyve"}', "blob": os.urandom(2 * MIB)})
        s = HostileHttp(box.read_bytes(), mode)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def wait_for(what, cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def test_stalled_body_is_timed_out_and_resumed(daemon_factory, tmp_path, hostile):
    d = daemon_factory(tmp_path / "home", {"XHYVE_HTTP_TIMEOUT": "2"})
    s = hostile("stall-once")
    digest = hashlib.sha256(s.data).hexdigest()
    r = d.call("box.add", {"source": s.url, "name": "s", "checksum": digest, "checksum_type": "sha256"},
               timeout=60)
    assert r["checksum"] == digest
    assert s.requests == [None, f"bytes={len(s.data) // 2}-"]


def test_body_that_stays_stalled_fails(daemon_factory, tmp_path, hostile):
    home = tmp_path / "home"
    d = daemon_factory(home, {"XHYVE_HTTP_TIMEOUT": "1"})
    s = hostile("stall-always")
    resp, _ = d.call_full("box.add", {"source": s.url, "name": "s"}, timeout=60)
    e = resp["error"]
    assert e["code"] == -32006 and "truncated" in e["message"], e
    assert "sent nothing for 1 s" in e["message"] and "gave up after 5 resumes" in e["message"], e
    assert len(s.requests) == 6
    assert leftovers(home) == []


@pytest.mark.parametrize("mode", ["drip", "stall-always"])
def test_client_gone_cancels_box_add(daemon_factory, tmp_path, hostile, mode):
    """The client hangs up mid-download: the job stops (a dripping server is not timed out: the
    job notices at its next read; a stalled one at the read timeout), its connection to the
    server closes and its scratch directory goes; the daemon serves on."""
    home = tmp_path / "home"
    d = daemon_factory(home, {"XHYVE_HTTP_TIMEOUT": "3"} if mode == "stall-always" else {})
    s = hostile(mode)
    c = d.conn()
    c.send_raw(b'{"jsonrpc": "2.0", "id": 1, "method": "box.add", "params": {"source": "%s", '
               b'"name": "s"}}\n' % s.url.encode())
    while c.read()["params"]["phase"] != "download":
        pass
    assert leftovers(home) != []  # the job's scratch directory
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    wait_for("the job's HTTP connection closed", lambda: s.closed == len(s.requests))
    wait_for("tmp/ emptied", lambda: leftovers(home) == [])
    wait_for("the cancellation logged", lambda: b"box.add error -32013: cancelled" in d.log.read_bytes())
    assert d.call("box.list") == []
