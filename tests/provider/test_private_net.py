"""Named networks (private networks): `network.create|list|remove`, NICs on them in
`machine.create`'s `nics`, the rootless switch in the daemon and its DHCP server.

- with a fake `xhyve` (fast): the bad inputs (overlapping subnets, addresses outside the network,
  a static address twice, removing a network in use) are refused with nothing made; the command
  line joins the switch's socket with the MAC of the NIC's index; destroy frees the address;
- with the real tiny box (two machines, booted twice): one with a static address, one by DHCP,
  reach each other over the switch (TCP both ways, busybox nc), and keep their addresses across
  stop/start and a daemon restart. Rootless: no namespace, no root privilege used.
"""

import json
import re
import time
import uuid as uuidlib

import pytest

from test_machines import Home, fake_vmm_home, wait_console
from test_ssh import exec_, wait_ssh

MARK = "XHYVE-TINY:"

FAKE_XHYVE = r"""#!/bin/sh
if [ "$1" = "--features" ]; then
    echo '{"version":"0.0.1","pci":["hostbridge","amd_hostbridge","lpc","virtio-blk","virtio-rnd","virtio-net"],"net_backends":["user","socket"],"boot":["kexec"]}'
    exit 0
fi
printf '%s\n' "$@" > fake-argv
trap 'exit 1' TERM
while :; do sleep 0.1; done
"""


def nic_mac(uid, index):
    """vmm/contract/src/mac.rs nic_mac for index >= 1: FNV-1a 64 of the UUID's bytes and the
    index, the first 6 bytes, locally administered unicast."""
    h = 0xcbf29ce484222325
    for b in uuidlib.UUID(uid).bytes + bytes([index]):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    m = bytearray(h.to_bytes(8, "big")[:6])
    m[0] = (m[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in m)


@pytest.fixture
def fake_home(provider_bin, tmp_path):
    h = fake_vmm_home(provider_bin, tmp_path, FAKE_XHYVE)
    yield h
    h.close()


def networks_file(h):
    return (h.path / "networks" / "networks.json").read_bytes()


def test_networks_bad_input_and_command_line(fake_home):
    h = fake_home
    net = h.call("network.create", {"name": "priv"})
    assert (net["subnet"], net["gateway"], net["netmask"]) == ("192.168.56.0/21", "192.168.56.1",
                                                               "255.255.248.0"), net
    assert net["dhcp"] == {"start": "192.168.60.0", "end": "192.168.63.254"}, net
    h.call("network.create", {"name": "lab", "subnet": "10.77.0.9/24",
                              "dhcp": {"start": "10.77.0.100", "end": "10.77.0.110"}})
    before = networks_file(h)
    for params, code, text in [
        ({"name": "priv", "subnet": "10.1.0.0/24"}, -32003, "already exists"),
        ({"name": "x", "subnet": "192.168.59.0/24"}, -32002, 'overlaps network "priv"'),
        ({"name": "x", "subnet": "10.0.0.0/8"}, -32002, 'overlaps network "lab"'),
        ({"name": "x", "subnet": "10.78.0.0/33"}, -32602, "prefix length"),
        ({"name": "x/y"}, -32602, "not a network name"),
        ({"name": "x", "subnet": "10.78.0.0/24", "dhcp": {"start": "10.79.0.1", "end": "10.78.0.9"}},
         -32602, "outside"),
        ({"name": "x", "subnet": "10.78.0.0/24", "dhcp": {"start": "10.78.0.9", "end": "10.78.0.2"}},
         -32602, "is after"),
    ]:
        e = h.error("network.create", params)
        assert e.code == code and text in e.message, (params, e)
    assert networks_file(h) == before, "a refused create changes nothing"
    assert [n["name"] for n in h.call("network.list")] == ["lab", "priv"]

    uid = str(uuidlib.uuid4())
    nics = ["user", {"network": "priv", "ip": "192.168.56.10"}, {"network": "lab"}]
    mid = h.call("machine.create", {"box": "fake", "name": "a", "uuid": uid, "nics": nics})["id"]
    for nics, code, text in [
        (["user", {"network": "nope"}], -32001, 'no network "nope"'),
        (["user", {"network": "priv", "ip": "192.168.56.10"}], -32002, "already the address of another NIC"),
        (["user", {"network": "priv", "ip": "192.168.64.10"}], -32602, "is not a guest address"),
        (["user", {"network": "priv", "ip": "192.168.56.1"}], -32602, "is not a guest address"),
        (["user", {"network": "priv", "ip": "192.168.63.255"}], -32602, "is not a guest address"),
        (["user", {"network": "lab", "ip": "10.77.0.5"}, {"network": "lab", "ip": "10.77.0.5"}],
         -32602, "given twice"),
        ([], -32602, "is empty"),
    ]:
        e = h.error("machine.create", {"box": "fake", "name": "b", "nics": nics})
        assert e.code == code and text in e.message, (nics, e)
    e = h.error("machine.create", {"box": "fake", "name": "b", "network": "user", "nics": ["user"]})
    assert e.code == -32602 and "not both" in e.message, e
    assert [m["id"] for m in h.call("machine.list")] == [mid], "refused creates leave no machine"
    leases = {n["name"]: n["leases"] for n in h.call("network.list")}
    assert leases == {"priv": [{"mac": nic_mac(uid, 1), "ip": "192.168.56.10", "fixed": True,
                                "bound": False}], "lab": []}, leases

    # The NICs follow the disk (slot 3), each on its network's socket with its index's MAC.
    h.call("machine.start", {"id": mid})
    deadline = time.monotonic() + 10
    while not (h.machine_dir(mid) / "fake-argv").exists():
        assert time.monotonic() < deadline, "fake xhyve did not run"
        time.sleep(0.05)
    argv = (h.machine_dir(mid) / "fake-argv").read_text().splitlines()
    socks = h.path / "networks"
    assert f"4,virtio-net,socket={socks / 'priv.sock'},mac={nic_mac(uid, 1)}" in argv, argv
    assert f"5,virtio-net,socket={socks / 'lab.sock'},mac={nic_mac(uid, 2)}" in argv, argv
    assert any(a.startswith("2,virtio-net,user,") for a in argv) and "3,virtio-blk," in " ".join(argv)

    e = h.error("network.remove", {"name": "priv"})
    assert e.code == -32002 and e.data["machines"] == [f"{mid} (a)"], e
    assert (socks / "priv.sock").exists()
    assert h.error("network.remove", {"name": "nope"}).code == -32001
    h.call("machine.destroy", {"id": mid, "force": True})
    assert all(n["leases"] == [] for n in h.call("network.list")), "destroy frees the addresses"
    assert h.call("network.remove", {"name": "priv"}) == {"name": "priv", "removed": True}
    assert not (socks / "priv.sock").exists() and not (socks / "priv.leases.json").exists()
    # The subnet is free again.
    h.call("network.create", {"name": "priv2", "subnet": "192.168.56.0/24"})
    h.restart()
    assert [n["name"] for n in h.call("network.list")] == ["lab", "priv2"]
    assert (socks / "priv2.sock").exists(), "a new daemon runs the switches again"


# ---------------------------------------------------------------------------------------------
# Real: two tiny-box machines on one network, booted twice.

def eth1_ip(h, mid):
    text = wait_console(h, mid, rf"{MARK} eth1 ip=\S+")
    return re.findall(rf"{MARK} eth1 ip=(\S+)", text)[-1]


def tcp(h, server, client, server_ip, port, msg):
    """`msg` from `client` to `server_ip:port` on `server` (busybox nc), then what arrived."""
    # A listener that keeps listening until data came: under load a client's connect may time out
    # after the server accepted it (an empty connection).
    listen = f"until [ -s /tmp/in{port} ]; do nc -l -p {port} >>/tmp/in{port}; done"
    r, out = exec_(h, server, f"rm -f /tmp/in{port}; setsid sh -c '{listen}' </dev/null >/dev/null 2>&1 &")
    assert r == {"exit_status": 0}, (r, out)
    r, out = exec_(h, client, f"for i in 1 2 3 4 5 6 7 8 9 10; do echo {msg} | nc -w 30 {server_ip} {port} "
                              "&& exit 0; sleep 1; done; exit 1")
    assert r == {"exit_status": 0}, (r, out)
    r, out = exec_(h, server, f"for i in $(seq 40); do [ -s /tmp/in{port} ] && break; sleep 0.5; done; "
                              f"cat /tmp/in{port}")
    return out["stdout"].strip()


def test_real_two_machines_on_a_private_network(provider_bin, tiny_box_file, tmp_path):
    assert (provider_bin.parent / "xhyve").is_file(), "xhyve next to xhyve-provider: build it"
    h = Home(provider_bin, tmp_path / "home")
    mids = {}
    times = {}
    try:
        h.call("box.add", {"source": str(tiny_box_file), "name": "xhyve/tiny", "version": "1.0.0"})
        h.call("network.create", {"name": "priv"})
        uids = {"a": str(uuidlib.uuid4()), "b": str(uuidlib.uuid4())}
        nics = {"a": ["user", {"network": "priv", "ip": "192.168.56.10"}], "b": ["user", {"network": "priv"}]}
        for n in ("a", "b"):
            mids[n] = h.call("machine.create", {"box": "xhyve/tiny", "name": n, "uuid": uids[n],
                                                "nics": nics[n]})["id"]
        addrs = None
        for boot in (1, 2):
            t0 = time.monotonic()
            for n in ("a", "b"):
                h.call("machine.start", {"id": mids[n]})
            for n in ("a", "b"):
                wait_ssh(h, mids[n])
            times[f"boot{boot}_both_ssh"] = time.monotonic() - t0
            got = {n: eth1_ip(h, mids[n]) for n in ("a", "b")}
            leases = {lease["mac"]: lease for lease in h.call("network.list")[0]["leases"]}
            assert got["a"] == "192.168.56.10", got
            b_lease = leases[nic_mac(uids["b"], 1)]
            assert got["b"] == b_lease["ip"] and not b_lease["fixed"] and b_lease["bound"], (got, leases)
            assert got["b"].startswith(("192.168.60.", "192.168.61.", "192.168.62.", "192.168.63.")), got
            assert leases[nic_mac(uids["a"], 1)]["bound"], leases
            if addrs is not None:
                assert got == addrs, "the same addresses after stop/start and a daemon restart"
            addrs = got
            for n in ("a", "b"):
                r, out = exec_(h, mids[n], "ip -4 addr show dev eth1; cat /sys/class/net/eth1/address; "
                                           "ip route show default")
                assert r == {"exit_status": 0}, (r, out)
                assert f"inet {got[n]}/21" in out["stdout"], out
                assert nic_mac(uids[n], 1) in out["stdout"], out
                # The private network's lease names no router: the default route stays on eth0.
                defaults = [line for line in out["stdout"].splitlines() if line.startswith("default")]
                assert defaults and all("dev eth0" in line for line in defaults), out
            t = time.monotonic()
            assert tcp(h, mids["b"], mids["a"], got["b"], 7001, f"a-to-b-{boot}") == f"a-to-b-{boot}"
            assert tcp(h, mids["a"], mids["b"], got["a"], 7002, f"b-to-a-{boot}") == f"b-to-a-{boot}"
            times[f"boot{boot}_tcp_both_ways"] = time.monotonic() - t
            for n in ("a", "b"):
                assert h.call("machine.stop", {"id": mids[n], "timeout": 120})["state"] == "stopped"
            if boot == 1:
                h.restart()
        e = h.error("network.remove", {"name": "priv"})
        assert e.code == -32002, e
        for n in ("a", "b"):
            h.call("machine.destroy", {"id": mids[n]})
        assert h.call("network.list")[0]["leases"] == []
        h.call("network.remove", {"name": "priv"})
    except BaseException:
        h.print_logs(list(mids.values()))
        raise
    finally:
        print(f"private network timings (s): {json.dumps({k: round(v, 1) for k, v in times.items()})}")
        h.close()
