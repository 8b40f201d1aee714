"""Firmware machines through the provider: a box whose metadata says `"firmware": "efi"` (the small
EFI test disk of boxes/tiny/efi-disk.sh: GPT, an ESP with systemd-boot and two entries, no kernel
in the box) boots through Debian's stock OVMF to SSH, with a variable store of its own that keeps
what the guest wrote across a restart and that machine.package carries into the next box.

Two boots through the firmware on the machine's one variable store (each 6-7 minutes on the
nested PVM host, most of it in OVMF: vmm/src/firmware/mod.rs) serve every check of the real
machine: the first boot's entry (the default) has the guest write systemd-boot's
LoaderEntryDefault variable through efivarfs (the kernel calls the firmware's runtime
SetVariable, which programs the emulated flash) before its SSH server starts; the second boot,
whose firmware reads the variable back from the flash, runs the other entry, which powers the
guest off once it is ready (the machine stays stopped). Two boots because only a boot through
the firmware shows that the firmware finds what it wrote. The bad inputs before them start no
guest that runs (OVMF never reaches a disk in them)."""

import json
import subprocess
import tarfile
import time

import pytest

from provider_util import ROOT
from test_machines import Home, alive, wait_state
from test_ssh import call_long, exec_
from uefi import EFI_TIMEOUT, OVMF_CODE, OVMF_VARS, guest_params, live_variables, write_variable_cmd

# systemd-boot's vendor GUID: its LoaderEntryDefault names the entry to boot.
SD_BOOT_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
VAR = ("LoaderEntryDefault", SD_BOOT_GUID)
SECOND = "second.conf\0".encode("utf-16-le")


@pytest.fixture(scope="module")
def efi_box_file(xhyve_bin, tiny_efi_box, tmp_path_factory):
    """The tiny EFI kernel on the small EFI disk as a box: disk0.img and metadata, no kernel. Its
    default entry has the guest make "second" the default (xhyve.cmd, boxes/tiny/init) and start
    its SSH server; the second entry powers the guest off once it is ready."""
    d = tmp_path_factory.mktemp("efibox")
    base = " ".join(["console=ttyS0", *guest_params(xhyve_bin)])
    subprocess.run([str(ROOT / "boxes/tiny/efi-disk.sh"), str(tiny_efi_box), str(d / "disk0.img"),
                    f"first={base} xhyve.entry=first xhyve.ssh=on {write_variable_cmd(*VAR, SECOND)}",
                    f"second={base} xhyve.entry=second xhyve.ssh=off xhyve.action=poweroff"],
                   check=True, capture_output=True)
    out = d / "tiny-efi.box"
    subprocess.run([str(ROOT / "boxes/package.sh"), str(out), str(d), "--firmware", "efi"], check=True,
                   capture_output=True)
    return out


def box_members(path):
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def test_bad_firmware_input_is_refused_by_name(provider_bin, efi_box_file, tiny_box_file, tmp_path):
    h = Home(provider_bin, tmp_path / "home")
    try:
        h.call("box.add", {"source": str(efi_box_file), "name": "xhyve/tiny-efi"})
        h.call("box.add", {"source": str(tiny_box_file), "name": "xhyve/tiny"})
        for params, want in [
            ({"box": "xhyve/tiny", "firmware": "bios"}, "unknown variant `bios`"),
            ({"box": "xhyve/tiny-efi", "firmware": "kexec"}, "kexec needs a kernel, and the box names none"),
            ({"box": "xhyve/tiny", "firmware": "efi"}, "efi boots the machine's first disk, and it has none"),
        ]:
            e = h.error("machine.create", {"name": "bad", **params})
            assert e.code == -32602 and want in e.message, (params, e.message)
            assert e.data == {"field": "firmware"}, (params, e.data)
        assert h.call("machine.list") == []

        # A kexec box with an empty extra disk, booted through firmware: the disk has no EFI system
        # partition, so machine.start says so and runs nothing.
        mid = h.call("machine.create", {"box": "xhyve/tiny", "name": "blank", "firmware": "efi",
                                         "disks": [{"size": "16M"}]})["id"]
        (m,) = h.call("machine.list")
        assert m["firmware"] == "efi", m
        vars_fd = h.machine_dir(mid) / "efi-vars.fd"
        assert vars_fd.read_bytes() == open(OVMF_VARS, "rb").read()
        e = h.error("machine.start", {"id": mid})
        assert e.code == -32010 and "has no EFI system partition" in e.message and "disk0.img" in e.message, e.message
        assert h.call("machine.state", {"id": mid})["state"] == "stopped"
        assert not (h.machine_dir(mid) / "vmm.log").exists()
    finally:
        h.close()

    # Firmware files the daemon is pointed at: missing (machine.create names it, makes nothing),
    # or of a size no firmware has (xhyve refuses it as it starts: the machine is aborted with
    # xhyve's message as its reason).
    missing, short = tmp_path / "missing.fd", tmp_path / "short.fd"
    short.write_bytes(b"\0" * 1000)
    h = Home(provider_bin, tmp_path / "home-missing", env={"XHYVE_OVMF_CODE": str(missing)})
    try:
        h.call("box.add", {"source": str(efi_box_file), "name": "xhyve/tiny-efi"})
        e = h.error("machine.create", {"box": "xhyve/tiny-efi", "name": "fw"})
        assert e.code == -32010 and f"UEFI firmware {missing}: No such file" in e.message, e.message
        assert "XHYVE_OVMF_CODE names it" in e.message, e.message
        assert h.call("machine.list") == []
    finally:
        h.close()
    h = Home(provider_bin, tmp_path / "home-short", env={"XHYVE_OVMF_CODE": str(short)})
    try:
        h.call("box.add", {"source": str(efi_box_file), "name": "xhyve/tiny-efi"})
        mid = h.call("machine.create", {"box": "xhyve/tiny-efi", "name": "fw"})["id"]
        h.call("machine.start", {"id": mid})
        reason = wait_state(h, mid, "aborted")["exit_reason"]
        assert f"{short}: 1000 bytes is not a firmware image size" in reason, reason
    finally:
        h.close()


@pytest.fixture(scope="module")
def efi_machine(provider_bin, efi_box_file, tmp_path_factory):
    """The EFI box's machine booted once through OVMF to SSH."""
    h = Home(provider_bin, tmp_path_factory.mktemp("efi") / "home")
    try:
        h.call("box.add", {"source": str(efi_box_file), "name": "xhyve/tiny-efi"})
        h.mid = h.call("machine.create", {"box": "xhyve/tiny-efi", "name": "efi"})["id"]
        h.pid = h.call("machine.start", {"id": h.mid})["pid"]
        t0 = time.monotonic()
        resp, _ = call_long(h, "machine.wait_ssh", {"id": h.mid, "timeout": EFI_TIMEOUT}, EFI_TIMEOUT + 60)
        assert "result" in resp, resp
        print(f"EFI machine: SSH {time.monotonic() - t0:.0f} s after machine.start")
        yield h
    except BaseException:
        h.print_logs()
        raise
    finally:
        h.close()


def test_efi_machine_boots_its_disk_through_the_firmware(efi_machine):
    h, mid = efi_machine, efi_machine.mid
    rec = h.record(mid)
    assert rec["firmware"] == "efi" and rec.get("kernel") is None, rec
    argv = rec["process"]["argv"]
    boot = argv[argv.index("-f") + 1]
    assert boot == f"bootrom,{OVMF_CODE},{h.machine_dir(mid) / 'efi-vars.fd'}", argv
    # xhyve cannot save a machine booted through firmware: suspend says why, the guest runs on.
    e = h.error("machine.suspend", {"id": mid})
    assert e.code == -32010 and "cannot be saved yet" in e.message and "it runs on" in e.message, e.message
    assert alive(h.pid) and h.call("machine.state", {"id": mid})["state"] == "running"
    # The kernel came from the disk's ESP, with its default boot entry's command line.
    r, out = exec_(h, mid, "test -d /sys/firmware/efi && echo booted-through-efi; cat /proc/cmdline")
    assert r == {"exit_status": 0} and "booted-through-efi" in out["stdout"], (r, out)
    assert "xhyve.entry=first" in out["stdout"] and "xhyve.identity" not in out["stdout"], out


def test_variable_store_is_the_machines_and_travels_with_its_box(efi_machine, tmp_path):
    h, mid = efi_machine, efi_machine.mid
    vars_fd, console = h.machine_dir(mid) / "efi-vars.fd", h.machine_dir(mid) / "console.log"
    # The boot entry's script wrote it before the SSH server started; the guest ran on.
    assert "efivar-written" in console.read_text(errors="replace")
    assert live_variables(vars_fd.read_bytes()).get(VAR) == SECOND
    h.call("machine.stop", {"id": mid, "force": True})
    assert live_variables(vars_fd.read_bytes()).get(VAR) == SECOND

    # Started again, the machine keeps its store (not a fresh copy of the template): the firmware
    # reads the variable back and systemd-boot runs the entry it names, which powers off.
    h.call("machine.start", {"id": mid})
    assert h.record(mid)["process"]["argv"][-1].endswith(f",{vars_fd}")
    t0 = time.monotonic()
    wait_state(h, mid, "stopped", timeout=EFI_TIMEOUT)
    print(f"EFI machine: second boot powered off {time.monotonic() - t0:.0f} s after machine.start")
    # Each boot has a console log of its own: the first boot's is console.log.1 now.
    first = (console.parent / "console.log.1").read_text(errors="replace")
    second = console.read_text(errors="replace")
    assert "xhyve.entry=first" in first and "efivar-written" in first, first[-4000:]
    assert "XHYVE-TINY: ready" in second and "XHYVE-TINY: poweroff" in second, second[-4000:]
    assert "xhyve.entry=second" in second and "xhyve.entry=first" not in second, second[-4000:]
    assert live_variables(vars_fd.read_bytes()).get(VAR) == SECOND

    # machine.package carries the store; a machine of the new box starts with its variables.
    out = tmp_path / "packaged.box"
    meta = h.call("machine.package", {"id": mid, "output": str(out)})["metadata"]
    assert meta["firmware"] == "efi" and meta["efi_vars"] == "efi-vars.fd" and "kernel" not in meta, meta
    members = box_members(out)
    assert json.loads(members["metadata.json"]) == meta
    assert live_variables(members["efi-vars.fd"]).get(VAR) == SECOND
    h.call("box.add", {"source": str(out), "name": "xhyve/packaged-efi"})
    again = h.call("machine.create", {"box": "xhyve/packaged-efi", "name": "again"})["id"]
    copied = h.machine_dir(again) / "efi-vars.fd"
    assert live_variables(copied.read_bytes()).get(VAR) == SECOND
