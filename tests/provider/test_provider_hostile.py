"""Hostile archives are refused and leave nothing behind (in the store, in tmp/, or outside)."""

import gzip
import io
import os
import stat
import tarfile
import zipfile

import pytest

META = b'{"provider": "xhyve"}'


def tar_entry(t, name, type=tarfile.REGTYPE, data=b"pwned", linkname="", **kw):
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.linkname = linkname
    for k, v in kw.items():
        setattr(ti, k, v)
    if type == tarfile.REGTYPE:
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    else:
        t.addfile(ti)


def hostile_tars(outside):
    """name -> (function adding the hostile entries, words expected in the error)."""
    return {
        "dotdot": (lambda t: tar_entry(t, "../pwned"), "`..`"),
        "dotdot-deep": (lambda t: tar_entry(t, "a/../../pwned"), "`..`"),
        "absolute": (lambda t: tar_entry(t, str(outside / "pwned")), "absolute"),
        "etc": (lambda t: tar_entry(t, "/etc/xhyve-provider-test-pwned"), "absolute"),
        "symlink-etc": (lambda t: tar_entry(t, "etc", tarfile.SYMTYPE, linkname="/etc"), "outside"),
        "symlink-up": (lambda t: tar_entry(t, "up", tarfile.SYMTYPE, linkname="../../.."), "outside"),
        "symlink-then-write": (lambda t: (tar_entry(t, "out", tarfile.SYMTYPE, linkname=str(outside)),
                                          tar_entry(t, "out/pwned")), "outside"),
        "hardlink-out": (lambda t: tar_entry(t, "shadow", tarfile.LNKTYPE, linkname="/etc/shadow"),
                         "outside"),
        "hardlink-up": (lambda t: tar_entry(t, "h", tarfile.LNKTYPE, linkname="../../pwned"), "outside"),
        "char-device": (lambda t: tar_entry(t, "null", tarfile.CHRTYPE, devmajor=1, devminor=3),
                        "device node"),
        "block-device": (lambda t: tar_entry(t, "sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
                         "device node"),
        "fifo": (lambda t: tar_entry(t, "pipe", tarfile.FIFOTYPE), "fifo"),
    }


@pytest.mark.parametrize("case", list(hostile_tars(None)))
def test_hostile_tar(daemon, home, tmp_path, make_box, assert_clean, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    add, words = hostile_tars(outside)[case]
    box = make_box("tar.gz", files={"metadata.json": META}, extra=add)
    e = daemon.error("box.add", {"source": str(box), "name": "evil"})
    assert e.code == -32005, e.message
    assert words in e.message and "refused" in e.message
    assert_clean(home)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "pwned").exists() and not (home / "pwned").exists()
    assert not os.path.exists("/etc/xhyve-provider-test-pwned")


def zip_entry(z, name, data=b"pwned", mode=None):
    zi = zipfile.ZipInfo(name)
    if mode is not None:
        zi.external_attr = mode << 16
        zi.create_system = 3
    z.writestr(zi, data)


@pytest.mark.parametrize("case,add,words", [
    ("dotdot", lambda z: zip_entry(z, "../pwned"), "`..`"),
    ("absolute", lambda z: zip_entry(z, "/tmp/xhyve-provider-test-pwned"), "absolute"),
    ("symlink", lambda z: zip_entry(z, "etc", b"/etc", stat.S_IFLNK | 0o777), "outside"),
    ("device", lambda z: zip_entry(z, "null", b"", stat.S_IFCHR | 0o666), "device node"),
])
def test_hostile_zip(daemon, home, make_box, assert_clean, case, add, words):
    box = make_box("zip", files={"metadata.json": META}, extra=add)
    e = daemon.error("box.add", {"source": str(box), "name": "evil"})
    assert e.code == -32005 and words in e.message, e.message
    assert_clean(home)
    assert not os.path.exists("/tmp/xhyve-provider-test-pwned")


class Zeros(io.RawIOBase):
    def __init__(self, n):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


GIB = 1 << 30


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    tgz = d / "bomb.box"
    with gzip.GzipFile(tgz, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as t:
        tar_entry(t, "metadata.json", data=META)
        ti = tarfile.TarInfo("disk.img")
        ti.size = GIB
        t.addfile(ti, Zeros(GIB))
    zp = d / "bomb.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("metadata.json", META)
        with z.open("disk.img", "w", force_zip64=True) as f:
            chunk = bytes(16 << 20)
            for _ in range(GIB // len(chunk)):
                f.write(chunk)
    return {"tar.gz": tgz, "zip": zp}


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_size_bomb(daemon, home, bombs, assert_clean, fmt):
    # 1 GiB of zeros in a few MiB: refused by the compression-ratio cap.
    assert bombs[fmt].stat().st_size < 8 << 20
    e = daemon.error("box.add", {"source": str(bombs[fmt]), "name": "bomb"})
    assert e.code == -32005 and "archive bomb" in e.message and "ratio" in e.message, e.message
    assert_clean(home)


def test_total_size_cap(daemon_factory, tmp_path, make_box, assert_clean):
    home = tmp_path / "capped"
    d = daemon_factory(home, {"XHYVE_MAX_BOX_SIZE": "1M"})
    box = make_box("tar", files={"metadata.json": META, "big": os.urandom(2 << 20)})
    e = d.error("box.add", {"source": str(box), "name": "big"})
    assert e.code == -32005 and "exceeds the limit of 1048576 bytes" in e.message
    assert_clean(home)
    small = make_box("tar", files={"metadata.json": META, "small": os.urandom(1 << 19)})
    d.call("box.add", {"source": str(small), "name": "small"})


def test_broken_archives(daemon, home, make_box, tmp_path, assert_clean):
    box = make_box("tar.gz", files={"metadata.json": META, "blob": os.urandom(1 << 20)})
    cut = tmp_path / "cut.box"
    cut.write_bytes(box.read_bytes()[: box.stat().st_size // 2])
    e = daemon.error("box.add", {"source": str(cut), "name": "cut"})
    assert e.code == -32005 and "truncated" in e.message, e.message
    junk = tmp_path / "junk.box"
    junk.write_bytes(os.urandom(4096))
    e = daemon.error("box.add", {"source": str(junk), "name": "junk"})
    assert e.code == -32005 and "not a box" in e.message, e.message
    empty = tmp_path / "empty.box"
    empty.write_bytes(b"")
    e = daemon.error("box.add", {"source": str(empty), "name": "empty"})
    assert e.code == -32005 and "empty" in e.message
    xz = tmp_path / "x.box"
    xz.write_bytes(b"\xfd7zXZ\x00" + os.urandom(100))
    e = daemon.error("box.add", {"source": str(xz), "name": "xz"})
    assert e.code == -32005 and "xz-compressed" in e.message
    assert_clean(home)


def test_archives_that_end_early_are_refused(daemon, home, make_box, tmp_path, assert_clean):
    """A tar.gz without its gzip trailer, a tar cut at an entry's boundary (`head -c 1024`), in an
    entry's data, or without its end-of-archive blocks: -32005, nothing installed."""
    files = {"metadata.json": META, "vmlinuz": os.urandom(3000)}
    tgz = make_box("tar.gz", files=files).read_bytes()
    tar = make_box("tar", files=files).read_bytes()
    data_end = 512 + 512 + 512 + 3072  # metadata.json: header + 1 block; vmlinuz: header + 6 blocks
    cases = {"no-gzip-trailer": tgz[:-8], "gzip-cut": tgz[:-30], "head-1024": tar[:1024],
             "in-data": tar[:1024 + 512 + 1024], "no-end-blocks": tar[:data_end]}
    for name, data in cases.items():
        f = tmp_path / f"{name}.box"
        f.write_bytes(data)
        e = daemon.error("box.add", {"source": str(f), "name": "cut"})
        assert e.code == -32005 and ("truncated" in e.message or "ends" in e.message), (name, e.message)
        assert_clean(home)
    # The whole archive, and one ending with a single zero block (as some writers do), install.
    ok = tmp_path / "one-zero-block.tar"
    ok.write_bytes(tar[:data_end] + bytes(512))
    daemon.call("box.add", {"source": str(ok), "name": "ok"})
    whole = tmp_path / "whole.box"
    whole.write_bytes(tgz)
    daemon.call("box.add", {"source": str(whole), "name": "whole"})


@pytest.mark.parametrize("order", ["link-first", "file-first"])
def test_write_through_a_symlink_is_named(daemon, home, make_box, assert_clean, order):
    """`sub/`, `lnk -> sub`, `lnk/f`: refused, and the message says `lnk/f` goes through the
    symlink `lnk` (or that `lnk` collides with the directory made for `lnk/f`)."""
    def add(t):
        tar_entry(t, "sub", tarfile.DIRTYPE)
        if order == "link-first":
            tar_entry(t, "lnk", tarfile.SYMTYPE, linkname="sub")
            tar_entry(t, "lnk/f")
        else:
            tar_entry(t, "lnk/f")
            tar_entry(t, "lnk", tarfile.SYMTYPE, linkname="sub")
    box = make_box("tar", files={"metadata.json": META}, extra=add)
    e = daemon.error("box.add", {"source": str(box), "name": "evil"})
    assert e.code == -32005 and "refused" in e.message, e.message
    if order == "link-first":
        assert 'entry "lnk/f" is inside "lnk", a symlink' in e.message, e.message
    else:
        assert 'symlink "lnk" collides with the directory "lnk"' in e.message, e.message
    assert_clean(home)
