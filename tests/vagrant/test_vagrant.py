"""The vagrant-xhyve gem end to end: Debian's `vagrant` drives the real daemon and the tiny guest.
One machine's life takes three boots (up, reload, up after halt); the rest needs none: suspend,
resume and snapshot restores carry on from saved states."""

import json
import os
import pathlib
import pty
import select
import socket
import subprocess
import tarfile
import time

from vagrant_util import BOOT_CMD_TIMEOUT, ROOT

def vagrantfile(provider_bin, xhyve_bin, body="", provider=""):
    """A Vagrantfile naming the tiny box: what the box needs (no bash, no sudo, no rsync, a home
    made anew at each boot) comes from the box's own Vagrantfile (boxes/tiny/Vagrantfile)."""
    return f"""Vagrant.configure("2") do |config|
  config.vm.box = "xhyve/tiny"
{body}
  config.vm.provider :xhyve do |x|
    x.provider_bin = "{provider_bin}"
    x.xhyve_bin = "{xhyve_bin}"
{provider}  end
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_banner(port):
    """dropbear answers once the client has sent its own identification."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"SSH-2.0-probe\r\n")
        return s.recv(64)


def run_answering(v, args, answer, timeout=300):
    """Runs vagrant on a terminal (it asks only there) and answers its [y/N] question."""
    master, slave = pty.openpty()
    p = subprocess.Popen(["vagrant", *args], cwd=v.project, env=dict(v.env, TERM="dumb"),
                         stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out, answered, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: vagrant exited and closed the terminal
                break
            out += data
            if not answered and b"[y/N]" in out:
                os.write(master, answer)
                answered = True
        return p.wait(timeout=60), out.decode(errors="replace")
    finally:
        p.kill()
        os.close(master)


def guest(v, command):
    """One command in the guest (its /tmp is RAM: only a saved state keeps what is there)."""
    return v.run("ssh", "-c", command).stdout.strip()


def suspend_resume_and_snapshots(v, probe, times):
    """On the running machine: suspend, resume and up of a suspended machine, then snapshot
    save, push, pop, restore, list and delete. Every resume is of the same guest: what it kept
    in RAM is there. Few vagrant commands: each costs seconds of Ruby here."""
    guest(v, "echo kept > /tmp/suspended")
    v.run("suspend")
    out = v.run("status").stdout
    assert "saved (xhyve)" in out and "The machine is suspended" in out, out
    t = time.monotonic()
    out = v.run("resume", timeout=BOOT_CMD_TIMEOUT).stdout
    times["resume"] = time.monotonic() - t
    assert "Resuming the machine from its saved state" in out and "Machine booted and ready!" in out, out
    assert guest(v, "cat /tmp/suspended") == "kept"
    assert ssh_banner(probe).startswith(b"SSH-2.0-dropbear"), "the forwarded port after a resume"
    assert "The machine is not suspended." in v.run("resume").stdout

    v.run("suspend")
    out = v.run("up", timeout=BOOT_CMD_TIMEOUT).stdout
    assert "Resuming the machine from its saved state" in out and "Machine already provisioned" in out, out
    assert guest(v, "cat /tmp/suspended; echo one > /tmp/snap") == "kept"
    out = v.run("snapshot", "save", "one").stdout
    assert "Snapshot saved!" in out, out
    guest(v, "echo two > /tmp/snap")
    v.run("snapshot", "push")
    names = v.run("snapshot", "list").stdout.split()
    assert "one" in names and any(n.startswith("push_") for n in names), names
    guest(v, "echo three > /tmp/snap")
    out = v.run("snapshot", "pop", timeout=BOOT_CMD_TIMEOUT).stdout
    assert "Machine booted and ready!" in out, out
    assert guest(v, "cat /tmp/snap") == "two", "pop restores the pushed snapshot"
    names = v.run("snapshot", "list").stdout.split()
    assert "one" in names and not any(n.startswith("push_") for n in names), ("pop deletes it", names)
    t = time.monotonic()
    v.run("snapshot", "restore", "one", timeout=BOOT_CMD_TIMEOUT)
    times["snapshot_restore"] = time.monotonic() - t
    assert guest(v, "cat /tmp/snap /tmp/suspended").split() == ["one", "kept"]
    v.run("snapshot", "delete", "one")
    assert "No snapshots have been taken yet!" in v.run("snapshot", "list").stdout


def test_machine_life(vagrant, provider_bin, xhyve_bin, box_catalog):
    """Three boots: up, reload, then up again with a Vagrantfile that only names the box."""
    v = vagrant
    times = {}
    out = v.run("box", "add", box_catalog).stdout
    assert "Successfully added box 'xhyve/tiny' (v1.0.0) for 'xhyve'" in out, out

    probe = free_port()
    v.vagrantfile(vagrantfile(provider_bin, xhyve_bin, f"""
  config.vm.hostname = "xhyve-e2e"
  config.vm.network "forwarded_port", guest: 22, host: {probe}, id: "probe"
  config.vm.provision "shell", privileged: false, upload_path: "/home/vagrant/vagrant-shell",
    inline: "echo provisioned as $(id -un) on $(hostname)"
""", '    x.memory = "256M"\n'))

    t = time.monotonic()
    out = v.run("up", "--provider=xhyve", timeout=BOOT_CMD_TIMEOUT).stdout
    times["up"] = time.monotonic() - t
    assert "Machine booted and ready!" in out, out
    assert "provisioned as vagrant on xhyve-e2e" in out, out
    assert "Handing box 'xhyve/tiny' (v1.0.0) to xhyve-provider" in out, out
    assert "Inserting generated public key" not in out, "the box says insert_key = false"
    assert [(b["name"], b["version"]) for b in v.call("box.list")] == [("xhyve/tiny", "1.0.0")]
    assert v.state() == "running"

    p = v.run("ssh", "-c", "uname -a")
    assert p.stdout.startswith("Linux xhyve-e2e "), p.stdout
    assert ssh_banner(probe).startswith(b"SSH-2.0-dropbear"), "the forwarded port reaches sshd"
    cfg = v.ssh_config()
    assert cfg["HostName"] == "127.0.0.1" and cfg["User"] == "vagrant", cfg
    assert os.path.isfile(cfg["IdentityFile"]), cfg

    rc, out = run_answering(v, ["destroy"], b"n\n")
    assert rc == 1 and "will not be destroyed" in out, out  # 1: every machine declined
    assert v.state() == "running"

    t = time.monotonic()
    p = v.run("provision", env={"VAGRANT_LOG": "info"})
    times["provision"] = time.monotonic() - t
    assert "provisioned as vagrant on xhyve-e2e" in p.stdout, p.stdout
    # The box's communicator (xhyve_ssh) keeps its one connection through the provisioner's
    # upload and run: Vagrant's own check (an empty command within 5 s) dropped it at every step.
    assert p.stderr.count("Attempting SSH connection...") == 1, p.stderr[-5000:]
    assert "Connection errored, not re-using" not in p.stderr, p.stderr[-5000:]

    suspend_resume_and_snapshots(v, probe, times)

    # A file in the guest's RAM (the tiny box runs from its initramfs) is gone after a real
    # restart, be it a boot or a fast start from the box's saved boot (whose uptime goes on from
    # the saved one's, so uptime cannot tell).
    v.run("ssh", "-c", "echo before > /tmp/before-reload")
    t = time.monotonic()
    v.run("reload", timeout=BOOT_CMD_TIMEOUT)
    times["reload"] = time.monotonic() - t
    out = v.run("ssh", "-c", "[ -e /tmp/before-reload ] && echo kept || echo restarted").stdout
    assert out.strip() == "restarted", f"no restart during reload: {out}"

    out = v.run("halt").stdout
    assert "powered off" in out, out
    assert v.state() == "stopped"

    # A Vagrantfile that only names the box (and where the provider is): the box's Vagrantfile
    # does the rest. Vagrant's inserted-key file (here the insecure key's copy: the tiny guest
    # cannot keep another) is what the shim has the provider log in with.
    v.vagrantfile(vagrantfile(provider_bin, xhyve_bin))
    inserted = v.project / ".vagrant/machines/default/xhyve/private_key"
    inserted.write_bytes(pathlib.Path(cfg["IdentityFile"]).read_bytes())
    inserted.chmod(0o600)
    t = time.monotonic()
    out = v.run("up", timeout=BOOT_CMD_TIMEOUT).stdout
    times["up_again"] = time.monotonic() - t
    assert "Machine booted and ready!" in out, out
    assert "Machine already provisioned" in out, out
    assert f", key {inserted}" in out, out
    again = v.ssh_config()
    assert (again["HostName"], again["Port"]) == (cfg["HostName"], cfg["Port"]), (cfg, again)
    assert again["IdentityFile"] == str(inserted), again
    p = v.run("ssh", "-c", "uname -a")
    assert p.stdout.startswith("Linux xhyve-e2e "), "the hostname is the machine's: " + p.stdout
    out = v.run("halt").stdout
    assert "powered off" in out, out
    assert v.state() == "stopped"

    # package writes the machine's boot files and the box's Vagrantfile as a box Vagrant can add.
    out = v.run("package", "--output", "pkg.box").stdout
    assert "package: " in out and " MiB done" in out, "the provider's progress is shown"
    assert v.state() == "stopped"
    pkg = v.project / "pkg.box"
    with tarfile.open(pkg) as t:
        names = t.getnames()
        meta = t.extractfile("metadata.json").read()
        box_vagrantfile = t.extractfile("Vagrantfile").read()
    assert {"metadata.json", "vmlinux", "initrd.img", "Vagrantfile"} <= set(names), names
    assert json.loads(meta)["provider"] == "xhyve", meta
    assert box_vagrantfile == (ROOT / "boxes/tiny/Vagrantfile").read_bytes()
    out = v.run("box", "add", "--name", "xhyve/pkg", str(pkg)).stdout
    assert "Successfully added box 'xhyve/pkg'" in out, out

    v.run("destroy", "-f")
    assert v.state() == "not_created"
    assert v.call("machine.list") == [], "the provider's machine is gone too"
    print(f"vagrant timings (s): { {k: round(x, 1) for k, x in times.items()} }")


def test_bad_values_are_explained(vagrant, provider_bin, xhyve_bin):
    v = vagrant
    v.vagrantfile(vagrantfile(provider_bin, xhyve_bin, provider="""
    x.cpus = 0
    x.memory = "lots"
    x.network_mode = "bridged"
    x.firmware = "bios"
    x.disks = [{size: "10G"}, {path: "disk.img"}]
"""))
    expected = [
        "There are errors in the configuration of this machine",
        "xhyve provider:",
        "* cpus: 0 is not a number of vCPUs from 1 to 255",
        '* memory: "lots" is not a size',
        '* network_mode: "bridged" is not one of user, shared',
        '* firmware: "bios" is not one of kexec (the box\'s kernel and initrd), efi (UEFI firmware',
        "* disks[1]: {:path=>\"disk.img\"}: path is not an absolute path",
    ]
    for args in (["validate"], ["up", "--provider=xhyve"]):
        p = v.run(*args, ok=False)
        assert p.returncode == 1, p
        for line in expected:
            assert line in p.stderr, (args, p.stderr)
        assert "disks[0]" not in p.stderr, p.stderr
    assert not v.xhyve_home.exists(), "validation fails before the shim calls the provider"


def test_private_network_multi_machine(vagrant, provider_bin, xhyve_bin, box_catalog):
    """Two machines with private_network static addresses (one boot each, in parallel; the guest
    has no configure_networks, so its DHCP client takes them as fixed leases): `vagrant ssh NAME`
    reaches NAME's guest, they reach each other (TCP both ways), a forwarded port whose host port
    is taken moves elsewhere (auto_correct), `vagrant port` lists the forwards as they are, and
    destroy removes the network with the last machine."""
    v = vagrant
    v.run("box", "add", box_catalog)
    held = socket.create_server(("127.0.0.1", 0))  # a host port that is taken during `up`
    taken = held.getsockname()[1]
    # Names with a letter outside 0-9a-f: Vagrant reads a name given to its commands first as the
    # prefix of a global machine id (random hex, `vagrant global-status`), so with machines "a"
    # and "b", `vagrant ssh a` reached b whenever b's id began with "a" (about 1 run in 16 each way).
    v.vagrantfile(vagrantfile(provider_bin, xhyve_bin, f"""
  config.vm.define "one" do |m|
    m.vm.network "private_network", ip: "192.168.56.10"
    m.vm.network "forwarded_port", guest: 7080, host: {taken}, auto_correct: true
  end
  config.vm.define "two" do |m|
    m.vm.network "private_network", ip: "192.168.56.11"
  end
"""))
    t = time.monotonic()
    try:
        out = v.run("up", "--provider=xhyve", timeout=BOOT_CMD_TIMEOUT).stdout
    finally:
        held.close()
    up = time.monotonic() - t
    assert out.count("Machine booted and ready!") == 2, out
    assert f"Fixed port collision for 7080 => {taken}" in out, out
    # The tiny box's guest (:xhyve_tiny, a Linux) has no configure_networks: its addresses come by DHCP alone.
    assert out.count("has no configure_networks capability") == 2, out
    nets = v.call("network.list")
    assert [(n["name"], n["subnet"]) for n in nets] == [("vagrant-192.168.56.0-24", "192.168.56.0/24")], nets
    assert sorted(lease["ip"] for lease in nets[0]["leases"]) == ["192.168.56.10", "192.168.56.11"], nets

    def guest(name):
        # Who answers `vagrant ssh NAME`: its host name (the identity step makes it of the
        # machine's name), MACs and eth1's address, which the tiny box leases in the background
        # after SSH is up (waited for).
        out = v.run("ssh", name, "-c", "hostname; cat /sys/class/net/eth0/address /sys/class/net/eth1/address; "
                    "for i in $(seq 120); do [ -s /run/dhcp-ip.eth1 ] && break; sleep 1; done; "
                    "cat /run/dhcp-ip.eth1").stdout.split()
        return {"hostname": out[0], "macs": out[1:3], "eth1": out[3] if len(out) > 3 else None}

    seen = {name: guest(name) for name in ("one", "two")}

    def vagrant_side(name):
        conf = dict(line.split(None, 1) for line in v.run("ssh-config", name).stdout.splitlines() if line.strip())
        index_id = (v.project / f".vagrant/machines/{name}/xhyve/index_uuid").read_text()
        return f"Vagrant's global id {index_id}, ssh-config Host {conf['Host']} Port {conf['Port']}"

    # A string, so pytest shows it whole: what tells a wrong machine from a wrong address.
    why = "\n".join([*(f"{n}: {vagrant_side(n)}; guest {g}" for n, g in seen.items()), f"leases {nets[0]['leases']}"])
    assert [(g["hostname"], g["eth1"]) for g in seen.values()] == [
        ("project-one", "192.168.56.10"), ("project-two", "192.168.56.11")], why
    for server, client, ip, port in (("two", "one", "192.168.56.11", 7001), ("one", "two", "192.168.56.10", 7002)):
        listen = f"until [ -s /tmp/in ]; do nc -l -p {port} >>/tmp/in; done"  # until data came
        v.run("ssh", server, "-c", f"setsid sh -c '{listen}' </dev/null >/dev/null 2>&1 &")
        v.run("ssh", client, "-c", f"for i in 1 2 3 4 5; do echo from-{client} | nc -w 30 {ip} {port} "
              "&& exit 0; sleep 1; done; exit 1")
        got = v.run("ssh", server, "-c", "for i in $(seq 40); do [ -s /tmp/in ] && break; sleep 0.5; done; "
                    "cat /tmp/in").stdout.strip()
        assert got == f"from-{client}", (server, got)

    out = v.run("port", "one").stdout
    moved = [line for line in out.splitlines() if "7080 (guest) =>" in line]
    assert len(moved) == 1 and "22 (guest) =>" in out, out
    port = int(moved[0].split("=>")[1].split()[0])
    assert port != taken, out
    # The guest answers on the moved port: a service that speaks first.
    v.run("ssh", "one", "-c", "setsid sh -c 'echo hello-7080 | nc -l -p 7080' </dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                got = c.recv(64)
            if got or time.monotonic() > deadline:
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)
    assert got.strip() == b"hello-7080", got

    v.run("destroy", "-f", "one")
    assert [n["name"] for n in v.call("network.list")] == ["vagrant-192.168.56.0-24"], "two still uses it"
    v.run("destroy", "-f", "two")
    assert v.call("network.list") == [], "the last machine's destroy removes the network"
    print(f"vagrant private network: up of two machines {up:.1f} s")


def test_taken_port_without_auto_correct_stops_up(vagrant, provider_bin, xhyve_bin, box_catalog):
    """A forwarded port whose host port is taken, without auto_correct: Vagrant's collision error,
    before the machine starts (no boot)."""
    v = vagrant
    v.run("box", "add", box_catalog)
    with socket.create_server(("127.0.0.1", 0)) as held:
        taken = held.getsockname()[1]
        v.vagrantfile(vagrantfile(provider_bin, xhyve_bin,
                                  f'  config.vm.network "forwarded_port", guest: 80, host: {taken}\n'))
        p = v.run("up", "--provider=xhyve", ok=False)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Vagrant cannot forward the specified ports on this VM" in p.stderr, p.stderr
    assert f"The forwarded port to {taken} is already in use" in p.stderr.replace("\n", " "), p.stderr
    [m] = v.call("machine.list")
    assert m["state"] == "stopped" and m["forwarded_ports"][0]["host"] == taken, m
    v.run("destroy", "-f")


def test_public_network_is_refused(vagrant, provider_bin, xhyve_bin):
    v = vagrant
    v.vagrantfile(vagrantfile(provider_bin, xhyve_bin, '  config.vm.network "public_network"\n'))
    for args in (["validate"], ["up", "--provider=xhyve"]):
        p = v.run(*args, ok=False)
        assert p.returncode == 1 and "public_network is not supported by xhyve" in p.stderr, (args, p.stderr)
    assert not v.xhyve_home.exists(), "refused before the shim calls the provider"


def test_guest_panic_fails_up_and_shows_in_status(vagrant, provider_bin, xhyve_bin, box_catalog):
    """A guest kernel that panics (its init does not exist): `vagrant up` fails once xhyve ends
    (pvpanic), with the shim's error quoting the console's last lines instead of an SSH timeout
    after boot_timeout; `vagrant status` shows the machine aborted with the same lines."""
    v = vagrant
    v.run("box", "add", box_catalog)
    v.vagrantfile(vagrantfile(provider_bin, xhyve_bin, provider='    x.cmdline = "console=ttyS0 rdinit=/nope init=/nope"\n'))
    t = time.monotonic()
    p = v.run("up", "--provider=xhyve", ok=False, timeout=BOOT_CMD_TIMEOUT)
    took = time.monotonic() - t
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert ("The machine's VMM ended before the guest answered SSH: the machine is aborted: "
            "the guest kernel panicked (exit status 6); its console ended with:\n") in p.stderr, p.stderr
    assert "Kernel panic - not syncing:" in p.stderr, p.stderr
    assert v.state() == "aborted"
    out = v.run("status").stdout
    assert "aborted (xhyve)" in out and "the guest kernel panicked (exit status 6)" in out, out
    assert "Kernel panic - not syncing:" in out, out
    v.run("destroy", "-f")
    assert v.call("machine.list") == []
    print(f"vagrant up of a panicking guest failed after {took:.1f} s:\n{p.stderr}\n{out}")
