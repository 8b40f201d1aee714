"""Shared fixtures: the real `xhyve` and `xhyve-provider` binaries and the real tiny box (kernel +
busybox initrd, and as a .box)."""

import os
import re
import pathlib
import subprocess

import pytest

from guest import Guest

ROOT = pathlib.Path(__file__).resolve().parent.parent


# The file whose guest boots through OVMF (twice, 6-7 minutes a boot here) runs first: xdist's
# loadfile hands files out in collection order, and one collected last runs alone at the end.
LONG_FIRST = ("provider/test_efi.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not str(item.path).endswith(LONG_FIRST))


@pytest.fixture(scope="session")
def xhyve_bin():
    path = pathlib.Path(os.environ.get("XHYVE_BIN", ROOT / "target/release/xhyve"))
    assert path.is_file(), f"{path} missing: build it first (tests/run does)"
    return path


@pytest.fixture(scope="session")
def provider_bin():
    path = pathlib.Path(os.environ.get("XHYVE_PROVIDER_BIN", ROOT / "target/release/xhyve-provider"))
    assert path.is_file(), f"{path} missing: build it first (cargo build --release --workspace)"
    return path


@pytest.fixture(scope="session")
def tiny_box():
    path = pathlib.Path(os.environ.get("XHYVE_TINY", ROOT / "target/boxes/tiny"))
    for name in ("vmlinux", "vmlinuz", "initrd.img"):
        assert (path / name).is_file(), f"{path / name} missing: run boxes/tiny/build.sh"
    return path


@pytest.fixture(scope="session")
def tiny_efi_box():
    """The tiny kernel with the EFI stub and its initramfs (boxes/tiny/build.sh --efi)."""
    path = pathlib.Path(os.environ.get("XHYVE_TINY_EFI", ROOT / "target/boxes/tiny-efi"))
    for name in ("vmlinuz", "initrd.img"):
        assert (path / name).is_file(), f"{path / name} missing: run boxes/tiny/build.sh --efi"
    return path


@pytest.fixture(scope="session")
def tiny_box_file(tiny_box, tmp_path_factory):
    """The tiny box as a .box file: boxes/package.sh's defaults and --fast-start are
    boxes/tiny/box.sh's options."""
    out = tmp_path_factory.mktemp("tinybox") / "tiny.box"
    subprocess.run([str(ROOT / "boxes/package.sh"), str(out), str(tiny_box), "--fast-start"], check=True,
                   capture_output=True)
    return out


@pytest.fixture
def guest(xhyve_bin, tiny_box, tmp_path):
    """Factory for guests; every guest still running at the end of the test is killed."""
    made = []

    def make(*args, **kw):
        g = Guest(xhyve_bin, tiny_box, tmp_path, *args, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.kill()


# Guest user processes on nested kvm_pvm hosts now and then read a wrong value from their TLS and
# die (SIGSEGV/#GP, or init killed at boot): a host defect recorded in vmm/src/pvm/mod.rs. When
# a test fails and one of its guest consoles shows such a crash, the failure says so first, and
# tests/run reruns it once (`--only-rerun`, pytest-rerunfailures): the crash stays in the report
# as a rerun, with the console lines, and a second failure fails the run.
GUEST_CRASH = re.compile(r"segfault at [0-9a-f]+ ip|traps: .* general protection|"
                         r"Attempted to kill init")
GUEST_CRASH_TAG = "GUEST PROCESS CRASH (nested-PVM host defect)"


def guest_crashes(root):
    lines = []
    for p in pathlib.Path(root).rglob("*.log*"):
        if p.is_file():
            text = p.read_text(errors="replace")
            lines += [f"{p.name}: {l.strip()}" for l in text.splitlines() if GUEST_CRASH.search(l)]
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Tags the failure before its report is made (rerunfailures matches the exception)."""
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if call.when == "call" and call.excinfo is not None and tmp is not None:
        crashes = guest_crashes(tmp)
        if crashes:
            e = call.excinfo.value
            first = str(e.args[0]) if e.args else repr(e)
            e.args = (f"{GUEST_CRASH_TAG}: {'; '.join(crashes[:5])}\n{first}", *e.args[1:])
    yield
