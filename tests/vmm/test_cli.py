"""The command line: bad values give one line naming the flag, status 4, and no VM at all."""

import os
import re
import shutil
import subprocess

import pytest

from rejection import assert_rejected
from uefi import OVMF_CODE, OVMF_UNIFIED, OVMF_VARS

UUID = "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01"


def run(xhyve_bin, *args):
    return subprocess.run([str(xhyve_bin), *args], capture_output=True, text=True, timeout=60)


def kexec(box, kernel="vmlinux"):
    return f"kexec,{box / kernel},{box / 'initrd.img'},console=ttyS0"


SLOTS = ["-s", "0,hostbridge", "-s", "31,lpc"]


def odd_sized(tmp):
    path = tmp / "odd.fd"
    path.write_bytes(b"\0" * 5000)
    return path


def vars_copy(tmp, mode=0o644):
    path = tmp / "vars.fd"
    shutil.copy(OVMF_VARS, path)
    path.chmod(mode)
    return path


BAD = [
    (lambda box, tmp: ["-f", "kexec,/nonexistent/vmlinux,,console=ttyS0"],
     r"-f kexec: kernel /nonexistent/vmlinux: No such file or directory"),
    (lambda box, tmp: ["-f", f"kexec,{tmp},,"], r"-f kexec: kernel .*: not a regular file"),
    (lambda box, tmp: ["-f", f"kexec,{box / 'vmlinux'},/nonexistent/initrd,"],
     r"-f kexec: initrd /nonexistent/initrd: No such file"),
    (lambda box, tmp: ["-m", "0", "-f", kexec(box)], r"-m 0: memory size must be at least 1M"),
    (lambda box, tmp: ["-m", "12Q", "-f", kexec(box)], r"-m 12Q: unknown size suffix"),
    (lambda box, tmp: ["-c", "0", "-f", kexec(box)], r"-c 0: at least 1 vCPU"),
    (lambda box, tmp: ["-c", "100000", "-f", kexec(box)], r"-c 100000: more vCPUs than this host allows"),
    (lambda box, tmp: ["-U", "not-a-uuid", "-f", kexec(box)], r"-U not-a-uuid: malformed UUID"),
    (lambda box, tmp: ["-Z", "-f", kexec(box)], r"-Z: unknown flag"),
    (lambda box, tmp: ["-s", "3,floppy", "-f", kexec(box)],
     r"-s 3,floppy: unknown device 'floppy' \(valid: hostbridge, amd_hostbridge, lpc, virtio-blk, .*\)"),
    (lambda box, tmp: ["-s", "0,hostbridge", "-s", "0,lpc", "-f", kexec(box)],
     r"-s 0,lpc: slot 0:0 already holds hostbridge"),
    (lambda box, tmp: ["-l", "com3,stdio", "-f", kexec(box)], r"-l com3,stdio: unknown LPC device"),
    (lambda box, tmp: [*SLOTS, "-f", "bootrom,/nonexistent/OVMF.fd"],
     r"-f bootrom: /nonexistent/OVMF.fd: No such file or directory"),
    (lambda box, tmp: [*SLOTS, "-l", "bootrom,/nonexistent/OVMF.fd"],
     r"-l bootrom: /nonexistent/OVMF.fd: No such file or directory"),
    (lambda box, tmp: [*SLOTS, "-f", f"bootrom,{odd_sized(tmp)}"],
     r"-f bootrom: .*odd.fd: 5000 bytes is not a firmware image size"),
    (lambda box, tmp: [*SLOTS, "-f", f"bootrom,{OVMF_UNIFIED},{OVMF_VARS}"],
     r"-f bootrom: .*OVMF.fd is a unified image that holds its own variable store"),
    (lambda box, tmp: [*SLOTS, "-f", f"bootrom,{OVMF_CODE},{OVMF_CODE}"],
     r"-f bootrom: .*OVMF_CODE_4M.fd: not a UEFI variable store"),
    (lambda box, tmp: ["-f", f"bootrom,{OVMF_UNIFIED}"],
     r"-f bootrom,.*OVMF.fd: UEFI firmware needs -s 0,hostbridge and -s 31,lpc"),
    (lambda box, tmp: [*SLOTS, "--restore", box / "vmlinux", "-f", f"bootrom,{OVMF_CODE},{vars_copy(tmp)}"],
     r"--restore: not supported with -f bootrom yet \(firmware machines cannot be saved\)"),
    (lambda box, tmp: ["-A"], r"-f: missing"),
    (lambda box, tmp: ["-M"], r"-M: needs -U"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_command_line(case, xhyve_bin, tiny_box, tmp_path):
    args, expected = BAD[case]
    assert_rejected([xhyve_bin, *args(tiny_box, tmp_path)], expected, tmp_path / "trace")


def test_vars_not_writable(xhyve_bin, tmp_path):
    """A VARS file xhyve may not write (mode 0444; as root, without CAP_DAC_OVERRIDE) is named with
    what to do, before any VM exists."""
    no_override = ["setpriv", "--bounding-set=-dac_override"] if os.geteuid() == 0 else []
    args = [*SLOTS, "-f", f"bootrom,{OVMF_CODE},{vars_copy(tmp_path, 0o444)}"]
    assert_rejected([*no_override, xhyve_bin, *args],
                    r"-f bootrom: .*vars.fd: Permission denied: the firmware writes its variables there; "
                    r"give a writable copy of OVMF_VARS\*.fd", tmp_path / "trace")


def test_help_documents_exit_statuses(xhyve_bin):
    r = run(xhyve_bin, "-h")
    assert r.returncode == 0
    assert "0 rebooted, 1 powered off, 2 halted, 3 triple fault, 4 error" in r.stdout
    for flag in ("-A", "-c", "-f", "-l", "-m", "-M", "-s", "-u", "-U", "-w", "-H", "-P"):
        assert re.search(rf"^\s+{flag}:", r.stdout, re.M), flag


def test_version(xhyve_bin):
    r = run(xhyve_bin, "-v")
    assert r.returncode == 0 and re.fullmatch(r"xhyve \d+\.\d+\.\d+\n", r.stdout)


def test_mac_pinned_by_uuid(xhyve_bin):
    a, b = run(xhyve_bin, "-M", "-U", UUID), run(xhyve_bin, "-U", UUID, "-M")
    other = run(xhyve_bin, "-M", "-U", UUID[:-1] + "2")
    m = re.fullmatch(r"MAC: ([0-9a-f]{2}(:[0-9a-f]{2}){5})\n", a.stdout)
    assert m and a.returncode == 0
    assert a.stdout == b.stdout and other.stdout != a.stdout
    assert int(m.group(1)[:2], 16) & 0x03 == 0x02, "locally administered unicast"
