"""Helpers and fixtures of the Packer tests: a real Packer (packer-plugin/build-packer.sh) that
finds the real plugin through PACKER_PLUGIN_PATH, and the real provider daemon on a temporary
XHYVE_HOME (provider_util's Daemon)."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests/provider"))
from provider_util import Daemon  # noqa: E402


@pytest.fixture
def rpc(provider_bin, tmp_path):
    """The daemon of the test's XHYVE_HOME; at the end every machine left is destroyed with
    force (no VMM outlives the test), then the daemon stops."""
    d = Daemon(provider_bin, tmp_path / "home")
    yield d
    try:
        for m in d.call("machine.list"):
            d.call("machine.destroy", {"id": m["id"], "force": True})
    finally:
        d.stop()


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
