"""The Debian 12 box (boxes/debian12) through the real provider: the box is built (cached) with
boxes/debian12/box.sh, added, and ONE machine is created with a larger disk and booted; every
test below checks something on that one guest. A Debian guest takes minutes to boot on a nested
host, so the checks share it (module-scoped fixture) and most read one collected report.
"""

import hashlib
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests/provider"))
from provider_util import Daemon  # noqa: E402

# Boot on a busy nested host (other guests and compilers beside it): generous, never asserted.
BOOT_TIMEOUT = float(os.environ.get("XHYVE_DEBIAN_BOOT_TIMEOUT", "2700"))
# Where the machines' consoles are: tests/boxes/conftest.py looks there for guest crashes.
CRASH_DIRS = []
# A cold build (debootstrap, a kernel) takes 15-40 minutes here; a cached one seconds.
BUILD_TIMEOUT = 4 * 3600
EXEC_TIMEOUT = 900
DISK_SIZE = 6 << 30
ESP_END = 129 << 20  # boxes/debian12/build.sh: 1 MiB GPT, then a 128 MiB ESP, then the root
INSECURE_KEY = ROOT / "boxes/tiny/vagrant.key"
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=60", "-o", "LogLevel=ERROR"]


def machine_id_of(mid):
    """The guest's /etc/machine-id for provider machine `mid` (xhyve-identity-step's rule)."""
    return hashlib.sha256(mid.encode()).hexdigest()[:32]


class Machine:
    """The booted machine: provider calls, machine.exec, and plain ssh/rsync with any key."""

    def __init__(self, daemon, mid, home):
        self.daemon, self.id, self.home = daemon, mid, home
        self.dir = home / "machines" / mid
        self.info = None

    def call(self, method, params, timeout=120):
        resp, notes = self.daemon.call_full(method, dict(params, id=self.id), timeout)
        assert "result" in resp, f"{method}: {resp}\n{self.console_tail()}"
        return resp["result"], notes

    def exec(self, command):
        """(exit status, stdout, stderr) of a command run through machine.exec."""
        result, notes = self.call("machine.exec", {"command": command}, EXEC_TIMEOUT)
        out = {"stdout": "", "stderr": ""}
        for n in notes:
            if n.get("method") == "output":
                out[n["params"]["stream"]] += n["params"]["data"]
        return result["exit_status"], out["stdout"], out["stderr"]

    def ssh_argv(self, key):
        return ["ssh", *SSH_OPTS, "-i", str(key), "-p", str(self.info["port"]),
                f"vagrant@{self.info['host']}"]

    def ssh(self, key, command):
        return subprocess.run([*self.ssh_argv(key), command], capture_output=True, text=True,
                              timeout=EXEC_TIMEOUT)

    def console(self):
        p = self.dir / "console.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def console_tail(self, n=4000):
        return f"--- console.log (end):\n{self.console()[-n:]}"


@pytest.fixture(scope="module")
def debian_box_file():
    """boxes/debian12/box.sh into target/boxes (cached: seconds when nothing changed)."""
    out = pathlib.Path(os.environ.get("XHYVE_DEBIAN12_BOX", ROOT / "target/boxes/debian12.box"))
    p = subprocess.run([str(ROOT / "boxes/debian12/box.sh"), str(out)], capture_output=True,
                       text=True, timeout=BUILD_TIMEOUT)
    assert p.returncode == 0, f"box.sh failed:\n{p.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def debian(provider_bin, debian_box_file, tmp_path_factory):
    assert (provider_bin.parent / "xhyve").is_file(), "xhyve next to xhyve-provider: build it"
    home = tmp_path_factory.mktemp("debian12") / "home"
    CRASH_DIRS.append(home)
    daemon = Daemon(provider_bin, home)
    m = None
    try:
        # Added as `vagrant box add CATALOG` adds it: through the catalog boxes/catalog.sh writes.
        catalog = home.parent / "debian12.json"
        subprocess.run([str(ROOT / "boxes/catalog.sh"), str(catalog), "xhyve/debian12", "12.0.0",
                        str(debian_box_file)], check=True, timeout=600)
        r, _ = daemon.call_full("box.add", {"source": str(catalog)}, 1800)
        assert "result" in r, r
        assert (r["result"]["name"], r["result"]["version"]) == ("xhyve/debian12", "12.0.0"), r
        with open(debian_box_file, "rb") as f:
            assert r["result"]["checksum"] == hashlib.file_digest(f, "sha256").hexdigest(), r
        created = daemon.call("machine.create", {"box": "xhyve/debian12", "name": "debian",
                                                 "disk_size": DISK_SIZE})
        m = Machine(daemon, created["id"], home)
        t0 = time.monotonic()
        m.call("machine.start", {})
        resp, _ = daemon.call_full("machine.wait_ssh", {"id": m.id, "timeout": BOOT_TIMEOUT},
                                   BOOT_TIMEOUT + 120)
        assert "result" in resp, f"no SSH: {resp}\n{m.console_tail()}"
        print(f"debian12: SSH {time.monotonic() - t0:.0f} s after machine.start")
        m.info = daemon.call("machine.ssh_info", {"id": m.id})
        yield m
    finally:
        try:
            for mm in daemon.call("machine.list"):
                daemon.call("machine.destroy", {"id": mm["id"], "force": True})
        finally:
            daemon.stop()


@pytest.fixture(scope="module")
def report(debian):
    """One login collects what most checks read: sections "== NAME" with a command's output."""
    script = r"""
sec() { echo "== $1"; }
sec user; id -un
sec sudo; sudo -n true && echo sudo-ok
sec pid1; cat /proc/1/comm; readlink /proc/1/exe
sec state; systemctl is-system-running --wait
sec failed; systemctl list-units --failed --no-legend --plain
sec rsync; rsync --version | head -n 1
sec rootsize; df -B1 --output=size / | tail -n 1
sec rootpart; lsblk -bnro NAME,SIZE,START /dev/vda2 2>/dev/null || lsblk -bnro NAME,SIZE /dev/vda2
sec disk; lsblk -bdnro SIZE /dev/vda
sec eth0; ip -4 -o addr show dev eth0
sec lease; cat /run/systemd/netif/leases/* 2>&1
sec routes; ip -4 route
sec policy; apt-cache policy openssh-server
sec simulate; apt-get -s install hello
sec kernel; uname -r
sec cloud; dpkg-query -W -f='${Status} ${Version}\n' linux-image-cloud-amd64; ls /boot
sec machineid; cat /etc/machine-id
sec hostkeys; ls /etc/ssh/
sec hostkey; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub
sec hostname; hostname; cat /etc/hostname; getent hosts "$(hostname)"
sec identity; systemctl is-active xhyve-identity.service
sec identitylog; journalctl -m -o short-monotonic -u xhyve-identity.service --no-pager
sec journaldirs; ls /var/log/journal
sec sessions; loginctl list-sessions --no-legend
sec end
"""
    status, out, err = debian.exec(script)
    assert status == 0, (status, out, err)
    sections, name = {}, None
    for line in out.splitlines():
        if line.startswith("== "):
            name = line[3:]
            sections[name] = []
        elif name:
            sections[name].append(line)
    assert "end" in sections, out
    return {k: "\n".join(v) for k, v in sections.items()}


def test_ssh_as_vagrant_with_the_insecure_key(debian, report):
    assert report["user"] == "vagrant"
    p = debian.ssh(INSECURE_KEY, "id -un; echo $SHELL")
    assert p.returncode == 0 and p.stdout.split() == ["vagrant", "/bin/bash"], p


def test_passwordless_sudo(report):
    assert report["sudo"] == "sudo-ok"


def test_systemd_running_and_no_failed_units(report):
    assert report["pid1"].split() == ["systemd", "/usr/lib/systemd/systemd"], report["pid1"]
    assert report["failed"] == "", report["failed"]
    assert report["state"] == "running", report


def test_root_grew_to_the_disk_size(report):
    assert int(report["disk"]) == DISK_SIZE
    part = report["rootpart"].split()
    # The root partition runs from after the ESP to the end of the disk (less the backup GPT).
    assert part[0] == "vda2" and DISK_SIZE - ESP_END - (1 << 20) <= int(part[1]), part
    # ext4 (less its metadata) fills the partition: far above the box's 3.7 GiB.
    assert int(report["rootsize"]) > 0.9 * (DISK_SIZE - ESP_END), report["rootsize"]


def test_dhcp_on_the_first_nic(report):
    assert re.search(r"inet 10\.0\.2\.15/\d+ .*dynamic", report["eth0"]), report["eth0"]
    assert "ADDRESS=10.0.2.15" in report["lease"], report["lease"]
    assert "default via 10.0.2.2 dev eth0" in report["routes"], report["routes"]


def test_apt_knows_the_archive_offline(report):
    policy = report["policy"]
    assert re.search(r"Installed: \S+", policy) and "Candidate:" in policy, policy
    assert re.search(r"\d+ https?://\S+ bookworm", policy), policy
    assert "Inst hello " in report["simulate"], report["simulate"]


def test_box_kernel_boots_and_cloud_kernel_is_installed(report):
    assert report["kernel"].endswith("-xhyve"), report["kernel"]
    assert report["cloud"].startswith("install ok installed "), report["cloud"]
    boot = report["cloud"].split()
    assert any(re.fullmatch(r"vmlinuz-.*-cloud-amd64", f) for f in boot), boot
    assert any(re.fullmatch(r"initrd\.img-.*-cloud-amd64", f) for f in boot), boot


def test_machine_made_its_own_identity(report):
    assert re.fullmatch(r"[0-9a-f]{32}", report["machineid"]), report["machineid"]
    keys = report["hostkeys"].split()
    for t in ("rsa", "ecdsa", "ed25519"):
        assert f"ssh_host_{t}_key" in keys and f"ssh_host_{t}_key.pub" in keys, keys


def test_identity_step_at_the_quiet_point(debian, report):
    """The box is a fast_start box: xhyve-identity.service took the identity the provider sent
    (boxes/README.md, "Fast start"): the host name from the machine's name, the machine id from
    its id, and journald restarted under that id."""
    assert report["identity"] == "active", report
    want_id = machine_id_of(debian.id)
    assert report["machineid"] == want_id, (report["machineid"], debian.id)
    assert want_id in report["journaldirs"].split(), report["journaldirs"]
    assert report["hostname"].split()[:2] == ["debian", "debian"], report["hostname"]
    assert re.match(r"127\.0\.1\.1\s+debian$", report["hostname"].splitlines()[2]), report["hostname"]
    log = report["identitylog"]
    m = re.search(r"\[\s*([0-9.]+)\].*identity: machine " + re.escape(debian.id), log)
    assert m, log
    print(f"debian12: identity step done {float(m.group(1)):.0f} s after the guest kernel started")


def test_ssh_login_without_a_logind_session(debian, report):
    """sshd's PAM stack has no pam_systemd (boxes/debian12/customize.sh): a login waits for no
    logind session and no user systemd instance. The time of one login with a command."""
    assert report["sessions"] == "", report["sessions"]
    t0 = time.monotonic()
    p = debian.ssh(INSECURE_KEY, "echo $((6 * 7))")
    assert p.returncode == 0 and p.stdout.strip() == "42", p
    print(f"debian12: one SSH login and command: {time.monotonic() - t0:.1f} s")


def test_rsync_into_the_guest_with_sudo(debian, tmp_path):
    """What Vagrant's rsync synced folder does: rsync over ssh, `sudo rsync` on the guest."""
    src = tmp_path / "project"
    (src / "sub").mkdir(parents=True)
    (src / "Vagrantfile").write_text("Vagrant.configure('2') { }\n")
    (src / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    ssh = " ".join(shlex.quote(a) for a in ["ssh", *SSH_OPTS, "-i", str(INSECURE_KEY),
                                            "-p", str(debian.info["port"])])
    p = subprocess.run(["rsync", "-a", "--delete", "-e", ssh, "--rsync-path", "sudo mkdir -p /vagrant && sudo rsync",
                        f"{src}/", f"vagrant@{debian.info['host']}:/vagrant/"],
                       capture_output=True, text=True, timeout=EXEC_TIMEOUT)
    assert p.returncode == 0, p
    status, out, err = debian.exec("cd /vagrant && sha256sum Vagrantfile sub/data.bin")
    assert status == 0, (out, err)
    want = {f"{hashlib.sha256((src / f).read_bytes()).hexdigest()}  {f}"
            for f in ("Vagrantfile", "sub/data.bin")}
    assert set(out.splitlines()) == want, out


def test_insecure_key_is_replaceable(debian, tmp_path):
    """Vagrant's insert_key: a new authorized_keys replaces the insecure key; then only the new
    key logs in. The insecure key is put back for the tests after this one."""
    key = tmp_path / "new_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vagrant-new", "-f",
                    str(key)], check=True)
    pub = (tmp_path / "new_key.pub").read_text().strip()
    status, out, err = debian.exec(
        f"printf '%s\\n' {shlex.quote(pub)} > ~/.ssh/authorized_keys.new && "
        "chmod 0600 ~/.ssh/authorized_keys.new && mv ~/.ssh/authorized_keys.new ~/.ssh/authorized_keys")
    assert status == 0, (out, err)
    p = debian.ssh(key, "id -un")
    assert p.returncode == 0 and p.stdout.strip() == "vagrant", p
    old = debian.ssh(INSECURE_KEY, "true")
    assert old.returncode == 255 and "Permission denied" in old.stderr, old
    insecure_pub = (ROOT / "boxes/tiny/vagrant.pub").read_text().strip()
    p = debian.ssh(key, f"printf '%s\\n' {shlex.quote(insecure_pub)} >> ~/.ssh/authorized_keys")
    assert p.returncode == 0, p
    assert debian.ssh(INSECURE_KEY, "true").returncode == 0


def test_power_button_powers_off(debian):
    """machine.stop presses the ACPI power button: systemd-logind shuts the guest down cleanly."""
    state, _ = debian.call("machine.stop", {"timeout": 900}, 960)
    assert state["state"] == "stopped", state
    rec = json.loads((debian.dir / "machine.json").read_text())
    assert rec.get("exit_status") == 1, f"{rec.get('exit_reason')}\n{debian.console_tail()}"
    assert "reboot: Power down" in debian.console(), debian.console_tail()


def test_second_machine_has_its_own_identity(debian, report):
    """A second machine of the box (after the first stopped: one Debian guest at a time here)
    starts from the boot the first saved at its quiet point (a fast start: the saved boot's disks
    under its overlay), reaches SSH, runs commands and has its own host name, machine id and SSH
    host key."""
    daemon = debian.daemon
    created = daemon.call("machine.create", {"box": "xhyve/debian12", "name": "debian-two",
                                             "disk_size": DISK_SIZE})
    two = Machine(daemon, created["id"], debian.home)
    t0 = time.monotonic()
    two.call("machine.start", {})
    resp, _ = daemon.call_full("machine.wait_ssh", {"id": two.id, "timeout": BOOT_TIMEOUT},
                               BOOT_TIMEOUT + 120)
    assert "result" in resp, f"no SSH: {resp}\n{two.console_tail()}"
    print(f"debian12: second machine SSH {time.monotonic() - t0:.0f} s after machine.start")
    log = daemon.log.read_text()
    assert f"machine {debian.id}: boot saved to " in log, log[-3000:]
    assert f"machine {two.id}: fast start from " in log and "identity applied" in log, log[-3000:]
    status, out, err = two.exec("hostname; cat /etc/machine-id; "
                                "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub; sudo -n id -un")
    assert status == 0, (status, out, err)
    lines = out.splitlines()
    assert lines[0] == "debian-two", out
    assert lines[1] == machine_id_of(two.id) != report["machineid"], (out, report["machineid"])
    assert lines[2] != report["hostkey"], (out, report["hostkey"])
    assert lines[3] == "root", out
