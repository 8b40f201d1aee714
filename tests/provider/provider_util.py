"""Helpers and fixtures of the provider tests: the real `xhyve-provider` binary, a daemon on a
temporary XHYVE_HOME, a raw JSON-RPC client, fake-but-valid boxes and a local HTTP server."""

import hashlib
import http.server
import io
import json
import os
import pathlib
import socket
import subprocess
import tarfile
import threading
import time
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


class Conn:
    """One raw connection: newline-delimited JSON-RPC."""

    def __init__(self, path, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.next_id = 1

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def read(self):
        line = self.file.readline()
        assert line, "daemon closed the connection"
        return json.loads(line)

    def request(self, method, params=None, id=None):
        """Sends a request; returns (response, notifications received before it)."""
        if id is None:
            id = self.next_id
            self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send_raw(json.dumps(msg).encode() + b"\n")
        notes = []
        while True:
            m = self.read()
            if "id" not in m:
                notes.append(m)
                continue
            assert m["id"] == id, m
            return m, notes

    def close(self):
        self.file.close()
        self.sock.close()


class RpcError(Exception):
    def __init__(self, error):
        super().__init__(f"{error['code']}: {error['message']}")
        self.code = error["code"]
        self.message = error["message"]
        self.data = error.get("data")


class Daemon:
    def __init__(self, bin, home, env=None):
        self.bin = bin
        self.home = home
        self.sock = home / "provider.sock"
        self.log = home.parent / f"{home.name}-serve.log"
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen([str(bin), "serve", "--home", str(home)], env=e,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 10
        while True:
            try:
                Conn(self.sock, timeout=5).close()
                break
            except OSError:
                assert self.proc.poll() is None, f"serve exited: {self.log.read_text()}"
                assert time.monotonic() < deadline, "daemon did not listen"
                time.sleep(0.02)

    def conn(self, timeout=60):
        return Conn(self.sock, timeout)

    def call_full(self, method, params=None, timeout=60):
        """(response, notifications before it); timeout: the socket's, per read."""
        c = self.conn(timeout)
        try:
            return c.request(method, params)
        finally:
            c.close()

    def call(self, method, params=None, timeout=60):
        resp, _ = self.call_full(method, params, timeout)
        if "error" in resp:
            raise RpcError(resp["error"])
        return resp["result"]

    def error(self, method, params=None):
        resp, _ = self.call_full(method, params)
        assert "error" in resp, f"expected an error, got {resp}"
        return RpcError(resp["error"])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    return h


@pytest.fixture
def daemon_factory(provider_bin):
    made = []

    def make(home, env=None):
        d = Daemon(provider_bin, home, env)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def daemon(daemon_factory, home):
    return daemon_factory(home)


def leftovers(home, subs=("boxes", "tmp")):
    """Everything under boxes/ and tmp/ (a failed add must leave nothing), or under `subs`."""
    out = []
    for sub in subs:
        d = home / sub
        if d.exists():
            out += [str(p.relative_to(home)) for p in d.rglob("*")]
    return out


@pytest.fixture
def assert_clean():
    def check(home):
        assert leftovers(home) == []
    return check


DEFAULT_FILES = {
    "metadata.json": json.dumps({"provider": "xhyve", "format": "raw"}).encode(),
    "vmlinuz": b"fake kernel\n" * 100,
    "initrd.img": os.urandom(4096),
    "Vagrantfile": b"Vagrant.configure('2') { |c| }\n",
    "disks/disk0.img": b"\0" * (1 << 20) + b"end",
}


def build_box(path, fmt="tar.gz", files=None, extra=None):
    """Writes a small valid box (files: name -> bytes) as tar, tar.gz or zip; returns its path.
    `extra(archive)` may add hostile entries."""
    files = dict(DEFAULT_FILES if files is None else files)
    path = pathlib.Path(path)
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
            if extra:
                extra(z)
    else:
        mode = "w:gz" if fmt == "tar.gz" else "w"
        with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as t:
            dirs = sorted({str(pathlib.PurePosixPath(n).parent) for n in files} - {"."})
            for d in dirs:
                ti = tarfile.TarInfo(d)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                t.addfile(ti)
            for name, data in files.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mode = 0o644
                t.addfile(ti, io.BytesIO(data))
            if extra:
                extra(t)
    return path


@pytest.fixture
def make_box(tmp_path):
    counter = [0]

    def make(fmt="tar.gz", files=None, extra=None, name=None):
        counter[0] += 1
        suffix = {"tar.gz": ".box", "tar": ".tar", "zip": ".zip"}[fmt]
        return build_box(tmp_path / (name or f"box{counter[0]}{suffix}"), fmt, files, extra)

    return make


def digest(path, kind="sha256"):
    return hashlib.new(kind, pathlib.Path(path).read_bytes()).hexdigest()


class BoxServer:
    """An HTTP server on 127.0.0.1 serving a directory, with Range support that can be turned
    off, and paths whose first GET (or every GET) drops the connection halfway."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.ranges = True
        self.drop_first = set()
        self.drop_always = set()
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                f = server.root / self.path.lstrip("/").split("?")[0]
                if not f.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = f.read_bytes()
                start = 0
                if rng and server.ranges and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                    if server.ranges:
                        self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
                self.end_headers()
                body = data[start:]
                drop = self.path in server.drop_always or (
                    self.path in server.drop_first and start == 0)
                if drop:
                    server.drop_first.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def box_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    s = BoxServer(root)
    yield s
    s.close()
