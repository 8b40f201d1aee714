"""Helpers and fixtures of the Vagrant end-to-end tests: Debian's real `vagrant` with the
vagrant-xhyve gem built from ruby-shim/, a VAGRANT_HOME (with this slow host's timeouts in its
Vagrantfile) and an XHYVE_HOME per test (the shim starts the daemon there), and a catalog of the
tiny box served on 127.0.0.1."""

import functools
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from guest import BOOT_TIMEOUT

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests/provider"))
from provider_util import Conn  # noqa: E402

SHIM = ROOT / "ruby-shim"
# A vagrant command that boots waits up to BOOT_TIMEOUT for SSH, then runs Vagrant's own SSH
# commands, each of which costs tens of seconds on a busy nested host.
BOOT_CMD_TIMEOUT = BOOT_TIMEOUT + 900
CMD_TIMEOUT = 900


@pytest.fixture(scope="session")
def vagrant_gem(tmp_path_factory):
    assert shutil.which("vagrant"), "vagrant is missing: apt-get install vagrant (.ci/run does)"
    out = tmp_path_factory.mktemp("gem") / "vagrant-xhyve.gem"
    subprocess.run(["gem", "build", "vagrant-xhyve.gemspec", "--output", str(out)], cwd=SHIM,
                   check=True, capture_output=True)
    return out


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def box_catalog(tiny_box_file, tmp_path):
    """Serves the tiny box with a Vagrant catalog naming it (xhyve/tiny 1.0.0) on 127.0.0.1;
    yields the catalog's URL. Vagrant asks with HEAD, then GET (http.server answers both). Vagrant
    2.3 does not resolve relative URLs in catalogs: the box's URL is absolute."""
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(tiny_box_file, www / "tiny.box")
    handler = functools.partial(QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    (www / "tiny.json").write_text(json.dumps({
        "name": "xhyve/tiny",
        "versions": [{"version": "1.0.0", "providers": [
            {"name": "xhyve", "url": f"{url}/tiny.box", "checksum_type": "sha256",
             "checksum": hashlib.sha256(tiny_box_file.read_bytes()).hexdigest()}]}]}))
    yield f"{url}/tiny.json"
    httpd.shutdown()
    httpd.server_close()


class Vagrant:
    """`vagrant` in a project directory, with its own VAGRANT_HOME and XHYVE_HOME."""

    def __init__(self, root, gem):
        self.root = root
        self.project = root / "project"
        self.project.mkdir()
        self.xhyve_home = root / "xhyve"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "XHYVE_"))}
        self.env.update(VAGRANT_HOME=str(root / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1",
                        XHYVE_HOME=str(self.xhyve_home))
        # Offline: any request to a gem server would go to a closed port and fail.
        offline = dict(self.env, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
        p = subprocess.run(["vagrant", "plugin", "install", str(gem), "--plugin-clean-sources"],
                           cwd=self.project, env=offline, capture_output=True, text=True,
                           timeout=CMD_TIMEOUT)
        assert p.returncode == 0 and "Installed the plugin 'vagrant-xhyve" in p.stdout, p
        # This host's settings, in the Vagrantfile Vagrant loads from VAGRANT_HOME after the
        # box's and before the project's: guests boot slowly here, and key exchanges with them
        # take longer than Vagrant's 15 s.
        (root / "vagrant.d/Vagrantfile").write_text(f"""Vagrant.configure("2") do |config|
  config.vm.boot_timeout = {int(BOOT_TIMEOUT)}
  config.ssh.connect_timeout = 120
end
""")

    def vagrantfile(self, text):
        (self.project / "Vagrantfile").write_text(text)

    def run(self, *args, timeout=CMD_TIMEOUT, ok=True, env=None):
        p = subprocess.run(["vagrant", *args], cwd=self.project, env=dict(self.env, **(env or {})),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        if ok:
            assert p.returncode == 0, (
                f"vagrant {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
                f"{self.machine_logs()}")
        return p

    def state(self):
        """The machine's state as `vagrant status --machine-readable` gives it."""
        out = self.run("status", "--machine-readable").stdout
        return next(line.split(",")[3] for line in out.splitlines() if ",state," in line)

    def ssh_config(self):
        out = self.run("ssh-config").stdout
        return dict(line.strip().split(" ", 1) for line in out.splitlines()[1:] if line.strip())

    def daemon(self):
        """A connection to the daemon the shim started, None when none runs."""
        try:
            return Conn(self.xhyve_home / "provider.sock")
        except OSError:
            return None

    def call(self, method, params=None):
        c = self.daemon()
        assert c, "no xhyve-provider daemon runs"
        try:
            resp, _ = c.request(method, params or {})
        finally:
            c.close()
        assert "result" in resp, resp
        return resp["result"]

    def machine_logs(self):
        out = ""
        for d in sorted((self.xhyve_home / "machines").glob("*")):
            for name in ("console.log", "vmm.log"):
                if (d / name).exists():
                    out += f"\n--- {d.name}/{name}:\n{(d / name).read_text(errors='replace')[-3000:]}"
        return out

    def close(self):
        """Kills what the shim left running: machines (force destroy), then the daemon."""
        c = self.daemon()
        if not c:
            return
        c.close()
        for m in self.call("machine.list"):
            self.call("machine.destroy", {"id": m["id"], "force": True})
        os.kill(self.call("provider.info")["pid"], signal.SIGTERM)


@pytest.fixture
def vagrant(vagrant_gem, tmp_path):
    v = Vagrant(tmp_path, vagrant_gem)
    yield v
    v.close()
