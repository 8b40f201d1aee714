"""machine.package (what `vagrant package` and Packer's export step call) and forwarded ports,
against a fake `xhyve`: no guest boots here. The packaged box is installed again with box.add."""

import json
import tarfile

from test_ssh import net_home, wait_argv  # noqa: F401 (net_home is a fixture)


def test_package_writes_a_box_that_box_add_installs(net_home, tmp_path):
    h = net_home
    mid = h.call("machine.create", {"box": "fake", "name": "p", "cpus": 2, "memory": "300M",
                                    "cmdline": "console=ttyS0 quiet",
                                    "disks": [{"size": "1M"}]})["id"]
    disk = h.record(mid)["disks"][1]["path"]  # the new 1M disk, after the box's
    with open(disk, "r+b") as f:
        f.write(b"provisioned")
    out = tmp_path / "out.box"
    r = h.call("machine.package", {"id": mid, "output": str(out)})
    assert r["path"] == str(out) and r["size"] == out.stat().st_size, r
    assert r["metadata"] == {"provider": "xhyve", "kernel": "vmlinux", "initrd": "initrd.img",
                             "cmdline": "console=ttyS0 quiet", "cpus": 2, "memory": "300M",
                             "disks": ["disk0.img", "disk1.img"]}, r
    with tarfile.open(out) as t:
        assert t.getnames() == ["metadata.json", "vmlinux", "initrd.img", "disk0.img", "disk1.img"]
        assert json.load(t.extractfile("metadata.json")) == r["metadata"]
        assert t.extractfile("disk0.img").read() == bytes(4096)
        assert t.extractfile("disk1.img").read(11) == b"provisioned"
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name], "no temporary left"

    e = h.error("machine.package", {"id": mid, "output": str(out)})
    assert e.code == -32003 and "force" in e.message, e.message
    e = h.error("machine.package", {"id": mid, "output": "rel.box"})
    assert e.code == -32602 and e.data["field"] == "output", e.message
    e = h.error("machine.package", {"id": mid, "output": str(tmp_path / "no/such/dir.box")})
    assert e.code == -32001, e.message

    added = h.call("box.add", {"source": str(out), "name": "repacked", "version": "1.0.0",
                               "checksum": r["checksum"], "checksum_type": "sha256"})
    assert added["checksum"] == r["checksum"]
    again = h.call("machine.create", {"box": "repacked", "name": "again"})["id"]
    assert len(h.record(again)["disks"]) == 2

    h.call("machine.start", {"id": mid})
    e = h.error("machine.package", {"id": mid, "output": str(out), "force": True})
    assert e.code == -32009 and "stopped" in e.message, e.message
    h.call("machine.stop", {"id": mid})
    assert h.call("machine.package", {"id": mid, "output": str(out), "force": True})["size"] > 0


def test_forwarded_ports_tcp_and_udp(net_home):
    h = net_home
    ports = [{"guest": 80, "host": 8080}, {"guest": 53, "host": 5353, "protocol": "udp"},
             {"guest": 443, "host_ip": "0.0.0.0"}]
    mid = h.call("machine.create", {"box": "fake", "name": "f",
                                    "network": {"mode": "user", "forwarded_ports": ports}})["id"]
    h.call("machine.start", {"id": mid})
    net = next(a for a in wait_argv(h, mid) if "virtio-net" in a)
    for fwd in ("hostfwd=tcp:127.0.0.1:8080-:80", "hostfwd=udp:127.0.0.1:5353-:53",
                "hostfwd=tcp:0.0.0.0:443-:443"):
        assert fwd in net.split(","), net
    h.call("machine.stop", {"id": mid})
    listed = next(m for m in h.call("machine.list") if m["id"] == mid)["forwarded_ports"]
    assert listed[0] == {"guest": 80, "host": 8080, "protocol": "tcp", "host_ip": "127.0.0.1"}, listed
    e = h.error("machine.create", {"box": "fake", "name": "bad", "network": {
        "mode": "user", "forwarded_ports": [{"guest": 80, "host_ip": "localhost,x"}]}})
    assert e.code == -32602 and "IPV4" in e.message, e.message

    # machine.start with forwarded_ports (Vagrant's auto_correct moved one): they replace the
    # machine's, from this start on; bad ones are refused with the machine left as it was.
    e = h.error("machine.start", {"id": mid, "forwarded_ports": [{"guest": 0}]})
    assert e.code == -32602 and e.data == {"field": "forwarded_ports"}, (e.message, e.data)
    assert h.call("machine.state", {"id": mid})["state"] == "stopped"
    (h.machine_dir(mid) / "fake-argv").unlink()
    h.call("machine.start", {"id": mid, "forwarded_ports": [{"guest": 80, "host": 2201}]})
    net = next(a for a in wait_argv(h, mid) if "virtio-net" in a)
    assert "hostfwd=tcp:127.0.0.1:2201-:80" in net.split(",") and "8080" not in net, net
    assert next(m for m in h.call("machine.list") if m["id"] == mid)["forwarded_ports"] == [
        {"guest": 80, "host": 2201, "protocol": "tcp", "host_ip": "127.0.0.1"}]
    h.call("machine.stop", {"id": mid})
