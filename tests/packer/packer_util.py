"""Helpers and fixtures of the Packer tests: a real Packer (packer-plugin/build-packer.sh) that
finds the real plugin through PACKER_PLUGIN_PATH, the real provider daemon on a temporary
XHYVE_HOME, and the real tiny box (boxes/tiny/box.sh)."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="session")
def provider_bin():
    path = pathlib.Path(os.environ.get("XHYVE_PROVIDER_BIN", ROOT / "target/release/xhyve-provider"))
    assert path.is_file(), f"{path} missing: build it first (cargo build --release --workspace)"
    return path


@pytest.fixture(scope="session")
def tiny_box_file(tmp_path_factory):
    """The tiny box as a .box file: $XHYVE_TINY_BOX, else made by boxes/tiny/box.sh."""
    if os.environ.get("XHYVE_TINY_BOX"):
        return pathlib.Path(os.environ["XHYVE_TINY_BOX"])
    out = tmp_path_factory.mktemp("tinybox") / "tiny.box"
    subprocess.run([str(ROOT / "boxes/tiny/box.sh"), str(out)], check=True)
    return out


class Rpc:
    """The provider daemon of one XHYVE_HOME, started by us (and stopped at the end), with a
    minimal newline-delimited JSON-RPC client."""

    def __init__(self, provider_bin, home):
        self.home = home
        self.sock = home / "provider.sock"
        self.log = home.parent / "provider-serve.log"
        self.proc = subprocess.Popen([str(provider_bin), "serve", "--home", str(home)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert self.proc.poll() is None, f"serve exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, "the daemon did not listen"
            time.sleep(0.05)

    def call(self, method, params=None, timeout=120):
        """The result; the notifications that came first are in self.notes."""
        self.notes = []
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock))
            s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                  "params": params or {}}).encode() + b"\n")
            f = s.makefile("rb")
            while True:
                line = f.readline()
                assert line, f"{method}: the daemon closed the connection"
                m = json.loads(line)
                if "id" not in m:
                    self.notes.append(m)
                else:
                    assert "error" not in m, f"{method}: {m['error']}"
                    return m["result"]

    def close(self):
        """Destroys what is left (after noting it) and stops the daemon."""
        try:
            left = self.call("machine.list")
            for m in left:
                self.call("machine.destroy", {"id": m["id"], "force": True})
            return left
        finally:
            self.proc.terminate()
            self.proc.wait(10)


class Packer:
    """Runs the real Packer with the plugin from PACKER_PLUGIN_PATH, in a scratch directory."""

    def __init__(self, bin, plugins, work):
        self.bin, self.work = bin, work
        self.env = dict(os.environ, PACKER_PLUGIN_PATH=str(plugins), CHECKPOINT_DISABLE="1",
                        PACKER_CONFIG_DIR=str(work / "config"), PACKER_CACHE_DIR=str(work / "cache"),
                        PACKER_LOG="1", PACKER_LOG_PATH=str(work / "packer.log"))

    def run(self, *args, timeout=None):
        return subprocess.run([str(self.bin), *args], cwd=self.work, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def start(self, *args):
        """A run in its own process group, as in a terminal (where Ctrl-C reaches every
        process of the group), output to work/out.txt."""
        out = open(self.work / "out.txt", "w")
        return subprocess.Popen([str(self.bin), *args], cwd=self.work, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def interrupt(self, proc):
        os.killpg(proc.pid, signal.SIGINT)

    def log_tail(self, n=6000):
        p = self.work / "packer.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""


@pytest.fixture
def packer(tmp_path):
    bin = pathlib.Path(os.environ.get("PACKER_BIN", "/var/cache/xhyve-rs/packer/v1.9.4/packer"))
    assert bin.is_file(), f"{bin} missing: packer-plugin/build-packer.sh builds it (tests/run does)"
    plugins = pathlib.Path(os.environ.get("XHYVE_PACKER_PLUGINS", ROOT / "target/packer-plugins"))
    assert (plugins / "packer-plugin-xhyve").is_file(), \
        f"{plugins}/packer-plugin-xhyve missing: go build it (tests/run does)"
    work = tmp_path / "packer"
    work.mkdir()
    return Packer(bin, plugins, work)


def hcl_template(source, provisioners=""):
    """An HCL2 template: one `source "xhyve" "tiny"` with the given attributes (JSON-quoted
    values are valid HCL strings) and a build with those provisioners."""
    attrs = "\n".join(f"  {k} = {json.dumps(v)}" for k, v in source.items())
    return (f'source "xhyve" "tiny" {{\n{attrs}\n}}\n\n'
            f'build {{\n  sources = ["source.xhyve.tiny"]\n{provisioners}}}\n')
