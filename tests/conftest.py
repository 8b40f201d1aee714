"""Shared fixtures: the real `xhyve` binary and the real tiny box (kernel + busybox initrd)."""

import os
import pathlib

import pytest

from guest import Guest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def xhyve_bin():
    path = pathlib.Path(os.environ.get("XHYVE_BIN", ROOT / "target/release/xhyve"))
    assert path.is_file(), f"{path} missing: build it first (tests/run does)"
    return path


@pytest.fixture(scope="session")
def tiny_box():
    path = pathlib.Path(os.environ.get("XHYVE_TINY", ROOT / "target/boxes/tiny"))
    for name in ("vmlinux", "vmlinuz", "initrd.img"):
        assert (path / name).is_file(), f"{path / name} missing: run boxes/tiny/build.sh"
    return path


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
