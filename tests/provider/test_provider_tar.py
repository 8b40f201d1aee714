"""Tar dialects box.add reads: sparse entries (GNU `S`, PAX 0.0, 0.1 and 1.0, as GNU tar and
bsdtar write them) unpack into sparse files, holes written as holes; hostile sparse maps and
extended headers are refused; long names (GNU and PAX) are read."""

import gzip
import io
import json
import os
import pathlib
import subprocess
import tarfile

import pytest

from provider_util import build_box

META = b'{"provider": "xhyve"}'
GIB = 1 << 30
DISK = 8 * GIB
# Data of the 8 GiB disk: a first block, a few bytes at an odd offset, 4 KiB every 256 MiB (more
# regions than a GNU header holds: extension headers) and the disk's last bytes.
CHUNKS = {0: b"MBR" * 100, 5_000_000: b"data",
          **{i * (256 << 20) + 12345: bytes([i]) * 4096 for i in range(1, 32)},
          DISK - 3: b"end"}
HOLE_END = 1 * GIB  # a second disk whose data stops well before its end
FILES = ["metadata.json", "vmlinux", "disk.img", "tail.img"]


@pytest.fixture(scope="module")
def sparse_src(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse-src")
    (d / "metadata.json").write_bytes(META)
    (d / "vmlinux").write_bytes(b"kernel\n" * 100)
    with open(d / "disk.img", "wb") as f:
        f.truncate(DISK)
        for off, data in CHUNKS.items():
            f.seek(off)
            f.write(data)
    with open(d / "tail.img", "wb") as f:
        f.truncate(HOLE_END)
        f.write(b"head")
    return d


TOOLS = {
    # The reproduction: bsdtar (what Vagrant packs and unpacks boxes with) writes PAX 1.0.
    "bsdtar": ["bsdtar", "-czf"],
    "gnu-posix-1.0": ["tar", "--sparse", "--format=posix", "--sparse-version=1.0", "-czf"],
    "gnu-posix-0.1": ["tar", "--sparse", "--format=posix", "--sparse-version=0.1", "-czf"],
    "gnu-posix-0.0": ["tar", "--sparse", "--format=posix", "--sparse-version=0.0", "-czf"],
    "gnu": ["tar", "--sparse", "--format=gnu", "-czf"],
}


@pytest.mark.parametrize("tool", list(TOOLS))
def test_sparse_entries_unpack_sparse(daemon, home, tmp_path, sparse_src, tool):
    box = tmp_path / f"{tool}.box"
    subprocess.run(TOOLS[tool] + [str(box), "-C", str(sparse_src), *FILES], check=True)
    assert box.stat().st_size < 1 << 20
    r = daemon.call("box.add", {"source": str(box), "name": "sparse"})
    where = pathlib.Path(r["path"])
    assert sorted(os.listdir(where)) == sorted(FILES + ["box.json"])
    disk, tail = where / "disk.img", where / "tail.img"
    assert disk.stat().st_size == DISK and tail.stat().st_size == HOLE_END
    assert (disk.stat().st_blocks + tail.stat().st_blocks) * 512 < 4 << 20  # holes stayed holes
    with open(disk, "rb") as f:
        for off, data in CHUNKS.items():
            f.seek(off)
            assert f.read(len(data)) == data, off
            if off > 0:
                f.seek(off - 100)
                assert f.read(100) == bytes(100), off
    with open(tail, "rb") as f:
        assert f.read(8) == b"head" + bytes(4)
    assert r["size"] == DISK + HOLE_END + len(META) + 700
    assert (where / "vmlinux").read_bytes() == b"kernel\n" * 100


# ---------------------------------------------------------------------------------------------
# Archives written by hand: exact control of every header.

def pax_records(pairs):
    """PAX records in order (a key may repeat, as PAX 0.0 sparse maps do)."""
    out = b""
    for k, v in pairs:
        rec = f" {k}={v}\n".encode()
        n = len(rec) + 1
        while len(str(n)) + len(rec) != n:
            n += 1
        out += str(n).encode() + rec
    return out


def pad(b):
    return b + bytes(-len(b) % 512)


def header(name, size, type=tarfile.REGTYPE, fmt=tarfile.USTAR_FORMAT):
    ti = tarfile.TarInfo(name)
    ti.size, ti.type, ti.mode = size, type, 0o644
    return ti.tobuf(fmt)


def member(name, data, type=tarfile.REGTYPE):
    return header(name, len(data), type) + pad(data)


def pax(pairs, name="PaxHeader/f"):
    return member(name, pax_records(pairs), tarfile.XHDTYPE)


def meta_member():
    return member("metadata.json", META)


END = bytes(1024)


def pax10(name, real, segments, data=None, extra=(), map_text=None):
    """PAX 1.0: the map (count, then offset and size lines) leads the member's data."""
    m = map_text or (f"{len(segments)}\n" + "".join(f"{o}\n{n}\n" for o, n in segments)).encode()
    body = pad(m) + (data if data is not None else b"".join(bytes([7]) * n for _, n in segments))
    return pax([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", name),
                ("GNU.sparse.realsize", str(real)), *extra]) + member(f"GNUSparseFile.0/{name}", body)


def pax01(name, real, segments):
    flat = ",".join(f"{o},{n}" for o, n in segments)
    data = b"".join(bytes([7]) * n for _, n in segments)
    return pax([("GNU.sparse.size", str(real)), ("GNU.sparse.numblocks", str(len(segments))),
                ("GNU.sparse.name", name), ("GNU.sparse.map", flat)]) + member(f"GNUSparseFile.0/{name}", data)


def gnu_sparse(name, real, segments, ext_blocks=None):
    """A GNU `S` header: four map entries in the header, 21 per extension block after it."""
    data = b"".join(bytes([7]) * n for _, n in segments)
    h = bytearray(header(name, len(data), b"S", tarfile.GNU_FORMAT))
    octal = lambda v: b"%011o\0" % v  # noqa: E731
    for i, (o, n) in enumerate(segments[:4]):
        h[386 + 24 * i:398 + 24 * i] = octal(o)
        h[398 + 24 * i:410 + 24 * i] = octal(n)
    rest = segments[4:]
    blocks = ext_blocks if ext_blocks is not None else []
    if ext_blocks is None:
        while rest:
            b = bytearray(512)
            for i, (o, n) in enumerate(rest[:21]):
                b[24 * i:24 * i + 12] = octal(o)
                b[24 * i + 12:24 * i + 24] = octal(n)
            rest = rest[21:]
            b[504] = 1 if rest else 0
            blocks.append(bytes(b))
    h[482] = 1 if blocks else 0
    h[483:495] = octal(real)
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + b"".join(blocks) + pad(data)


def write(tmp_path, name, *members, end=END):
    p = tmp_path / name
    p.write_bytes(meta_member() + b"".join(members) + end)
    return p


MANY = [(i * 8192 + 512, 512) for i in range(5000)]


@pytest.mark.parametrize("kind", ["pax-1.0", "pax-0.1", "gnu"])
def test_many_segments(daemon, tmp_path, kind):
    """A map of 5,000 regions (a PAX 1.0 map over many blocks, GNU extension headers)."""
    make = {"pax-1.0": pax10, "pax-0.1": pax01, "gnu": gnu_sparse}[kind]
    real = 5000 * 8192
    box = write(tmp_path, "many.tar", make("d.img", real, MANY))
    r = daemon.call("box.add", {"source": str(box), "name": "many"})
    data = (pathlib.Path(r["path"]) / "d.img").read_bytes()
    assert len(data) == real
    expect = bytearray(real)
    for o, n in MANY:
        expect[o:o + n] = bytes([7]) * n
    assert data == expect


def hostile_cases():
    huge_pax = header("PaxHeader/f", 64 << 20, tarfile.XHDTYPE)  # followed by the zeros of END...
    return {
        "overlap": (pax10("d", 4096, [(0, 1024), (512, 1024)]), "overlap"),
        "out-of-order": (pax10("d", 8192, [(4096, 512), (0, 512)]), "overlap"),
        "beyond-size": (pax10("d", 1000, [(512, 1024)]), "beyond"),
        "map-count-huge": (pax10("d", 4096, [(0, 512)], map_text=b"99999999999\n0\n512\n"), "sparse map"),
        "map-not-number": (pax10("d", 4096, [(0, 512)], map_text=b"1\nab\n512\n"), "sparse map"),
        "map-unterminated": (pax10("d", 4096, [(0, 512)], map_text=b"1" * 600), "sparse map"),
        "data-mismatch": (pax10("d", 4096, [(0, 512)], data=bytes(2048)), "sparse"),
        "odd-0.1-map": (pax([("GNU.sparse.size", "4096"), ("GNU.sparse.map", "0,512,1024")])
                        + member("d", bytes(512)), "sparse map"),
        "unknown-major": (pax([("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0"),
                               ("GNU.sparse.name", "d"), ("GNU.sparse.realsize", "10")])
                          + member("GNUSparseFile.0/d", bytes(512)), "unsupported"),
        "realsize-huge": (pax10("d", 1 << 62, [((1 << 62) - 512, 512)]), "too large"),
        "name-dotdot": (pax10("../pwned", 4096, [(0, 512)]), "`..`"),
        "gnu-endless-extensions": (gnu_sparse("d", 4096, [(0, 512)], [bytes(504) + b"\1" + bytes(7)] * 50_000),
                                   "sparse map"),
        "gnu-overlap": (gnu_sparse("d", 4096, [(0, 1024), (512, 512)]), "overlap"),
        "pax-header-huge": (huge_pax + bytes(64 << 20), "extended header"),
    }


@pytest.mark.parametrize("case", list(hostile_cases()))
def test_hostile_sparse_and_headers(daemon, home, tmp_path, assert_clean, case):
    data, words = hostile_cases()[case]
    box = tmp_path / "h.box"
    box.write_bytes(gzip.compress(meta_member() + data + END, 1))
    e = daemon.error("box.add", {"source": str(box), "name": "evil"})
    assert e.code == -32005 and words in e.message, e.message
    assert_clean(home)
    assert not (tmp_path / "pwned").exists() and not (home / "pwned").exists()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names(daemon, tmp_path, fmt):
    long = "d" * 120 + "/" + "f" * 150
    box = tmp_path / "long.tar"
    with tarfile.open(box, "w", format=fmt) as t:
        for name, data in (("metadata.json", META), (long, b"x" * 10)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("l" * 130)
        ti.type, ti.linkname = tarfile.SYMTYPE, long
        t.addfile(ti)
    r = daemon.call("box.add", {"source": str(box), "name": "long"})
    where = pathlib.Path(r["path"])
    assert (where / long).read_bytes() == b"x" * 10
    assert os.readlink(where / ("l" * 130)) == long


def test_sparse_box_makes_a_machine(provider_bin, daemon_factory, tmp_path, sparse_src):
    """The box bsdtar packs (the issue's reproduction) makes a machine whose disk copy stays sparse."""
    fake = tmp_path / "fake-xhyve"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --features ] && echo '{\"pci\":[\"virtio-blk\"],\"boot\":[\"kexec\"]}'\n"
                    "exit 0\n")
    fake.chmod(0o755)
    home = tmp_path / "home"
    d = daemon_factory(home, {"XHYVE_BIN": str(fake)})
    src = tmp_path / "src"
    src.mkdir()
    for f in ("vmlinux", "disk.img"):
        os.link(sparse_src / f, src / f)
    (src / "metadata.json").write_text(json.dumps(
        {"provider": "xhyve", "kernel": "vmlinux", "disks": ["disk.img"]}))
    box = tmp_path / "b.box"
    subprocess.run(["bsdtar", "-czf", str(box), "-C", str(src), "metadata.json", "vmlinux", "disk.img"],
                   check=True)
    d.call("box.add", {"source": str(box), "name": "sparse"})
    mid = d.call("machine.create", {"box": "sparse", "name": "m"})["id"]
    copy = home / "machines" / mid / "disk0.img"
    assert copy.stat().st_size == DISK and copy.stat().st_blocks * 512 < 4 << 20
    d.call("machine.destroy", {"id": mid})
