"""Real KVM guests: the tiny box boots through `-f kexec`, and each way a guest can end gives
bhyve's exit status."""

import re
import time

MARK = "XHYVE-TINY:"


def test_poweroff_with_two_cpus_and_host_clock(guest):
    g = guest("-A", "-u", "-c", "2", "-m", "256M", cmdline="console=ttyS0 xhyve.action=poweroff")
    g.wait_for(rf"{MARK} booted")
    assert g.wait_for(rf"{MARK} cpus=(\d+)").group(1) == "2"
    guest_date = int(g.wait_for(rf"{MARK} date=(\d+)").group(1))
    # Set from the RTC ~10 s of slow boot earlier and then kept by a TSC clock at the true rate:
    # a guest clock running at the wrong rate would be minutes off by now.
    assert abs(guest_date - time.time()) < 60, (guest_date, time.time())
    g.wait_for(rf"{MARK} poweroff")
    assert g.wait_exit() == 1, g.tail()
    assert "guest powered off (exit status 1)" in g.stderr()


def test_reboot_exits_zero(guest):
    g = guest("-c", "1", cmdline="console=ttyS0 xhyve.action=reboot")
    g.wait_for(rf"{MARK} reboot")
    assert g.wait_exit() == 0, g.tail()
    assert "guest rebooted (exit status 0)" in g.stderr()


def test_halt_exits_two(guest):
    g = guest(cmdline="console=ttyS0 xhyve.action=halt")
    g.wait_for(rf"{MARK} ready")
    assert g.wait_exit() == 2, g.tail()
    assert "guest halted (exit status 2)" in g.stderr()


def test_guest_kernel_panic_exits_six(guest):
    """A guest kernel that panics (no init to run) says so through pvpanic, which -A puts in the
    DSDT: xhyve ends at once with status 6 instead of leaving the guest spinning."""
    g = guest("-A", cmdline="console=ttyS0 rdinit=/nope init=/nope")
    assert g.wait_exit() == 6, g.tail()
    assert "Kernel panic - not syncing:" in g.text(), g.tail()
    assert "guest kernel panicked (pvpanic) (exit status 6)" in g.stderr(), g.tail()


def test_sigterm_presses_acpi_power_button(guest):
    g = guest("-A", cmdline="console=ttyS0")
    g.wait_for(rf"{MARK} ready")
    g.signal()
    g.wait_for(rf"{MARK} power button, shutting down")
    assert g.wait_exit() == 1, g.tail()
    assert re.search(r"SIGTERM: pressing the ACPI power button", g.stderr())


def test_bzimage_with_console_on_stdio_takes_input(guest):
    """The bzImage 64-bit entry path (its decompressor in the guest: host decompression off,
    see test_decompress.py for the default), and guest input from stdin in stdio mode."""
    g = guest("-A", kernel="vmlinuz", console="stdio", cmdline="console=ttyS0",
              env={"XHYVE_HOST_DECOMPRESS": "off"})
    g.wait_for(rf"{MARK} ready")
    assert "decompressed on the host" not in g.stderr()
    time.sleep(2)  # let the shell start reading its terminal
    g.type("echo XHYVE-INPUT-$((6*7))\n")
    g.wait_for(r"XHYVE-INPUT-42")
    g.type("poweroff -f\n")
    assert g.wait_exit() == 1, g.tail()
