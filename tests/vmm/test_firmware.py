"""UEFI firmware machines (-f bootrom) with Debian's stock OVMF.

A firmware machine before any long boot: the firmware starts under the sandbox, and `save` on the
control socket is refused with the reason (fw_cfg and the flash keep no snapshot state yet),
leaving no file behind and the machine running.

Then the tiny kernel with the EFI stub (boxes/tiny/build.sh --efi) from the small EFI test disk
(boxes/tiny/efi-disk.sh: GPT, an ESP with systemd-boot and two entries) through OVMF to the tiny
box's "ready" marker, twice, on one VARS file: the first boot's entry (the default) has the guest
write systemd-boot's LoaderEntryDefault variable through efivarfs (the kernel calls the firmware's
runtime SetVariable, which programs the emulated flash) and power off; the VARS file then holds
the variable, and the second boot, which reads it back, runs the other entry. Two boots because
only a boot through the firmware shows that the firmware finds what it wrote: on the nested PVM
host each costs 6-7 minutes, most of it in OVMF (vmm/src/firmware/mod.rs); both boots serve every
check below."""

import pathlib
import shutil
import subprocess
import time

import pytest

from guest import PANIC
from test_cli import SLOTS
from test_snapshot import Control
from uefi import EFI_TIMEOUT, OVMF_CODE, OVMF_VARS, guest_params, live_variables, write_variable_cmd

ROOT = pathlib.Path(__file__).resolve().parents[2]
# systemd-boot's vendor GUID: its LoaderEntryDefault names the entry to boot.
SD_BOOT_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
READY = "XHYVE-TINY: ready"


def test_firmware_machine_refuses_save(xhyve_bin, tmp_path):
    vars_fd = tmp_path / "vars.fd"
    shutil.copy(OVMF_VARS, vars_fd)
    sock, snap, log = tmp_path / "ctl.sock", tmp_path / "fw.snap", tmp_path / "stderr"
    with open(log, "w") as err:
        p = subprocess.Popen([str(xhyve_bin), "-m", "256M", *SLOTS, "-l", "com1,log=" + str(tmp_path / "com1"),
                              "--control", str(sock), "-f", f"bootrom,{OVMF_CODE},{vars_fd}"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert p.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no control socket after 60 s"
            time.sleep(0.1)
        ctl = Control(sock)
        replies = (ctl("status"), ctl(f"save {snap}"), ctl("status"), ctl("quit"))
        ctl.close()
        status = p.wait(timeout=60)
    finally:
        p.kill()
        p.wait()
    assert replies[0] == "ok running", replies
    assert replies[1] == ("error a machine booted through UEFI firmware (-f bootrom) cannot be saved yet: "
                          "its fw_cfg and flash devices keep no snapshot state"), replies
    assert replies[2:] == ("ok running", "ok"), replies
    assert not snap.exists() and not list(tmp_path.glob("fw.snap*")), list(tmp_path.iterdir())
    assert status == 5, log.read_text()
    assert "quit through the control socket" in log.read_text()


def boot(xhyve_bin, disk, vars_fd, console, marks):
    """One boot through OVMF until xhyve exits; returns (status, {mark: seconds after start})."""
    argv = [str(xhyve_bin), "-A", "-m", "256M", *SLOTS, "-s", f"2,virtio-blk,{disk}",
            "-l", f"com1,log={console}", "-f", f"bootrom,{OVMF_CODE},{vars_fd}"]
    start = time.monotonic()
    seen = {}
    with open(console.with_suffix(".stderr"), "w") as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        while p.poll() is None and time.monotonic() - start < EFI_TIMEOUT:
            text = console.read_text(errors="replace") if console.exists() else ""
            for m in marks:
                if m not in seen and m in text:
                    seen[m] = round(time.monotonic() - start)
            if PANIC in text:
                break
            time.sleep(1)
        status = p.poll()
    finally:
        p.kill()
        p.wait()
    text = console.read_text(errors="replace") if console.exists() else ""
    for m in marks:
        if m not in seen and m in text:
            seen[m] = round(time.monotonic() - start)
    return status, seen


@pytest.fixture(scope="module")
def efi_boots(xhyve_bin, tiny_efi_box, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("efi")
    vars_fd, disk = tmp / "vars.fd", tmp / "disk.img"
    shutil.copy(OVMF_VARS, vars_fd)
    # The first entry's script: systemd-boot's default entry becomes "second" (UTF-16, NUL-ended).
    cmd = write_variable_cmd("LoaderEntryDefault", SD_BOOT_GUID, "second.conf\0".encode("utf-16-le"))
    base = " ".join(["console=ttyS0", *guest_params(xhyve_bin), "xhyve.action=poweroff", "xhyve.ssh=off"])
    subprocess.run([str(ROOT / "boxes/tiny/efi-disk.sh"), str(tiny_efi_box), str(disk),
                    f"first={base} xhyve.entry=first {cmd}", f"second={base} xhyve.entry=second"],
                   check=True, capture_output=True)
    before = live_variables(vars_fd.read_bytes())
    marks = ("EFI stub", "Linux version", READY, "efivar-written", "XHYVE-TINY: poweroff")
    runs = []
    for n in (1, 2):
        console = tmp / f"console{n}.log"
        status, seen = boot(xhyve_bin, disk, vars_fd, console, marks)
        runs.append((status, seen, console.read_text(errors="replace"),
                     console.with_suffix(".stderr").read_text(errors="replace"), live_variables(vars_fd.read_bytes())))
        print(f"boot {n}: exit {status}, seconds after start: {seen}")
    return before, runs


def tail(run):
    return "\n".join(["--- console ---", *run[2].splitlines()[-40:], "--- stderr ---", run[3][-4000:]])


def test_efi_disk_boots_to_ready(efi_boots):
    _, runs = efi_boots
    first = runs[0]
    assert READY in first[2], tail(first)
    assert "xhyve.entry=first" in first[2], tail(first)
    assert first[0] == 1, f"exit {first[0]}, not powered off:\n{tail(first)}"


def test_guest_changes_boot_entry_in_vars_file(efi_boots):
    before, runs = efi_boots
    key = ("LoaderEntryDefault", SD_BOOT_GUID)
    assert key not in before
    assert "efivar-written" in runs[0][2], tail(runs[0])
    assert runs[0][4].get(key) == "second.conf\0".encode("utf-16-le"), sorted(runs[0][4])


def test_second_boot_follows_the_changed_entry(efi_boots):
    _, runs = efi_boots
    second = runs[1]
    assert READY in second[2], tail(second)
    assert "xhyve.entry=second" in second[2] and "xhyve.entry=first" not in second[2], tail(second)
    assert second[0] == 1, f"exit {second[0]}, not powered off:\n{tail(second)}"
