"""virtio devices on real guests: the tiny box runs a script passed as `xhyve.cmd=BASE64` (see
boxes/tiny/init) and the host checks what it did. Every boot costs minutes on the nested host, so
one boot checks as much as it can."""

import base64
import os
import re
import subprocess

from rejection import assert_rejected

MARK = "XHYVE-TINY:"
MIB = 1 << 20
# x86 kernels keep 2047 bytes of command line and the VMM appends ~770 bytes of PVM parameters
# on the nested host: a longer script would cut them off.
MAX_CMD_B64 = 1100


def cmdline(script, action="poweroff"):
    b64 = base64.b64encode(script.encode()).decode()
    assert len(b64) <= MAX_CMD_B64, f"guest script too long for the kernel command line ({len(b64)})"
    return f"console=ttyS0 xhyve.action={action} xhyve.cmd={b64}"


def lines(g, tag):
    """Values of the guest's `TAG value` lines."""
    return re.findall(rf"^{tag} (.*?)\r?$", g.text(), re.M)


# vda: read-write (pattern at sector 8, discard of 1-5 MiB), vdb: read-only, vdc: 4 KiB sectors.
BLK_RNG_SCRIPT = """\
cd /sys/block;for d in vd*;do echo SERIAL $d $(cat $d/serial) $(cat $d/ro) $(cat $d/queue/logical_block_size);done
printf XHYVE-BLK-PATTERN|dd of=/dev/vda bs=512 seek=8 conv=sync,fsync&&echo WRITE ok
printf x|dd of=/dev/vdb conv=fsync||echo ROWRITE refused
echo RODATA $(head -c 9 /dev/vdb)
blkdiscard -o 1048576 -l 4194304 /dev/vda&&echo DISCARD ok
echo RNG $(head -c 32 /dev/hwrng|od -An -tx1)
echo RNGDEV $(cat /sys/class/misc/hw_random/rng_current)
grep -c PCI-MSI /proc/interrupts|sed 's/^/MSI /'
echo BRIDGE $(cat /sys/bus/pci/devices/0000:00:00.0/class)
"""


def test_blk_rw_ro_discard_sectorsize_and_rng_in_one_boot(guest, tmp_path):
    """No `-s 0,hostbridge` (nor an Intel LPC bridge): the VMM adds the host bridge without which
    Linux finds no PCI device at all."""
    rw, ro, big = tmp_path / "rw.img", tmp_path / "ro.img", tmp_path / "4k.img"
    with open(rw, "wb") as f:
        f.truncate(8 * MIB)
        f.seek(1 * MIB)
        f.write(b"\x5a" * (4 * MIB))  # allocated blocks for the discard to free
    ro.write_bytes(b"READONLY!" + bytes(MIB - 9))
    with open(big, "wb") as f:
        f.truncate(4 * MIB)
    os.sync()
    blocks_before = os.stat(rw).st_blocks
    ro_before = ro.read_bytes()

    g = guest("-A", "-c", "2", "-m", "256M", "-s", f"2,virtio-blk,{rw}",
              "-s", f"3,virtio-blk,{ro},ro", "-s", f"4,virtio-blk,{big},sectorsize=4096",
              "-s", "5,virtio-rnd",
              cmdline=cmdline(BLK_RNG_SCRIPT))
    assert g.wait_for(rf"{MARK} cmd-exit=(\d+)").group(1) is not None
    g.wait_for(rf"{MARK} poweroff")
    assert g.wait_exit() == 1, g.tail()
    out = g.tail(60)

    # GET_ID (serial = image file name), RO flag and sector size as the guest sees them.
    serials = {s.split()[0]: s.split()[1:] for s in lines(g, "SERIAL")}
    assert serials == {"vda": ["rw.img", "0", "512"], "vdb": ["ro.img", "1", "512"],
                       "vdc": ["4k.img", "0", "4096"]}, out

    # The pattern the guest wrote, read back on the host.
    assert lines(g, "WRITE") == ["ok"], out
    with open(rw, "rb") as f:
        f.seek(8 * 512)
        assert f.read(512) == b"XHYVE-BLK-PATTERN".ljust(512, b"\0")

    # The read-only disk: readable, the write refused, the image untouched.
    assert lines(g, "ROWRITE") == ["refused"], out
    assert lines(g, "RODATA") == ["READONLY!"], out
    assert ro.read_bytes() == ro_before

    # Discard punched a hole: fewer blocks allocated, zeros read back.
    assert lines(g, "DISCARD") == ["ok"], out
    blocks_after = os.stat(rw).st_blocks
    assert blocks_after < blocks_before - (3 * MIB) // 512, (blocks_before, blocks_after)
    with open(rw, "rb") as f:
        f.seek(2 * MIB)
        assert f.read(4096) == bytes(4096)

    # virtio-rng feeds /dev/hwrng.
    assert lines(g, "RNGDEV") == ["virtio_rng.0"], out
    rng = lines(g, "RNG")
    assert len(rng) == 1, out
    rng = "".join(rng[0].split())  # od prints 16 bytes a line
    assert re.fullmatch(r"[0-9a-f]{64}", rng) and rng != "0" * 64, out

    # Interrupts are MSI-X: a config and a queue vector per device at least.
    assert int(lines(g, "MSI")[0]) >= 8, out

    # The implicit host bridge at 00:00.0 (class 06 00 00).
    assert lines(g, "BRIDGE") == ["0x060000"], out


def test_blk_command_line_errors(xhyve_bin, tiny_box, tmp_path):
    """Bad virtio CONF values: one line naming the -s value, status 4, no VM."""
    kexec = f"kexec,{tiny_box / 'vmlinux'},,console=ttyS0"
    img = tmp_path / "d.img"
    img.write_bytes(bytes(MIB))
    cases = [
        (["-s", "2,virtio-blk,/nope"], r"-s 2,virtio-blk,/nope: image /nope: No such file or directory"),
        (["-s", "2,virtio-blk"], r"-s 2,virtio-blk: missing image path"),
        (["-s", f"2,virtio-blk,{img},fast"], r"-s 2,virtio-blk,.*: unknown option 'fast' \(valid: ro, sectorsize"),
        (["-s", f"2,virtio-blk,{img},sectorsize=100"], r"-s 2,virtio-blk,.*: sectorsize=100: a power of two"),
        (["-s", "3,virtio-rnd,x"], r"-s 3,virtio-rnd,x: unknown option 'x'"),
    ]
    for args, expected in cases:
        assert_rejected([xhyve_bin, *args, "-f", kexec], expected, tmp_path / "trace")
