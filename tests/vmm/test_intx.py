"""Legacy INTx interrupts for virtio PCI functions: guests booted with `pci=nomsi` cannot enable
MSI-X, so virtio-blk and virtio-rnd must work through INTA# on IOAPIC level-triggered inputs
(GSI 16 + slot % 8), found through the DSDT's `_PRT` (with -A) or the MP table (without ACPI).
Both boots run at once: every boot costs minutes on the nested host."""

import os
import re

from test_devices import MARK, MIB, cmdline, lines

# Writes a pattern at sector 8, reads the host's pattern at sector 16 past the page cache, takes
# bytes from /dev/hwrng, then reports the virtio rows of /proc/interrupts ("IRQ <gsi>: <count>
# <chip> <gsi-type> <names>", one vCPU) and the number of MSI rows. The READ and RNG pipelines
# run up to three times until they print something: a process the nested host's defect kills
# (vmm/src/pvm/mod.rs; its segfault stays on the console) prints nothing, and so does a device
# that fails, every time.
SCRIPT = """\
printf XHYVE-INTX-PATTERN|dd of=/dev/vda bs=512 seek=8 conv=sync,fsync&&echo WRITE ok
r(){ for i in 1 2 3;do o=$(sh -c "$1");[ -n "$o" ]&&break;done;echo "$o";}
echo READ $(r 'dd if=/dev/vda bs=512 skip=16 count=1 iflag=direct 2>/dev/null|head -c 12')
echo RNG $(r "head -c 16 /dev/hwrng|od -An -tx1|tr -d ' '")
grep virtio /proc/interrupts|while read n c rest;do echo IRQ $n $c $rest;done
echo MSI $(grep -c PCI-MSI /proc/interrupts)
"""

HOST_PATTERN = b"HOST-PATTERN"


def disk(path):
    with open(path, "wb") as f:
        f.truncate(4 * MIB)
        f.seek(16 * 512)
        f.write(HOST_PATTERN)
    os.sync()
    return path


def irq_rows(g):
    """{gsi: (count, rest of the row)} of the guest's virtio interrupt rows."""
    rows = {}
    for row in lines(g, "IRQ"):
        m = re.fullmatch(r"(\d+): (\d+) (.*)", row)
        assert m, row
        rows[int(m.group(1))] = (int(m.group(2)), m.group(3))
    return rows


def test_virtio_blk_and_rng_over_intx_with_acpi_and_with_mp_table(guest, tmp_path):
    base = ["-c", "1", "-m", "256M", "-s", "0,hostbridge", "-s", "31,lpc"]
    # ACPI: blk in slot 2 (GSI 18), rng in slot 3 (GSI 19).
    acpi_img = disk(tmp_path / "acpi.img")
    a = guest("-A", *base, "-s", f"2,virtio-blk,{acpi_img}", "-s", "3,virtio-rnd",
              cmdline="pci=nomsi " + cmdline(SCRIPT))
    # MP table only: blk in slot 4 and rng in slot 12 share GSI 20 (and KVM's resampler).
    mp_img = disk(tmp_path / "mp.img")
    b = guest(*base, "-s", f"4,virtio-blk,{mp_img}", "-s", "12,virtio-rnd",
              cmdline="pci=nomsi " + cmdline(SCRIPT, action="halt"))

    for g, status in ((a, 1), (b, 2)):
        g.wait_for(rf"{MARK} cmd-exit=\d+", timeout=1500)
        assert g.wait_exit() == status, g.tail()

    for g, img, expected in ((a, acpi_img, {18: ["virtio0"], 19: ["virtio1"]}),
                             (b, mp_img, {20: ["virtio0", "virtio1"]})):
        out = g.tail(60)
        assert lines(g, "WRITE") == ["ok"], out
        with open(img, "rb") as f:
            f.seek(8 * 512)
            assert f.read(512) == b"XHYVE-INTX-PATTERN".ljust(512, b"\0"), out
        assert lines(g, "READ") == [HOST_PATTERN.decode()], out
        rng = lines(g, "RNG")
        assert len(rng) == 1 and re.fullmatch(r"[0-9a-f]{32}", rng[0]) and rng[0] != "0" * 32, out

        # Level-triggered IOAPIC inputs (fasteoi), on the GSIs the slots are wired to; no MSI.
        rows = irq_rows(g)
        assert sorted(rows) == sorted(expected), out
        for gsi, names in expected.items():
            count, rest = rows[gsi]
            # A line that stayed up after the ISR read would storm: Linux gives up on an IRQ
            # after 100000 unhandled ones ("nobody cared").
            assert 0 < count < 100_000, out
            m = re.fullmatch(rf"IO-APIC {gsi}-fasteoi (.*)", rest)
            assert m and sorted(m.group(1).split(", ")) == names, out
        assert lines(g, "MSI") == ["0"], out
