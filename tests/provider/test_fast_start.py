"""Fast start from a saved boot (provider/API.md "Fast start", boxes/README.md "Fast start") with
the real tiny box, in one home shared by the tests of this file, in order:

- the first machine of the box boots (cold) and saves the box's boot at the quiet point; a
  machine of a box without fast_start boots beside it as it always did (no identity channel);
- two machines started from that saved boot answer SSH with their own MACs, DHCP addresses on a
  named network, SSH host keys, host names and random state, and the user-mode network's address
  from their identity (no DHCP on that NIC);
- a damaged saved boot: the next machine boots normally and saves a new one in its place;
- a resumed machine gets a new clock and RNG seed through the same channel.

Each machine has the user-mode NIC (SSH) and a NIC on the named network "fs", whose DHCP server
gives each MAC its own address."""

import json
import os
import subprocess
import time
import uuid as uuidlib

import pytest

from provider_util import ROOT
from test_machines import MARK, Home, wait_console
from test_private_net import eth1_ip, nic_mac
from test_ssh import exec_, wait_ssh

NICS = ["user", {"network": "fs"}]


@pytest.fixture(scope="module")
def plain_box_file(tiny_box, tmp_path_factory):
    """The tiny box without --fast-start in its metadata."""
    out = tmp_path_factory.mktemp("plainbox") / "plain.box"
    subprocess.run([str(ROOT / "boxes/package.sh"), str(out), str(tiny_box)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def home(provider_bin, tiny_box_file, plain_box_file, tmp_path_factory):
    assert (provider_bin.parent / "xhyve").is_file(), "xhyve next to xhyve-provider: build it"
    h = Home(provider_bin, tmp_path_factory.mktemp("fast") / "home")
    h.uuids, h.times = {}, {}
    try:
        h.call("box.add", {"source": str(tiny_box_file), "name": "xhyve/tiny", "version": "1.0.0"})
        h.call("box.add", {"source": str(plain_box_file), "name": "xhyve/plain", "version": "1.0.0"})
        h.call("network.create", {"name": "fs"})
        yield h
    except BaseException:
        h.print_logs()
        raise
    finally:
        print(f"fast start timings (s): {json.dumps({k: round(v, 1) for k, v in h.times.items()})}")
        h.close()


def create(h, name, box="xhyve/tiny"):
    h.uuids[name] = str(uuidlib.uuid4())
    return h.call("machine.create", {"box": box, "name": name, "uuid": h.uuids[name], "nics": NICS})["id"]


def saved_boots(h):
    return sorted(h.path.glob("boxes/*/*/*/saved-boots/*.snap"))


def run(h, mid, command):
    r, out = exec_(h, mid, command)
    assert r == {"exit_status": 0}, (command, r, out)
    return out["stdout"]


def host_key(h, mid):
    """The ed25519 host key the machine's SSH server shows a client (ssh-keyscan)."""
    info = h.call("machine.ssh_info", {"id": mid})
    out = subprocess.run(["ssh-keyscan", "-T", "30", "-t", "ed25519", "-p", str(info["port"]), info["host"]],
                         capture_output=True, text=True, timeout=60).stdout
    keys = [line.split()[2] for line in out.splitlines() if " ssh-ed25519 " in line]
    assert len(keys) == 1, out
    return keys[0]


def facts(h, mid):
    """What must differ between machines: MACs, eth1's address, host key, host name, random."""
    out = run(h, mid, "cat /sys/class/net/eth0/address /sys/class/net/eth1/address; hostname; "
                      "cat /proc/sys/kernel/random/uuid").split()
    return {"macs": tuple(out[:2]), "ip": eth1_ip(h, mid), "key": host_key(h, mid), "hostname": out[2],
            "random": out[3]}


def test_first_machine_boots_and_saves_the_boot(home):
    h = home
    h.mids = {"first": create(h, "first"), "plain": create(h, "plain", box="xhyve/plain")}
    t0 = time.monotonic()
    for n in ("first", "plain"):
        h.call("machine.start", {"id": h.mids[n]})
    for n in ("first", "plain"):
        wait_ssh(h, h.mids[n])
        h.times[f"cold_{n}_to_ssh"] = time.monotonic() - t0
    # The first machine saved the boot at its quiet point (before it has an address) and went on
    # with its own identity.
    boots = saved_boots(h)
    assert len(boots) == 1 and "/tiny/1.0.0/" in str(boots[0]).replace("xhyve-VAGRANTSLASH-", "/"), boots
    text = wait_console(h, h.mids["first"], rf"{MARK} ssh-ready")
    at = text.index(f"{MARK} identity={h.mids['first']}")
    assert text.index(f"{MARK} date=") < at < text.index(f"{MARK} ready"), text
    assert f"boot saved to {boots[0]}" in h.daemon.log.read_text()
    f = facts(h, h.mids["first"])
    assert f["macs"] == (mac0(h, "first"), nic_mac(h.uuids["first"], 1)), f
    assert f["hostname"] == "first", f
    # The box without fast_start: no identity channel, no identity step, no saved boot.
    plain = h.record(h.mids["plain"])
    assert not plain.get("fast_start") and not any("virtio-console" in a for a in plain["process"]["argv"])
    text = wait_console(h, h.mids["plain"], rf"{MARK} ssh-ready")
    assert "identity" not in text, text
    assert run(h, h.mids["plain"], "echo plain").strip() == "plain"
    assert len(saved_boots(h)) == 1
    h.first = f


def mac0(h, name):
    """The management NIC's MAC: the one `xhyve -U UUID -M` prints."""
    xhyve = h.bin.parent / "xhyve"
    return subprocess.run([str(xhyve), "-U", h.uuids[name], "-M"], capture_output=True, text=True,
                          check=True).stdout.split()[-1]


def test_two_machines_fast_start_with_their_own_identity(home):
    h = home
    assert hasattr(h, "first"), "needs the first machine"
    for n in ("b", "c"):
        h.mids[n] = create(h, n)
    got = {}
    for n in ("b", "c"):
        t0 = time.monotonic()
        h.call("machine.start", {"id": h.mids[n]})
        h.times[f"fast_{n}_start"] = time.monotonic() - t0
        wait_ssh(h, h.mids[n])
        h.times[f"fast_{n}_to_ssh"] = time.monotonic() - t0
    for n in ("b", "c"):
        assert f"machine {h.mids[n]}: fast start from" in h.daemon.log.read_text()
        text = wait_console(h, h.mids[n], rf"{MARK} ssh-ready")
        # Restored after the quiet point: no kernel boot in its console, straight to its identity.
        assert "Linux version" not in text and f"{MARK} identity={h.mids[n]}" in text, text
        # Network user's fixed address came with the identity: eth0 asked no DHCP.
        assert f"{MARK} ip=10.0.2.15 (from the identity)" in text, text
        assert run(h, h.mids[n], "ls /var/log/udhcpc*.log").split() == ["/var/log/udhcpc.eth1.log"]
        got[n] = facts(h, h.mids[n])
        assert got[n]["macs"] == (mac0(h, n), nic_mac(h.uuids[n], 1)), got[n]
        assert got[n]["hostname"] == n, got[n]
    everyone = [h.first, got["b"], got["c"]]
    for k in ("macs", "ip", "key", "random"):
        values = [f[k] for f in everyone]
        assert len(set(values)) == 3, (k, values)
    leases = {lease["mac"]: lease["ip"] for lease in h.call("network.list")[0]["leases"]}
    for n in ("b", "c"):
        assert leases[nic_mac(h.uuids[n], 1)] == got[n]["ip"], (leases, got)
        assert run(h, h.mids[n], f"echo {n}").strip() == n


def test_a_damaged_saved_boot_is_replaced(home):
    h = home
    assert hasattr(h, "first"), "needs the first machine"
    for n in ("b", "c", "plain"):
        h.call("machine.destroy", {"id": h.mids.pop(n), "force": True})
    [boot] = saved_boots(h)
    with open(boot, "r+b") as f:
        f.write(b"garbage!" * 512)
    h.mids["d"] = create(h, "d")
    t0 = time.monotonic()
    h.call("machine.start", {"id": h.mids["d"]})
    wait_ssh(h, h.mids["d"])
    h.times["after_damage_to_ssh"] = time.monotonic() - t0
    log = h.daemon.log.read_text()
    assert f"machine {h.mids['d']}: no fast start from {boot}" in log, log[-3000:]
    # It booted (its console has the kernel's boot) and saved a new boot in place of the bad one.
    text = wait_console(h, h.mids["d"], rf"{MARK} ssh-ready")
    assert "Linux version" in text and f"{MARK} identity={h.mids['d']}" in text, text
    assert f"machine {h.mids['d']}: boot saved to {boot}" in h.daemon.log.read_text()
    with open(boot, "rb") as f:
        assert f.read(8) != b"garbage!"
    # The new saved boot works: the next machine fast-starts from it.
    h.mids["e"] = create(h, "e")
    t0 = time.monotonic()
    h.call("machine.start", {"id": h.mids["e"]})
    wait_ssh(h, h.mids["e"])
    h.times["fast_e_to_ssh"] = time.monotonic() - t0
    assert f"machine {h.mids['e']}: fast start from {boot}: identity applied" in h.daemon.log.read_text()
    assert facts(h, h.mids["e"])["key"] != facts(h, h.mids["d"])["key"]


def test_resume_refreshes_clock_and_seed(home):
    """A resumed guest gets a new clock and RNG seed through its identity step's channel."""
    h = home
    assert "e" in getattr(h, "mids", {}), "needs the fast-started machine"
    mid = h.mids["e"]
    assert h.call("machine.suspend", {"id": mid})["state"] == "saved"
    h.call("machine.resume", {"id": mid})
    wait_ssh(h, mid)
    deadline = time.monotonic() + 60
    while f"machine {mid}: clock and RNG seed refreshed after the resume" not in h.daemon.log.read_text():
        assert time.monotonic() < deadline, h.daemon.log.read_text()[-3000:]
        time.sleep(0.5)
    assert run(h, mid, "echo resumed").strip() == "resumed"


def test_machines_with_disks_start_on_the_saved_boots_disks(home):
    """A machine with a disk saves its own shape's boot with the disk as it was at the quiet point
    (the tiny box formats and mounts it on /data just before it, so that a login never finds
    /data missing); the next machine starts from that boot on a copy of that disk under its own
    overlay: it never sees what the first wrote after the save, and what it writes itself stays
    its own across a stop and start (which boots: its disk is no longer the saved boot's)."""
    h = home
    assert "first" in getattr(h, "mids", {}), "needs the first machine"
    cmdline = h.record(h.mids["first"])["cmdline"] + " xhyve.data=vda"
    before = set(saved_boots(h))

    def create_with_disk(name):
        h.uuids[name] = str(uuidlib.uuid4())
        return h.call("machine.create", {"box": "xhyve/tiny", "name": name, "uuid": h.uuids[name],
                                         "nics": ["user"], "cmdline": cmdline, "disks": [{"size": "16M"}]})["id"]

    one = h.mids["disk1"] = create_with_disk("disk1")
    h.call("machine.start", {"id": one})
    wait_ssh(h, one)
    [boot] = set(saved_boots(h)) - before
    assert f"machine {one}: boot saved to {boot}" in h.daemon.log.read_text()
    [copy] = [boot.parent / d["file"] for d in json.loads(boot.with_suffix(".json").read_text())["disks"]]
    saved_copy = copy.read_bytes()
    wait_console(h, one, rf"{MARK} data=/dev/vda")
    run(h, one, "echo one > /data/one && sync")

    two = h.mids["disk2"] = create_with_disk("disk2")
    own_disk = h.record(two)["disks"][0]["path"]
    t0 = time.monotonic()
    h.call("machine.start", {"id": two})
    wait_ssh(h, two)
    h.times["fast_with_disk_to_ssh"] = time.monotonic() - t0
    assert f"machine {two}: fast start from {boot}: identity applied" in h.daemon.log.read_text()
    [disk] = h.record(two)["disks"]
    assert disk["format"] == "qcow2" and disk["source"] == str(copy), disk
    assert not os.path.exists(own_disk), "its own disk, never run on, is gone"
    # Mounted before the saved boot was taken: its console (from the restore on) has no "data=".
    wait_console(h, two, rf"{MARK} ready")
    assert run(h, two, "ls /data").split() == ["lost+found"], "the first machine's later file leaked"
    run(h, two, "echo two > /data/two && sync")
    assert copy.read_bytes() == saved_copy, "the saved boot's disk changed under a machine"

    h.call("machine.stop", {"id": two})
    h.call("machine.start", {"id": two})
    wait_ssh(h, two)
    text = wait_console(h, two, rf"{MARK} data=/dev/vda")
    assert "Linux version" in text, "a machine that ran boots: its disk is its own"
    assert run(h, two, "cat /data/two").strip() == "two"
    assert run(h, one, "cat /data/one").strip() == "one"
