"""UEFI firmware machines (-f bootrom) with Debian's stock OVMF, before any long boot: the firmware
starts under the sandbox, and `save` on the control socket is refused with the reason (fw_cfg and
the flash keep no snapshot state yet), leaving no file behind and the machine running.

The boots through the firmware are tests/provider/test_efi.py's: the small EFI test disk to SSH,
then on the same variable store to the tiny box's "ready" marker through the boot entry the first
boot wrote. On the nested PVM host each boot costs 6-7 minutes, most of it in OVMF
(vmm/src/firmware/mod.rs), so one machine serves the firmware's and the provider's checks."""

import shutil
import subprocess
import time

from test_cli import SLOTS
from test_snapshot import Control
from uefi import OVMF_CODE, OVMF_VARS


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
