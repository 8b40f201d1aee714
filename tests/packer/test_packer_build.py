"""`packer build` with the real Packer, plugin, provider and VMM: the tiny box boots, a shell
provisioner writes a file on a disk the template adds, and the exported .box carries it: the
provider imports that box from the build's catalog, boots it, and the file is there; the build
machine also has a NIC on a named network (`networks`) with its static address. Then a
Ctrl-C while the guest boots, and a build from a kernel, initrd and disk image.

Guest boots take ~2-3 min on the nested host (BOOT_TIMEOUT bounds every wait)."""

import hashlib
import json
import os
import re
import secrets
import tarfile
import time

from guest import BOOT_TIMEOUT
from packer_util import hcl_template

# The guest mounts the disk named by xhyve.data= on /data (boxes/tiny/init) for user vagrant.
DATA_CMDLINE = "console=ttyS0 xhyve.data=vda"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vmm_processes(rpc):
    """Processes other than the daemon whose command line names its home (xhyve, its runner)."""
    pids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if str(rpc.home).encode() in f.read() and int(d) != rpc.proc.pid:
                    pids.append(int(d))
        except OSError:
            pass
    return pids


def source(rpc, provider_bin, tiny_box_file, out, **extra):
    s = {"box_url": str(tiny_box_file), "box_name": "xhyve/tiny", "box_version": "1.0.0",
         "box_checksum": f"sha256:{sha256(tiny_box_file)}", "xhyve_home": str(rpc.home),
         "provider_command": str(provider_bin), "ssh_timeout": f"{int(BOOT_TIMEOUT)}s",
         "output_directory": str(out)}
    s.update(extra)
    return s


def test_build_then_boot_the_new_box(packer, rpc, provider_bin, tiny_box_file):
    token = secrets.token_hex(8)
    out = packer.work / "out"
    # The build machine also joins a named network with a static address (its eth1).
    rpc.call("network.create", {"name": "lab", "subnet": "192.168.56.0/24"})
    src = source(rpc, provider_bin, tiny_box_file, out, cmdline=DATA_CMDLINE,
                 disk_additional_size=["64M"], shutdown_timeout="3m", vm_name="tiny-data",
                 output_box_version="1.1.0", networks={"lab": "192.168.56.20"})
    eth1 = "i=0; until [ -s /run/dhcp-ip.eth1 ]; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 1; done"
    prov = ('  provisioner "shell" {\n'
            f'    inline = ["echo {token} > /data/hello", "sync", "cat /data/hello",\n'
            f'              "{eth1}", "echo eth1=$(cat /run/dhcp-ip.eth1)"]\n'
            '  }\n')
    (packer.work / "t.pkr.hcl").write_text(hcl_template(src, prov))
    t0 = time.monotonic()
    r = packer.run("build", "-color=false", "t.pkr.hcl", timeout=3 * BOOT_TIMEOUT)
    took = time.monotonic() - t0
    print(f"packer build: {took:.0f} s\n{r.stdout}")
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{packer.log_tail()}"
    assert f"xhyve.tiny: {token}" in r.stdout, "the provisioner's output"
    assert "xhyve.tiny: eth1=192.168.56.20" in r.stdout, "the named network's static address"
    assert "The guest is off: powered off" in r.stdout, "a clean power-off, not a kill"
    assert rpc.call("machine.list") == [], "no machine outlives the build"
    assert vmm_processes(rpc) == []

    box, catalog_path = out / "tiny-data.box", out / "tiny-data.json"
    assert f"xhyve box: {box} (sha256:{sha256(box)}); catalog: {catalog_path}" in r.stdout
    catalog = json.loads(catalog_path.read_text())
    assert catalog == {"name": "tiny-data", "versions": [{"version": "1.1.0", "providers": [
        {"name": "xhyve", "url": "tiny-data.box", "checksum_type": "sha256", "checksum": sha256(box)}]}]}
    with tarfile.open(box) as t:
        meta = json.load(t.extractfile("metadata.json"))
        assert t.getmember("disk0.img").size == 64 << 20
    assert meta["provider"] == "xhyve" and meta["disks"] == ["disk0.img"], meta
    assert meta["cmdline"] == DATA_CMDLINE, meta

    # The provider installs the new box from the catalog (checking its sha256) and boots it.
    added = rpc.call("box.add", {"source": str(catalog_path)})
    assert (added["name"], added["version"]) == ("tiny-data", "1.1.0"), added
    mid = rpc.call("machine.create", {"box": "tiny-data", "name": "check"})["id"]
    rpc.call("machine.start", {"id": mid})
    rpc.call("machine.wait_ssh", {"id": mid, "timeout": BOOT_TIMEOUT}, timeout=BOOT_TIMEOUT + 60)
    resp, notes = rpc.call_full("machine.exec", {"id": mid, "command": "cat /data/hello"}, timeout=300)
    stdout = "".join(n["params"]["data"] for n in notes if n["params"]["stream"] == "stdout")
    assert resp.get("result") == {"exit_status": 0} and stdout == f"{token}\n", (resp, notes)
    rpc.call("machine.stop", {"id": mid, "timeout": 60})


def test_interrupt_while_booting_leaves_nothing(packer, rpc, provider_bin, tiny_box_file):
    out = packer.work / "out"
    (packer.work / "t.pkr.hcl").write_text(hcl_template(source(rpc, provider_bin, tiny_box_file, out)))
    proc = packer.start("build", "-color=false", "t.pkr.hcl")
    log = packer.work / "out.txt"
    deadline = time.monotonic() + 300
    while "Waiting for SSH to become available" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    assert rpc.call("machine.list")[0]["state"] == "running"
    packer.interrupt(proc)
    proc.wait(300)
    text = log.read_text()
    assert proc.returncode != 0, text
    assert "Destroying machine" in text and "build was cancelled" in text, text
    assert rpc.call("machine.list") == [], text
    assert vmm_processes(rpc) == []
    assert not out.exists(), "the output directory is removed"


def test_build_from_kernel_initrd_and_disk(packer, rpc, provider_bin, tiny_box_file):
    """No box: the tiny box's kernel and initrd and a disk image, grown by disk_size. The guest
    need not boot (communicator none): the power button goes unanswered and the machine is
    forced off after shutdown_timeout; the box is packed all the same."""
    src_dir = packer.work / "src"
    src_dir.mkdir()
    with tarfile.open(tiny_box_file) as t:
        for name in ("vmlinux", "initrd.img"):
            (src_dir / name).write_bytes(t.extractfile(name).read())
    disk = src_dir / "disk.img"
    disk.write_bytes(b"MARK" + bytes((1 << 20) - 4))
    out = packer.work / "out"
    src = {"kernel": str(src_dir / "vmlinux"), "initrd": str(src_dir / "initrd.img"),
           "disk_image": str(disk), "disk_size": "8M", "communicator": "none",
           "shutdown_timeout": "5s", "xhyve_home": str(rpc.home),
           "provider_command": str(provider_bin), "output_directory": str(out), "vm_name": "raw"}
    (packer.work / "t.pkr.hcl").write_text(hcl_template(src))
    r = packer.run("build", "-color=false", "t.pkr.hcl", timeout=600)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{packer.log_tail()}"
    with tarfile.open(out / "raw.box") as t:
        meta = json.load(t.extractfile("metadata.json"))
        assert meta["disks"] == ["disk0.img"], meta
        assert t.getmember("disk0.img").size == 8 << 20
        assert t.extractfile("disk0.img").read(4) == b"MARK"
        assert t.extractfile("vmlinux").read() == (src_dir / "vmlinux").read_bytes()
    assert disk.stat().st_size == 1 << 20, "disk_image itself is never changed"
    assert rpc.call("machine.list") == []


def test_guest_panic_fails_the_build_and_leaves_nothing(packer, rpc, provider_bin, tiny_box_file):
    """A guest kernel that panics (its init does not exist): the build fails once xhyve ends
    (pvpanic), not after ssh_timeout, its error quoting the console's last lines; no machine,
    VMM or output is left."""
    out = packer.work / "out"
    src = source(rpc, provider_bin, tiny_box_file, out, cmdline="console=ttyS0 rdinit=/nope init=/nope")
    (packer.work / "t.pkr.hcl").write_text(hcl_template(src))
    t0 = time.monotonic()
    r = packer.run("build", "-color=false", "t.pkr.hcl", timeout=2 * BOOT_TIMEOUT)
    took = time.monotonic() - t0
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert re.search(r"--> xhyve\.tiny: machine \w+ ended before SSH was up: the guest kernel panicked "
                     r"\(exit status 6\); its console ended with:\n", text), f"{text}\n{packer.log_tail()}"
    # The error's own lines (Packer prefixes each with "==>"; the console dump that follows has
    # "    " instead) end with the panic.
    assert re.search(r"(?m)^==> xhyve\.tiny: \[[ \d.]+\] Kernel panic - not syncing:", text), text
    assert "Destroying machine" in text, text
    assert rpc.call("machine.list") == [], text
    assert vmm_processes(rpc) == []
    assert not out.exists(), "the output directory is removed"
    print(f"packer build of a panicking guest failed after {took:.0f} s")
